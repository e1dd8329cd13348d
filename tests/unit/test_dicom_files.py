"""Reading (tolerant, clear errors), encoding (fast path = pydicom's writer) and atomic writing."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset

from deid_core import ConfidentialityProfile, Deidentifier, InvalidInputError, ProjectKey
from deid_core.errors import RetryableError
from deid_core.options import ProfileOption
from dicom_io.encode import fast_encode
from dicom_io.files import (
    encode_dataset,
    parse_dataset,
    read_dataset,
    reference_encode,
    write_dataset,
    write_files_atomic,
)

DEID = Deidentifier(
    # clean_structured_content: SR documents are encoded too (without it they are refused)
    ConfidentialityProfile(
        frozenset(
            {
                ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES,
                ProfileOption.CLEAN_STRUCTURED_CONTENT,
            }
        )
    ),
    ProjectKey(b"f" * 40),
)


def _ct_bytes() -> bytes:
    return Path(get_testdata_file("CT_small.dcm")).read_bytes()  # type: ignore[arg-type]


def test_fast_encoder_writes_exactly_what_pydicom_writes() -> None:
    """Byte-identical files over pydicom's whole test set (de-identified), every encoding."""
    compared = 0
    # pydicom's bundled files only (get_testdata_files would try to download pydicom-data).
    for path in sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm")):
        try:
            out = DEID.deidentify(read_dataset(path))
        except InvalidInputError:
            continue
        try:
            fast = fast_encode(out)
        except Exception:
            continue  # deflate or an encoding change: encode_dataset uses pydicom then
        assert fast == reference_encode(out), path
        compared += 1
    assert compared > 50


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty or too short"),
        (os.urandom(2048), "not a DICOM file"),
        (b"\x00" * 128 + b"DICM" + os.urandom(64), "malformed|truncated|not a DICOM"),
    ],
)
def test_unusable_bytes_give_a_clear_reason(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidInputError, match=reason):
        parse_dataset(data)


def test_truncated_file_is_refused() -> None:
    data = _ct_bytes()
    with pytest.raises(InvalidInputError, match="truncated"):
        parse_dataset(data[: len(data) - 1000])
    # pydicom's own truncated samples too.
    for name in ("MR_truncated.dcm", "rtplan_truncated.dcm"):
        with pytest.raises(InvalidInputError, match="truncated"):
            read_dataset(get_testdata_file(name))  # type: ignore[arg-type]


def test_file_without_preamble_or_meta_is_read() -> None:
    """A bare data set (no preamble, no "DICM", no File Meta Information), as old archives
    hold: read in force mode, written back as a proper file."""
    ds = pydicom.dcmread(io.BytesIO(_ct_bytes()))
    ds.preamble = None
    ds.file_meta = FileMetaDataset()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    bare = buffer.getvalue()
    assert bare[128:132] != b"DICM" and bare[:2] == b"\x08\x00"
    parsed = parse_dataset(bare)
    assert parsed.SOPInstanceUID == ds.SOPInstanceUID
    result = DEID.deidentify(parsed)
    assert result.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert parse_dataset(encode_dataset(result)).PatientIdentityRemoved == "YES"


def test_missing_transfer_syntax_is_inferred_from_the_data() -> None:
    ds = pydicom.dcmread(io.BytesIO(_ct_bytes()))
    del ds.file_meta.TransferSyntaxUID
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True, enforce_file_format=False)
    parsed = parse_dataset(buffer.getvalue())
    result = DEID.deidentify(parsed)
    assert result.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    back = parse_dataset(encode_dataset(result))
    assert back.Rows == ds.Rows and back.PixelData == ds.PixelData


def test_write_dataset_is_atomic_and_replaces(tmp_path: Path) -> None:
    out = DEID.deidentify(parse_dataset(_ct_bytes()))
    target = tmp_path / "a" / "b" / "x.dcm"
    n = write_dataset(out, target)
    assert target.stat().st_size == n
    target.write_bytes(b"old")
    write_dataset(out, target, fsync=False)
    assert parse_dataset(target.read_bytes()).SOPInstanceUID == out.SOPInstanceUID
    assert [p.name for p in target.parent.iterdir()] == ["x.dcm"]


def test_batch_write_reports_per_file_and_leaves_no_temporaries(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder is needed")
    items = [
        (b"one", tmp_path / "ok" / "1.dcm"),
        (b"two", blocked / "2.dcm"),  # its parent is a file: cannot be written
        (b"three", tmp_path / "ok" / "3.dcm"),
    ]
    errors = write_files_atomic(items)
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], RetryableError)
    assert (tmp_path / "ok" / "1.dcm").read_bytes() == b"one"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_encode_refuses_a_dataset_without_file_meta() -> None:
    ds = Dataset()
    ds.PatientID = "x"
    with pytest.raises(InvalidInputError, match="File Meta"):
        encode_dataset(ds)


def test_reading_a_folder_or_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="directory"):
        read_dataset(tmp_path)
    with pytest.raises(InvalidInputError, match="no such file"):
        read_dataset(tmp_path / "absent.dcm")
