"""`deid-gateway evaluate` as a site runs it: a real subprocess over a folder of photographs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from gateway.evaluation_report import FILES
from tests.conftest import run_cli
from tests.support.evaluation_photos import write_photo_folder


def test_baselines_on_a_folder_with_expert_masks(tmp_path: Path, key_file: Path) -> None:
    photos, masks = write_photo_folder(tmp_path, 6)
    report = tmp_path / "report"
    result = run_cli(
        [
            "evaluate", str(photos), "--masks", str(masks), "--report", str(report),
            "--baselines", "none,blur:0.1,pixelate:0.08", "--examples", "2",
            "--key", str(key_file),
        ]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "report:" in result.stdout and "none" in result.stdout
    for name in FILES:
        assert (report / name).is_file(), name
    doc = json.loads((report / "figures.json").read_text())
    assert doc["run"]["photos"] == 6 and doc["run"]["photos_with_expert_mask"] == 6
    assert [m["name"] for m in doc["methods"]] == ["none", "blur 10%", "pixelate 8%"]
    none = doc["methods"][0]["figures"]
    assert none["reid_top1"] == 1.0 and none["iou_stability_median"] == 1.0
    blur = doc["methods"][1]["figures"]
    assert blur["ssim_lesion_mean"] < 0.6 and blur["delta_e00_median"] > 2
    assert doc["test_model"] is False and doc["models"] == {}
    assert doc["key_fingerprint"] and doc["key_fingerprint"] in (report / "index.html").read_text()
    assert doc["config"]["gate"]["threshold"] == 0.67
    with (report / "photos.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["source"] for r in rows][:2] == ["case00.png", "case01.png"]
    assert "case00" not in (report / "figures.csv").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--baselines", "sharpen:0.1"], "unknown baseline"),
        (["--source-prompt", "a photo"], "need --model"),
        (["--photos", "nowhere"], "not a folder of photographs"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path: Path, args: list[str], message: str) -> None:
    photos, _ = write_photo_folder(tmp_path, 2, size=(48, 64), masks=False)
    if args[0] == "--photos":
        photos, args = tmp_path / args[1], []
    result = run_cli(["evaluate", str(photos), "--report", str(tmp_path / "r"), *args])
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_the_whole_run_with_the_tiny_model(tmp_path: Path) -> None:
    """The route's photograph path (FlowEdit on the tiny test model, judged by the twin-mask gate
    on the same model) next to a baseline; the report must say which model made the figures and
    that they mean nothing clinically."""
    models = pytest.importorskip("deid_core.models", reason="FlowEdit (issue 4) is not merged yet")
    model_dir = models.build_tiny_model(tmp_path / "tiny")
    photos, masks = write_photo_folder(tmp_path, 4, size=(64, 80))
    report = tmp_path / "report"
    result = run_cli(
        [
            "evaluate", str(photos), "--masks", str(masks), "--report", str(report),
            "--model", str(model_dir), "--source-prompt", "a photo of skin",
            "--target-prompt", "a photo of someone else's skin",
            "--flowedit", "num_steps=8", "--flowedit", "n_max=6", "--baselines", "none",
            "--examples", "1", "--threads", "1", "--mask", "twin", "--twin-size", "64",
        ]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "(test model)" in result.stdout
    doc = json.loads((report / "figures.json").read_text())
    assert doc["test_model"] is True
    identity = doc["models"]["flowedit"]
    assert identity["is_test_model"] is True and identity["identity"]
    flowedit = next(m for m in doc["methods"] if m["name"] == "flowedit")
    assert flowedit["kind"] == "deidentification" and flowedit["test_model"] is True
    assert flowedit["params"]["flowedit"]["n_max"] == 6
    assert flowedit["params"]["target_prompt"] == "a photo of someone else's skin"
    figures = flowedit["figures"]
    assert 0.0 <= figures["reid_top1"] <= 1.0 and figures["chance_top1"] == 0.25
    assert figures["seconds_per_image"] > 0
    assert figures["images"] == 4 and figures["errors"] == 0
    assert doc["gate"]["description"].startswith("lesion gate (twin)")
    assert "TEST MODEL" in doc["gate"]["description"]
    page = (report / "index.html").read_text()
    assert 'id="test-model-warning"' in page and identity["identity"] in page
