"""Pictures and summaries of received instances for reviewers (dicom_io.preview)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from deid_core.errors import InvalidInputError
from dicom_io.preview import render_png, summarize
from tests.support.review import write_photo_instance


def _testdata(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return Path(path)


def test_a_ct_is_windowed_to_eight_bits_with_its_full_contrast() -> None:
    png = render_png(_testdata("CT_small.dcm").read_bytes())
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert image.shape == (128, 128) and image.dtype == np.uint8
    assert image.min() == 0 and image.max() == 255


def test_a_photograph_keeps_its_colours(tmp_path: Path) -> None:
    ds = write_photo_instance(tmp_path / "photo.dcm")
    png = render_png((tmp_path / "photo.dcm").read_bytes(), max_side=128)
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert max(image.shape[:2]) == 128
    full = np.asarray(Image.open(io.BytesIO(render_png((tmp_path / "photo.dcm").read_bytes()))))
    assert np.array_equal(full, ds.pixel_array)


def test_a_jpeg_photograph_is_decoded_to_rgb() -> None:
    png = render_png(_testdata("SC_rgb_jpeg_gdcm.dcm").read_bytes())
    image = Image.open(io.BytesIO(png))
    assert image.mode == "RGB"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not dicom at all", r"cannot be shown \(InvalidDicomError\)"),
        (None, "no pixel data"),
    ],
)
def test_objects_without_a_picture_say_why_without_values(data: bytes | None, message: str) -> None:
    raw = data if data is not None else _testdata("rtplan.dcm").read_bytes()
    with pytest.raises(InvalidInputError, match=message):
        render_png(raw)


def test_summaries_name_the_kind_of_object_and_nothing_identifying(tmp_path: Path) -> None:
    ct = summarize(_testdata("CT_small.dcm"))
    assert ct is not None
    assert (ct.sop_class, ct.modality, ct.has_pixels) == ("CT Image Storage", "CT", True)
    assert (ct.rows, ct.columns, ct.frames) == (128, 128, 1)
    assert ct.transfer_syntax == "Explicit VR Little Endian"
    plan = summarize(_testdata("rtplan.dcm"))
    assert plan is not None and not plan.has_pixels and plan.modality == "RTPLAN"
    assert plan.sop_class == "RT Plan Storage"
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"junk")
    assert summarize(junk) is None
    identifying = str(pydicom.dcmread(_testdata("CT_small.dcm")).PatientName)
    assert identifying not in repr(ct)
