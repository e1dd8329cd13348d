"""Odd DICOM photographs through the whole pixel path: decode, edit with the tiny model, write a
derived instance, read it back. Each gives a correct result or a clear InvalidInputError."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
import torch
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from deid_core.errors import InvalidInputError
from deid_core.flowedit import FlowEditor, FlowEditParams
from deid_core.keys import ProjectKey
from deid_core.models import build_tiny_model, load_model
from deid_core.seeds import derive_seed
from dicom_io.pixels import read_frames_rgb, save_instance, write_derived_instance

KEY = ProjectKey(b"k" * 16 + b"0123456789abcdef0123456789abcdef")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def editor(tmp_path_factory: pytest.TempPathFactory) -> FlowEditor:
    model = load_model(build_tiny_model(tmp_path_factory.mktemp("dicom") / "tiny", "sd3"))
    # max_side keeps the larger bundled files cheap, and exercises the resize path on the way
    params = FlowEditParams.defaults_for("sd3", num_steps=6, n_max=4, max_side=96)
    return FlowEditor(model, params, "a photo of skin", "a photo of other skin")


def _one_pixel_rgb() -> Dataset:
    ds = copy.deepcopy(pydicom.dcmread(get_testdata_file("SC_rgb_small_odd.dcm", download=False)))
    ds.Rows = ds.Columns = 1
    ds.PixelData = bytes([200, 30, 90, 0])  # one RGB pixel, padded to even length
    if "NumberOfFrames" in ds:
        del ds.NumberOfFrames
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _edit_and_write(editor: FlowEditor, source: Dataset, encoding: str = "explicit") -> Dataset:
    frames = read_frames_rgb(source)
    seeds = [
        derive_seed(KEY, str(source.SOPInstanceUID), i, "identity") for i in range(len(frames))
    ]
    edited = editor.edit(frames, seeds)
    assert edited.shape == frames.shape
    out = write_derived_instance(
        source,
        edited,
        generate_uid(prefix=None),
        derivation_description=editor.derivation_description(),
        encoding=encoding,
    )
    buf = io.BytesIO()
    save_instance(out, buf)
    buf.seek(0)
    back = pydicom.dcmread(buf)
    # what was written is what was edited, up to YBR rounding; 4:2:2 chroma (native or JPEG)
    # halves the colour resolution of the random model's speckled output, so more there
    tolerance = 8 if back.PhotometricInterpretation == "YBR_FULL_422" else 2
    assert np.abs(read_frames_rgb(back).astype(int) - edited).mean() < tolerance
    return back


@pytest.mark.parametrize(
    ("name", "photometric_out"),
    [
        ("SC_rgb_rle_16bit.dcm", "RGB"),
        ("SC_rgb_rle_2frame.dcm", "RGB"),
        ("SC_ybr_full_422_uncompressed.dcm", "YBR_FULL_422"),
        ("SC_rgb_jpeg_lossy_gdcm.dcm", "YBR_FULL"),
        ("examples_jpeg2k.dcm", "RGB"),  # YBR_RCT exists only inside JPEG 2000
        ("examples_palette.dcm", "RGB"),  # the edit makes colours the palette lacks
    ],
)
def test_odd_inputs_edit_to_a_matching_derived_instance(
    editor: FlowEditor, name: str, photometric_out: str
) -> None:
    source = pydicom.dcmread(get_testdata_file(name, download=False))
    out = _edit_and_write(editor, source)
    assert (out.Rows, out.Columns) == (source.Rows, source.Columns)
    assert int(out.get("NumberOfFrames", 1)) == int(source.get("NumberOfFrames", 1))
    assert out.PhotometricInterpretation == photometric_out
    if source.PhotometricInterpretation != "PALETTE COLOR":
        assert out.BitsStored == source.BitsStored
    assert "TEST MODEL" in out.DerivationDescription


def test_one_pixel_image(editor: FlowEditor) -> None:
    out = _edit_and_write(editor, _one_pixel_rgb())
    assert (out.Rows, out.Columns, out.PhotometricInterpretation) == (1, 1, "RGB")


def test_jpeg_baseline_route(editor: FlowEditor) -> None:
    source = pydicom.dcmread(get_testdata_file("SC_rgb_rle.dcm", download=False))
    out = _edit_and_write(editor, source, "jpeg-baseline")
    assert out.LossyImageCompression == "01"
    assert out.PhotometricInterpretation == "YBR_FULL_422"


def test_retry_gives_the_same_pixels(editor: FlowEditor) -> None:
    source = pydicom.dcmread(get_testdata_file("SC_rgb_rle.dcm", download=False))
    frames = read_frames_rgb(source)
    seed = derive_seed(KEY, str(source.SOPInstanceUID), 0, "identity")
    assert np.array_equal(editor.edit(frames, [seed]), editor.edit(frames, [seed]))


@pytest.mark.parametrize("name", ["CT_small.dcm", "JPEG-lossy.dcm"])
def test_not_a_photograph_is_refused_before_the_model(editor: FlowEditor, name: str) -> None:
    source = pydicom.dcmread(get_testdata_file(name, download=False))
    with pytest.raises(InvalidInputError):
        read_frames_rgb(source)
