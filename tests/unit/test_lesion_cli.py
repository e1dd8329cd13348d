"""`deid-gateway lesion-check` end to end, as a real subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from deid_core.lesion import GateMethod, LesionGate, LesionGateParams
from deid_core.qa_panel import render_panel
from tests.conftest import run_cli
from tests.support.skin import blob, red_stub_twin, skin_photo

SHAPE = (240, 320)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skin_photo(blob(SHAPE, 120, 160, 50), tone="III", noise=2.0, gradient=5.0, seed=2)


def write_rgb_dicom(path: Path, rgb: np.ndarray) -> None:
    """A minimal uncompressed RGB Secondary Capture holding `rgb`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "XC"
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(rgb).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_lesion_check_prints_figures_and_writes_the_panel(
    tmp_path: Path, photo: np.ndarray
) -> None:
    original = tmp_path / "a.png"
    candidate = tmp_path / "b.jpg"
    Image.fromarray(photo).save(original)
    Image.fromarray(photo).save(candidate, quality=90)  # lossy: small changes everywhere
    panel = tmp_path / "qa" / "panel.png"

    proc = run_cli(["lesion-check", str(original), str(candidate), "--panel", str(panel)])

    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.strip())
    assert lines["outcome"].startswith("accepted")
    assert float(lines["iou"].split()[0]) >= 0.9
    assert "method" in lines and "synthesis_free" in lines["method"]
    assert "% of" in proc.stdout  # areas
    # The panel decodes and is exactly what the library renders for this decision.
    img = Image.open(panel)
    assert img.format == "PNG" and img.width >= 2 * SHAPE[1] and img.height >= 2 * SHAPE[0]
    cand = np.asarray(Image.open(candidate).convert("RGB"))
    result = LesionGate(LesionGateParams(method=GateMethod.SYNTHESIS_FREE)).check(photo, cand)
    assert panel.read_bytes() == render_panel(photo, cand, result)


def test_lesion_check_reads_dicom_and_reports_a_vanished_lesion(
    tmp_path: Path, photo: np.ndarray
) -> None:
    original = tmp_path / "original.dcm"
    write_rgb_dicom(original, photo)
    candidate = tmp_path / "painted.png"
    Image.fromarray(red_stub_twin(photo[None], [0])[0]).save(candidate)

    proc = run_cli(["lesion-check", str(original), str(candidate), "--json"])

    assert proc.returncode == 1, proc.stderr  # 1: the gate would quarantine it
    figures = json.loads(proc.stdout)
    assert figures["outcome"] == "lesion_vanished"
    assert figures["accepted"] is False
    assert figures["original_area_px"] > 0.05 * SHAPE[0] * SHAPE[1]
    assert figures["candidate_area_px"] == 0


@pytest.mark.parametrize("problem", ["not_an_image", "other_size", "twin_without_model"])
def test_lesion_check_errors_are_one_clear_line(
    tmp_path: Path, photo: np.ndarray, problem: str
) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(photo).save(good)
    other = tmp_path / "other.png"
    args = ["lesion-check", str(good), str(other)]
    if problem == "not_an_image":
        other.write_text("not pixels")
        expected = "not a readable"
    elif problem == "other_size":
        Image.fromarray(photo[:200]).save(other)
        expected = "differs from the original"
    else:
        Image.fromarray(photo).save(other)
        args += ["--method", "twin"]
        expected = "--model"

    proc = run_cli(args)

    assert proc.returncode == 2
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(tmp_path) not in proc.stderr  # images are named by role, not by path


def test_lesion_check_redness_only_on_identical_images(tmp_path: Path, photo: np.ndarray) -> None:
    path = tmp_path / "same.png"
    Image.fromarray(photo).save(path)
    proc = run_cli(["lesion-check", str(path), str(path), "--json", "--channels", "a"])
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert figures["outcome"] == "accepted" and figures["iou"] == 1.0
    assert "panel" not in figures
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.png"]  # no panel unless asked
