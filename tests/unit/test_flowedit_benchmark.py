"""The GPU benchmark script runs at tiny size on the CPU, and its FLOP accounting is right.

No assertion on time (benchmarks measure, tests do not): only that the script runs end to end,
reports what it promises, and counts the real architectures' FLOPs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from benchmarks import flowedit_gpu


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_run_reports_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "bench.json"
    flowedit_gpu.main(
        [
            "--tiny",
            "--device",
            "cpu",
            "--steps",
            "4",
            "--n-max",
            "2",
            "--sizes",
            "32",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--pipeline-size",
            "32",
            "--twin-size",
            "16",
            "--json",
            str(target),
        ]
    )
    printed = capsys.readouterr().out
    assert "Summary" in printed and "photograph" in printed
    report = json.loads(target.read_text())
    assert [r["model"] for r in report["results"]] == ["tiny-sd3", "tiny-flux"]
    for result in report["results"]:
        (entry,) = result["sizes"]
        assert entry["seconds_per_image"] > 0 and entry["vae_seconds"] > 0
        assert entry["transformer_forward_flop"] > 0 and entry["vae_flop"] > 0
        # n_max=2 FlowEdit steps, 4 CFG rows per step for SD3, 2 (source, target) for FLUX
        rows = 4 if result["family"] == "sd3" else 2
        assert entry["edit_transformer_flop"] == 2 * rows * entry["transformer_forward_flop"]
        assert result["photograph"]["seconds"] > 0
        assert result["photograph"]["edit_size"] == 32 and result["photograph"]["twin_size"] == 16


def test_flop_count_is_the_real_sd3_medium(tmp_path: Path) -> None:
    """On the meta device (no memory, no GPU): SD3-medium does 2.1 TFLOP per forward at 512²."""
    report = flowedit_gpu.main(
        [
            "--flops-only",
            "--models",
            "sd3-medium",
            "--sizes",
            "512",
            "--pipeline-size",
            "512",
            "--twin-size",
            "256",
            "--json",
            str(tmp_path / "flops.json"),
        ]
    )
    (result,) = report["results"]
    forward = result["sizes"]["512"]["forward_flop"]
    assert 2.0e12 < forward < 2.2e12
    edit_512 = result["sizes"]["512"]["edit_flop"]
    edit_256 = result["sizes"]["256"]["edit_flop"]
    assert result["photograph_flop"] == edit_512 + 2 * edit_256
    assert json.loads((tmp_path / "flops.json").read_text())["results"][0]["model"] == "sd3-medium"


def test_full_size_models_are_refused_on_the_cpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit):
        flowedit_gpu.main(["--models", "sd3-medium", "--device", "cpu"])
