"""Undefined-length elements that are not sequences (items hidden under LO, UN, OB, or an
implicit-VR tag nobody knows), as some vendors send them: de-identified as sequences or removed,
never passed through and never a crash. Built from raw bytes."""

from __future__ import annotations

import io
import struct

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO

from deid_core import ConfidentialityProfile, Deidentifier, ProjectKey
from deid_core.options import ProfileOption
from deid_core.private import SafePrivateElement
from tests.support.canary import CANARY_PREFIX

KEY = ProjectKey(b"u" * 40)
CANARY = (CANARY_PREFIX + "NESTED01").encode()
UNDEFINED = 0xFFFFFFFF


def _implicit(group: int, elem: int, value: bytes, length: int | None = None) -> bytes:
    return struct.pack("<HHI", group, elem, len(value) if length is None else length) + value


def _explicit(group: int, elem: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    n = len(value) if length is None else length
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, n) + value
    return struct.pack("<HH2sH", group, elem, vr, n) + value


def _items(payload: bytes) -> bytes:
    """One undefined-length item holding `payload`, then the sequence delimiter."""
    return (
        struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED)
        + payload
        + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )


def _header(explicit: bool) -> bytes:
    if explicit:
        return _explicit(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\x00") + _explicit(
            0x0008, 0x0018, b"UI", b"1.2.3.4\x00"
        )
    return _implicit(0x0008, 0x0016, b"1.2.840.10008.5.1.4.1.1.7\x00") + _implicit(
        0x0008, 0x0018, b"1.2.3.4\x00"
    )


def _implicit_file() -> bytes:
    hidden = _items(_implicit(0x0010, 0x0010, CANARY))  # a Patient's Name inside
    return (
        _header(False)
        + _implicit(0x0008, 0x0070, hidden, UNDEFINED)  # Manufacturer (LO) with items inside
        + _implicit(0x0009, 0x0010, b"ACME 1.0")
        + _implicit(0x0009, 0x1010, hidden, UNDEFINED)  # a vendor's private sequence
        + _implicit(0x0010, 0x0020, b"PID1")
        + _implicit(0x0011, 0x1010, hidden, UNDEFINED)  # private, no creator
    )


def _explicit_file() -> bytes:
    hidden = _items(_explicit(0x0010, 0x0010, b"PN", CANARY))
    return (
        _header(True)
        + _explicit(0x0008, 0x0070, b"UN", hidden, UNDEFINED)  # Manufacturer sent as UN, items
        + _explicit(0x0009, 0x0010, b"LO", b"ACME 1.0")
        + _explicit(0x0009, 0x1010, b"UN", hidden, UNDEFINED)
        # Not items at all: bytes up to a sequence delimiter.
        + _explicit(
            0x0009, 0x1011, b"OB", CANARY + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0), UNDEFINED
        )
        + _explicit(0x0010, 0x0020, b"LO", b"PID1")
    )


PROFILES = {
    "basic": ConfidentialityProfile(),
    "safe_private_any": ConfidentialityProfile(
        frozenset({ProfileOption.RETAIN_SAFE_PRIVATE}),
        safe_private=(
            SafePrivateElement(creator="ACME 1.0", elements=None, values="any", note="test"),
        ),
    ),
}


@pytest.mark.parametrize("build", [_implicit_file, _explicit_file], ids=["implicit", "explicit"])
@pytest.mark.parametrize("profile", list(PROFILES), ids=list(PROFILES))
def test_items_under_a_non_sequence_never_pass_through(build, profile: str) -> None:  # type: ignore[no-untyped-def]
    raw = build()
    assert CANARY in raw
    ds = pydicom.dcmread(DicomBytesIO(raw), force=True)
    deid = Deidentifier(PROFILES[profile], KEY)
    out = deid.deidentify(ds)
    buffer = io.BytesIO()
    out.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    assert CANARY not in data
    assert CANARY_PREFIX.encode() not in data
    assert 0x00080070 not in out  # a Manufacturer with items inside is not a Manufacturer
    again = pydicom.dcmread(io.BytesIO(data))  # and the output is readable
    assert again.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    if profile == "safe_private_any":
        # The vendor's private sequence is kept, its items de-identified.
        seq = out[0x00091010]
        assert seq.VR == "SQ"
        assert str(seq.value[0].PatientName) == str(out.PatientID)
    # explain names each decision without crashing.
    decisions = {d.tag: d.action for d in deid.explain(ds)}
    assert decisions["(0008,0070)"] == "X"
