"""PHI inside compressed pixel data (JPEG COM/APPn, JPEG 2000 COM) is cut out losslessly."""

from __future__ import annotations

import io
import struct

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.uid import JPEGBaseline8Bit

from deid_core import ConfidentialityProfile, Deidentifier, InvalidInputError, ProjectKey
from deid_core.encapsulated import strip_jpeg
from tests.support.canary import CANARY_PREFIX

KEY = ProjectKey(b"e" * 40)
CANARY = (CANARY_PREFIX + "PIXELPHI").encode()


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _plant_jpeg(frame: bytes) -> bytes:
    """COM, EXIF (APP1), XMP (APP1), Photoshop (APP13) after SOI, a COM before EOI and bytes
    after EOI, each with the canary."""
    assert frame[:2] == b"\xff\xd8"
    end = frame.rindex(b"\xff\xd9")
    head = (
        _segment(0xFE, b"Patient " + CANARY)
        + _segment(0xE1, b"Exif\x00\x00" + CANARY)
        + _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + CANARY)
        + _segment(0xED, b"Photoshop 3.0\x00" + CANARY)
    )
    return frame[:2] + head + frame[2:end] + _segment(0xFE, CANARY) + b"\xff\xd9" + CANARY


def _plant_j2k(frame: bytes) -> bytes:
    """A COM segment in the main header and one in the first tile-part header (Psot fixed); in a
    JP2 file also an XML box and a UUID box."""
    if frame.startswith(b"\x00\x00\x00\x0cjP  "):
        at = frame.index(b"jp2c") - 4
        (size,) = struct.unpack(">I", frame[at : at + 4])
        end = at + size if size else len(frame)
        stream = _plant_j2k(frame[at + 8 : end])
        xml = b"<x>" + CANARY + b"</x>"
        boxes = struct.pack(">I", len(xml) + 8) + b"xml " + xml
        boxes += struct.pack(">I", 16 + len(CANARY) + 8) + b"uuid" + b"\x01" * 16 + CANARY
        return frame[:at] + boxes + struct.pack(">I", len(stream) + 8) + b"jp2c" + stream
    assert frame[:4] == b"\xff\x4f\xff\x51"
    com = _segment(0x64, b"\x00\x01" + CANARY)
    sot = frame.index(b"\xff\x90")
    (psot,) = struct.unpack(">I", frame[sot + 6 : sot + 10])
    tile_header = frame[sot : sot + 12]
    if psot:
        tile_header = tile_header[:6] + struct.pack(">I", psot + len(com)) + tile_header[10:]
    return frame[:sot] + com + tile_header + com + frame[sot + 12 :]


def _replant(ds: Dataset, plant) -> Dataset:  # type: ignore[no-untyped-def]
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))
    ds.PixelData = encapsulate([plant(f) for f in frames])
    return ds


def _roundtrip(ds: Dataset) -> tuple[bytes, Dataset]:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    return data, pydicom.dcmread(io.BytesIO(data))


def _deid_bytes(ds: Dataset) -> bytes:
    out = Deidentifier(ConfidentialityProfile(), KEY).deidentify(ds)
    buffer = io.BytesIO()
    out.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "plant"),
    [
        ("SC_rgb_jpeg_dcmtk.dcm", _plant_jpeg),  # JPEG baseline, YBR
        ("SC_rgb_jpeg_app14_dcmd.dcm", _plant_jpeg),  # keeps its APP14 Adobe colour transform
        ("SC_jpeg_no_color_transform.dcm", _plant_jpeg),  # RGB without colour transform
        ("JPEGLSNearLossless_08.dcm", _plant_jpeg),  # JPEG-LS near-lossless
        ("MR_small_jpeg_ls_lossless.dcm", _plant_jpeg),  # JPEG-LS
        ("JPEG2000.dcm", _plant_j2k),
        ("GDCMJ2K_TextGBR.dcm", _plant_j2k),
    ],
)
def test_metadata_segments_are_stripped_and_pixels_identical(name: str, plant) -> None:  # type: ignore[no-untyped-def]
    clean = pydicom.dcmread(get_testdata_file(name))
    expected = clean.pixel_array.copy()
    data, planted = _roundtrip(_replant(pydicom.dcmread(get_testdata_file(name)), plant))
    assert data.count(CANARY) >= 2  # the plant really is in the input
    output = _deid_bytes(planted)
    assert CANARY not in output
    assert CANARY_PREFIX.encode() not in output
    result = pydicom.dcmread(io.BytesIO(output))
    assert np.array_equal(result.pixel_array, expected)


