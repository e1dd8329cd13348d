"""Pixels in and out of DICOM: every supported photograph reads as RGB uint8, and a derived
instance keeps size, photometric interpretation and bit depth, with truthful lossy attributes.

Uses pydicom's bundled test files only (pydicom.data; licences in pydicom's repository). Names
that pydicom would have to download are never requested.
"""

from __future__ import annotations

import copy
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.pixels import pixel_array
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from deid_core.errors import InvalidInputError
from dicom_io.pixels import ENCODINGS, read_frames_rgb, save_instance, write_derived_instance


def _load(name: str) -> Dataset:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not bundled with this pydicom"
    return pydicom.dcmread(path)


def _round_trip(ds: Dataset) -> Dataset:
    buf = io.BytesIO()
    save_instance(ds, buf)
    buf.seek(0)
    return pydicom.dcmread(buf)


def _derive(source: Dataset, frames: np.ndarray, encoding: str = "explicit") -> Dataset:
    out = write_derived_instance(
        source,
        frames,
        generate_uid(prefix=None),
        derivation_description="FlowEdit test",
        encoding=encoding,
    )
    return _round_trip(out)


def _monochrome(photometric: str, bits: int = 8) -> Dataset:
    """A small unsigned greyscale secondary capture made in code (no bundled 8-bit one exists)."""
    ds = copy.deepcopy(_load("SC_rgb_small_odd.dcm"))
    rows, cols = 6, 10
    dtype = np.uint8 if bits == 8 else np.uint16
    values = (np.arange(rows * cols).reshape(rows, cols) * ((1 << bits) - 1) // 59).astype(dtype)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    del ds.PlanarConfiguration
    if "NumberOfFrames" in ds:
        del ds.NumberOfFrames
    ds.PixelData = values.tobytes()
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


# --- reading -------------------------------------------------------------------------------------


def test_rgb_reads_as_its_pixels() -> None:
    ds = _load("SC_rgb_small_odd.dcm")
    frames = read_frames_rgb(ds)
    assert frames.shape == (1, 3, 3, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames[0], pixel_array(ds))


def test_big_endian_reads_like_little_endian() -> None:
    big = read_frames_rgb(_load("SC_rgb_small_odd_big_endian.dcm"))
    little = read_frames_rgb(_load("SC_rgb_small_odd.dcm"))
    assert np.array_equal(big, little)


def test_multi_frame_reads_every_frame() -> None:
    frames = read_frames_rgb(_load("SC_rgb_rle_2frame.dcm"))
    assert frames.shape == (2, 100, 100, 3)
    assert not np.array_equal(frames[0], frames[1])
    jpeg = read_frames_rgb(_load("examples_ybr_color.dcm"))
    assert jpeg.shape == (30, 240, 320, 3)


def test_sixteen_bit_is_scaled_to_eight() -> None:
    ds = _load("SC_rgb_rle_16bit.dcm")
    frames = read_frames_rgb(ds)
    expected = np.rint(pixel_array(ds).astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(frames[0], expected)


def test_ybr_full_422_reads_as_rgb() -> None:
    ds = _load("SC_ybr_full_422_uncompressed.dcm")
    frames = read_frames_rgb(ds)
    reference = read_frames_rgb(_load("SC_rgb_rle.dcm"))  # the same picture stored as RGB
    assert frames.shape == (1, 100, 100, 3)
    assert np.abs(frames.astype(int) - reference).mean() < 3


def test_jpeg2000_colour_reads_as_rgb() -> None:
    ds = _load("examples_jpeg2k.dcm")
    assert ds.PhotometricInterpretation == "YBR_RCT"
    frames = read_frames_rgb(ds)
    assert frames.shape == (1, 480, 640, 3)
    # a colour photograph: the channels differ
    assert np.abs(frames[..., 0].astype(int) - frames[..., 2]).mean() > 5


def test_palette_colour_goes_through_its_lookup_table() -> None:
    ds = _load("examples_palette.dcm")
    frames = read_frames_rgb(ds)
    index = pixel_array(ds)
    red_lut = np.frombuffer(ds.RedPaletteColorLookupTableData, dtype="<u2")
    first = int(ds.RedPaletteColorLookupTableDescriptor[1])
    expected_red = np.rint(red_lut[np.clip(index.astype(int) - first, 0, len(red_lut) - 1)] / 257)
    assert frames.shape == (1, 350, 800, 3)
    assert np.array_equal(frames[0, ..., 0], expected_red.astype(np.uint8))


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_monochrome_reads_as_grey_in_display_polarity(photometric: str) -> None:
    ds = _monochrome(photometric)
    frames = read_frames_rgb(ds)
    stored = pixel_array(ds)
    displayed = 255 - stored if photometric == "MONOCHROME1" else stored
    for channel in range(3):
        assert np.array_equal(frames[0, ..., channel], displayed)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("CT_small.dcm", "signed"),
        ("MR_small_jpeg_ls_lossless.dcm", "signed"),
        ("JPEG-lossy.dcm", "could not be decoded"),
    ],
)
def test_not_an_editable_photograph(name: str, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        read_frames_rgb(_load(name))


def test_missing_pixel_data_is_named() -> None:
    ds = copy.deepcopy(_load("SC_rgb_small_odd.dcm"))
    del ds.PixelData
    with pytest.raises(InvalidInputError, match="no Pixel Data"):
        read_frames_rgb(ds)


def test_truncated_pixel_data_is_a_clear_error() -> None:
    ds = copy.deepcopy(_load("SC_rgb_small_odd.dcm"))
    ds.PixelData = ds.PixelData[:10]
    with pytest.raises(InvalidInputError, match="could not be decoded"):
        read_frames_rgb(ds)


# --- writing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_small_odd.dcm",
        "SC_rgb_rle.dcm",
        "SC_rgb_rle_16bit.dcm",
        "SC_rgb_rle_32bit_2frame.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
        "SC_rgb_jpeg_lossy_gdcm.dcm",
        "SC_rgb_dcmtk_+eb+cy+s2.dcm",
    ],
)
def test_native_output_keeps_size_photometric_and_bit_depth(name: str) -> None:
    source = _load(name)
    frames = read_frames_rgb(source)
    out = _derive(source, frames)
    for keyword in (
        "Rows",
        "Columns",
        "PhotometricInterpretation",
        "BitsStored",
        "SamplesPerPixel",
    ):
        assert out[keyword].value == source[keyword].value, keyword
    assert int(out.get("NumberOfFrames", 1)) == int(source.get("NumberOfFrames", 1))
    back = read_frames_rgb(out)
    # RGB is exact; YBR conversions cost a level or two of rounding
    tolerance = 0 if source.PhotometricInterpretation == "RGB" else 2
    assert np.abs(back.astype(int) - frames).mean() <= tolerance


