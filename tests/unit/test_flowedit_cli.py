"""The `model` and `flowedit` commands, run as real subprocesses of this checkout.

The DICOM edit runs inside a network namespace with nothing but loopback (when the machine allows
`unshare -n`): it proves that building, loading and editing need no network at all.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from deid_core.keys import ProjectKey
from deid_core.models import build_tiny_model
from deid_core.pseudonyms import Pseudonymizer
from dicom_io.pixels import read_frames_rgb
from tests.conftest import REPO, run_cli

FAST = ["--steps", "6", "--n-max", "4", "--threads", "1"]


def _no_network_prefix() -> list[str]:
    if shutil.which("unshare") is None:
        return []
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30)
    return ["unshare", "-n"] if probe.returncode == 0 else []


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("cli") / "tiny-sd3", "sd3")


def test_build_tiny_then_verify(tmp_path: Path) -> None:
    model = tmp_path / "tiny-flux"
    built = run_cli(["model", "build-tiny", str(model), "--family", "flux"])
    assert built.returncode == 0, built.stderr
    assert "built tiny flux test model" in built.stdout
    checked = run_cli(["model", "verify", str(model)])
    assert checked.returncode == 0, checked.stderr
    assert "complete flux model, identity tiny-flux@" in checked.stdout
    assert "TEST MODEL" in checked.stderr
    again = run_cli(["model", "build-tiny", str(model)])
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr


def test_verify_names_what_is_missing(tmp_path: Path, tiny_sd3: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd3, broken)
    shutil.rmtree(broken / "vae")
    result = run_cli(["model", "verify", str(broken)])
    assert result.returncode == 2
    assert "vae/ is missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_flowedit_dicom_offline_gives_a_derived_instance(
    tmp_path: Path, tiny_sd3: Path, key_file: Path
) -> None:
    source_path = Path(get_testdata_file("SC_rgb_rle.dcm", download=False))
    out = tmp_path / "edited.dcm"
    args = [
        "flowedit",
        str(source_path),
        str(out),
        "--model",
        str(tiny_sd3),
        "--source-prompt",
        "a photo of skin",
        "--target-prompt",
        "a photo of other skin",
        "--key",
        str(key_file),
        "--encoding",
        "rle",
        "--device",
        "cpu",
        *FAST,
    ]
    prefix = _no_network_prefix()
    if prefix:
        import os
        import sys

        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        result = subprocess.run(
            [*prefix, sys.executable, "-m", "gateway", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    else:
        result = run_cli(args)
    assert result.returncode == 0, result.stderr
    assert "TEST MODEL" in result.stderr
    source = pydicom.dcmread(source_path)
    edited = pydicom.dcmread(out)
    assert edited.SOPInstanceUID != source.SOPInstanceUID
    # Keyed exactly as the gateway's pixel step derives it: a retry gives the same instance,
    # and it is not the metadata pseudonym of the original instance.
    pseudo = Pseudonymizer(ProjectKey(key_file.read_bytes()))
    assert edited.SOPInstanceUID == pseudo.derived_uid(source.SOPInstanceUID, "flowedit")
    assert edited.SOPInstanceUID != pseudo.uid(source.SOPInstanceUID)
    assert str(edited.file_meta.TransferSyntaxUID) == pydicom.uid.RLELossless
    for keyword in ("Rows", "Columns", "PhotometricInterpretation", "BitsStored"):
        assert edited[keyword].value == source[keyword].value
    assert list(edited.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert "TEST MODEL" in edited.DerivationDescription
    assert "tiny-sd3@" in edited.DerivationDescription
    assert not np.array_equal(read_frames_rgb(edited), read_frames_rgb(source))


def test_flowedit_png_keeps_size_mode_and_alpha(tmp_path: Path, tiny_sd3: Path) -> None:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)
    source = tmp_path / "in.png"
    Image.fromarray(rgba, "RGBA").save(source)
    out = tmp_path / "out.png"
    result = run_cli(
        [
            "flowedit",
            str(source),
            str(out),
            "--model",
            str(tiny_sd3),
            "--source-prompt",
            "a",
            "--target-prompt",
            "b",
            "--seed",
            "3",
            *FAST,
        ]
    )
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert image.size == (53, 37)
        assert image.mode == "RGBA"
        assert np.array_equal(np.asarray(image)[..., 3], rgba[..., 3])


def test_flowedit_errors_are_one_clear_line(tmp_path: Path, tiny_sd3: Path, key_file: Path) -> None:
    source = Path(get_testdata_file("SC_rgb_rle.dcm", download=False))
    common = ["--source-prompt", "a", "--target-prompt", "b"]
    missing = run_cli(
        [
            "flowedit",
            str(source),
            str(tmp_path / "o.dcm"),
            "--model",
            str(tmp_path / "none"),
            *common,
        ]
    )
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    both = run_cli(
        [
            "flowedit",
            str(source),
            str(tmp_path / "o.dcm"),
            "--model",
            str(tiny_sd3),
            "--seed",
            "1",
            "--key",
            str(key_file),
            *common,
        ]
    )
    assert both.returncode == 2
    assert "--seed or --key" in both.stderr
    assert not (tmp_path / "o.dcm").exists()
    # DICOM out without a key: no random UID, a clear error before any model loads.
    unkeyed = run_cli(
        ["flowedit", str(source), str(tmp_path / "o.dcm"), "--model", str(tiny_sd3), *common]
    )
    assert unkeyed.returncode == 2
    assert "--key" in unkeyed.stderr and "Traceback" not in unkeyed.stderr
    assert not (tmp_path / "o.dcm").exists()