@pytest.mark.parametrize("table", ["basic", "extended"])
def test_multiframe_with_offset_tables(table: str) -> None:
    rng = np.random.default_rng(5)
    frames, arrays = [], []
    for _ in range(3):
        arr = rng.integers(0, 256, (32, 48), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(arr).save(buffer, format="JPEG", quality=90, comment=b"x" + CANARY)
        frames.append(_plant_jpeg(buffer.getvalue()))
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.2"
    ds.SOPInstanceUID = "2.25.1234"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 32, 48, 3
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if table == "basic":
        ds.PixelData = encapsulate(frames, has_bot=True)
    else:
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(
            frames
        )
    ds["PixelData"].VR = "OB"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    data, planted = _roundtrip(ds)
    arrays = planted.pixel_array.copy()
    assert data.count(CANARY) >= 3
    output = _deid_bytes(planted)
    assert CANARY not in output
    result = pydicom.dcmread(io.BytesIO(output))
    assert result.NumberOfFrames == 3
    assert np.array_equal(result.pixel_array, arrays)
    if table == "extended":
        # The Extended Offset Table was rewritten for the shortened frames.
        offsets = np.frombuffer(result.ExtendedOffsetTable, dtype="<u8")
        lengths = np.frombuffer(result.ExtendedOffsetTableLengths, dtype="<u8")
        frames_out = list(
            generate_frames(
                result.PixelData,
                number_of_frames=3,
                extended_offsets=(result.ExtendedOffsetTable, result.ExtendedOffsetTableLengths),
            )
        )
        assert [len(f) for f in frames_out] == list(lengths)
        assert offsets[0] == 0 and all(f.startswith(b"\xff\xd8") for f in frames_out)


def test_jfif_thumbnail_is_cut_and_clean_streams_are_left_alone() -> None:
    arr = np.zeros((8, 8), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="JPEG")
    plain = buffer.getvalue()
    assert strip_jpeg(plain) == plain[: plain.rindex(b"\xff\xd9") + 2]
    # A JFIF APP0 with a 1x1 thumbnail holding canary-coloured bytes.
    app0 = _segment(0xE0, b"JFIF\x00\x01\x02\x00\x00\x01\x00\x01\x01\x01" + b"ZQX")
    stripped = strip_jpeg(plain[:2] + app0 + plain[2:])
    assert b"ZQX" not in stripped
    assert b"JFIF\x00" in stripped


def test_a_frame_that_is_not_jpeg_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        strip_jpeg(b"\x00\x01" + CANARY)


def test_progressive_jpeg_with_segments_between_scans_decodes_identically() -> None:
    arr = np.random.default_rng(2).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="JPEG", quality=90, progressive=True)
    frame = buffer.getvalue()
    # A COM segment between two scans (after the first scan's entropy-coded data).
    second_sos = frame.index(b"\xff\xda", frame.index(b"\xff\xda") + 2)
    planted = frame[:second_sos] + _segment(0xFE, CANARY) + frame[second_sos:]
    stripped = strip_jpeg(_plant_jpeg(planted))
    assert CANARY not in stripped
    decoded = np.asarray(Image.open(io.BytesIO(stripped)))
    assert np.array_equal(decoded, np.asarray(Image.open(io.BytesIO(frame))))