def test_native_ybr_full_422_is_packed_as_the_standard_says() -> None:
    source = _load("SC_ybr_full_422_uncompressed.dcm")
    frames = read_frames_rgb(source)
    out = _derive(source, frames)
    assert out.PhotometricInterpretation == "YBR_FULL_422"
    assert len(out.PixelData) == 100 * 100 * 2  # Y Y Cb Cr per pair of pixels
    assert (
        np.abs(
            pixel_array(out, as_rgb=False).astype(int) - pixel_array(source, as_rgb=False)
        ).mean()
        < 1.5
    )


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("bits", [8, 16])
def test_monochrome_round_trips_exactly(photometric: str, bits: int) -> None:
    source = _monochrome(photometric, bits)
    frames = read_frames_rgb(source)
    out = _derive(source, frames)
    assert out.PhotometricInterpretation == photometric
    assert out.BitsStored == bits and out.SamplesPerPixel == 1
    if bits == 8:
        assert np.array_equal(pixel_array(out), pixel_array(source))
    assert np.array_equal(read_frames_rgb(out), frames)


def test_palette_is_written_as_rgb_without_its_table() -> None:
    source = _load("examples_palette.dcm")
    out = _derive(source, read_frames_rgb(source))
    assert out.PhotometricInterpretation == "RGB"
    assert out.SamplesPerPixel == 3 and out.BitsAllocated == 8
    assert "RedPaletteColorLookupTableData" not in out
    assert "RedPaletteColorLookupTableDescriptor" not in out


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_every_encoding_round_trips(encoding: str) -> None:
    source = _load("SC_rgb_rle.dcm")
    frames = read_frames_rgb(source)
    out = _derive(source, frames, encoding)
    assert str(out.file_meta.TransferSyntaxUID) == ENCODINGS[encoding].uid
    back = read_frames_rgb(out)
    assert back.shape == frames.shape
    if ENCODINGS[encoding].lossy:
        assert np.abs(back.astype(int) - frames).mean() < 2
        assert out.LossyImageCompression == "01"
    else:
        assert np.array_equal(back, frames)
        assert out.LossyImageCompression == "00"


def test_multi_frame_jpeg_baseline_output() -> None:
    source = _load("examples_ybr_color.dcm")
    frames = read_frames_rgb(source)[:3]
    trimmed = copy.deepcopy(source)
    trimmed.NumberOfFrames = 3
    # write_derived_instance checks frames against the source's format, so trim the source
    from pydicom.encaps import encapsulate, generate_fragmented_frames

    parts = [b"".join(f) for f in generate_fragmented_frames(source.PixelData, number_of_frames=30)]
    trimmed.PixelData = encapsulate(parts[:3])
    out = _derive(trimmed, frames, "jpeg-baseline")
    assert out.NumberOfFrames == 3 and out.PhotometricInterpretation == "YBR_FULL_422"
    assert np.abs(read_frames_rgb(out).astype(int) - frames).mean() < 3


def test_derived_attributes() -> None:
    source = _load("SC_rgb_rle.dcm")
    uid = generate_uid(prefix=None)
    out = _round_trip(
        write_derived_instance(
            source, read_frames_rgb(source), uid, derivation_description="FlowEdit on m@abc"
        )
    )
    assert out.SOPInstanceUID == uid
    assert out.file_meta.MediaStorageSOPInstanceUID == uid
    assert out.file_meta.MediaStorageSOPClassUID == source.SOPClassUID
    assert list(out.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert out.DerivationDescription == "FlowEdit on m@abc"
    assert out.LossyImageCompression == "00"
    assert "LossyImageCompressionRatio" not in out
    # nothing else changes: metadata de-identification is a separate step
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID"):
        if keyword in source:
            assert out[keyword].value == source[keyword].value
    # the source dataset is left alone
    assert source.SOPInstanceUID != uid


def test_lossy_history_is_kept_and_extended() -> None:
    source = copy.deepcopy(_load("SC_rgb_rle.dcm"))
    source.LossyImageCompression = "01"
    source.LossyImageCompressionRatio = "8.5"
    source.LossyImageCompressionMethod = "ISO_10918_1"
    frames = read_frames_rgb(source)
    lossless = _derive(source, frames, "rle")
    assert lossless.LossyImageCompression == "01"  # once lossy, always lossy
    assert float(lossless.LossyImageCompressionRatio) == 8.5
    lossy = _derive(source, frames, "jpeg2000")
    assert lossy.LossyImageCompression == "01"
    assert list(lossy.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_15444_1"]
    ratios = [float(r) for r in lossy.LossyImageCompressionRatio]
    assert ratios[0] == 8.5 and ratios[1] > 1
    codes = [item.CodeValue for item in lossy.DerivationCodeSequence]
    assert "113040" in codes


def test_lossy_source_syntax_makes_the_output_lossy() -> None:
    source = _load("SC_rgb_jpeg.dcm")  # JPEG baseline, whatever its attributes say
    out = _derive(source, read_frames_rgb(source), "explicit")
    assert out.LossyImageCompression == "01"


def test_jpeg_baseline_output_is_truthful() -> None:
    source = _load("SC_rgb_rle.dcm")
    out = _derive(source, read_frames_rgb(source), "jpeg-baseline")
    assert out.LossyImageCompression == "01"
    assert out.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(out.LossyImageCompressionRatio) > 1
    assert out.PhotometricInterpretation == "YBR_FULL_422"


@pytest.mark.parametrize(
    ("name", "encoding", "match"),
    [
        ("SC_rgb_rle_16bit.dcm", "jpeg-baseline", "8-bit"),
        ("SC_rgb_rle_32bit_2frame.dcm", "jpeg2000", "16-bit"),
        ("SC_rgb_rle_32bit_2frame.dcm", "rle", "encoder does not accept"),
        ("SC_rgb_small_odd.dcm", "jpeg2000-lossless", "encoder does not accept"),
        ("SC_rgb_rle.dcm", "jpeg-ls", "unknown output encoding"),
    ],
)
def test_encoding_that_cannot_hold_the_image(name: str, encoding: str, match: str) -> None:
    source = _load(name)
    with pytest.raises(InvalidInputError, match=match):
        write_derived_instance(
            source,
            read_frames_rgb(source),
            generate_uid(prefix=None),
            derivation_description="x",
            encoding=encoding,
        )


def test_frames_that_do_not_fit_the_source() -> None:
    source = _load("SC_rgb_rle.dcm")
    uid = generate_uid(prefix=None)
    for bad in (
        np.zeros((1, 99, 100, 3), dtype=np.uint8),
        np.zeros((2, 100, 100, 3), dtype=np.uint8),
        np.zeros((1, 100, 100, 3), dtype=np.uint16),
    ):
        with pytest.raises(InvalidInputError, match="edited frames"):
            write_derived_instance(source, bad, uid, derivation_description="x")
    with pytest.raises(InvalidInputError, match="not a valid UID"):
        write_derived_instance(
            source, read_frames_rgb(source), "not-a-uid", derivation_description="x"
        )


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) not installed")
@pytest.mark.parametrize("encoding", ["explicit", "rle", "jpeg-baseline"])
def test_derived_instance_adds_no_iod_errors(tmp_path: Path, encoding: str) -> None:
    """dciodvfy on the output reports no error or warning that the source did not already have."""
    source_path = Path(get_testdata_file("SC_rgb_rle.dcm", download=False))
    source = pydicom.dcmread(source_path)
    out_path = tmp_path / "derived.dcm"
    save_instance(
        write_derived_instance(
            source,
            read_frames_rgb(source),
            generate_uid(prefix=None),
            derivation_description="FlowEdit test",
            encoding=encoding,
        ),
        out_path,
    )

    def findings(path: Path) -> set[str]:
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        lines = (run.stdout + run.stderr).splitlines()
        assert lines and lines[0].strip() == "SCImage"  # it did recognise and check the IOD
        return {line for line in lines if line.startswith(("Error", "Warning"))}

    assert findings(out_path) <= findings(source_path)
