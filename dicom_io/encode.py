"""A fast DICOM encoder for de-identified datasets, with pydicom's writer as the reference.

A de-identified dataset is mostly elements carried over unread from the input (pydicom
RawDataElements: their value bytes are already encoded in the input's transfer syntax). pydicom's
`dcmwrite` spends most of its time on per-element machinery; this encoder copies raw values
straight through and hands only the elements that were created or decoded to pydicom's own
`write_data_element`. It is used when every raw element was read in the transfer syntax being
written (the usual case); anything else (deflate, a syntax change, datasets built in code with
raw elements from elsewhere) falls back to `dcmwrite`. Tests check that both give byte-identical
data sets.
"""

from __future__ import annotations

import struct
from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"

#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_UNDEFINED = 0xFFFFFFFF


class CannotFastEncode(Exception):
    """The dataset needs pydicom's general writer (encoding change, deflate, odd elements)."""


def encoding_of(transfer_syntax: str) -> tuple[bool, bool]:
    """(implicit VR, little endian) of a transfer syntax; compressed ones are explicit LE."""
    if transfer_syntax == IMPLICIT_LE:
        return True, True
    if transfer_syntax == EXPLICIT_BE:
        return False, False
    if transfer_syntax == DEFLATED_LE:
        raise CannotFastEncode("deflated")
    return False, True


class _Encoder:
    def __init__(self, implicit: bool, little: bool) -> None:
        self.implicit = implicit
        self.little = little
        self.prefix = "<" if little else ">"
        self._tag = struct.Struct(self.prefix + "HH")
        self._u16 = struct.Struct(self.prefix + "H")
        self._u32 = struct.Struct(self.prefix + "I")
        self._item = self._tag.pack(0xFFFE, 0xE000)
        self._seq_delim = self._tag.pack(0xFFFE, 0xE0DD) + self._u32.pack(0)

    def header(self, tag: int, vr: str | None, length: int) -> bytes:
        head = self._tag.pack(tag >> 16, tag & 0xFFFF)
        if self.implicit:
            return head + self._u32.pack(length)
        if vr is None or len(vr) != 2:
            raise CannotFastEncode("element without an explicit VR")
        if vr in _LONG_VRS:
            return head + vr.encode("ascii") + b"\x00\x00" + self._u32.pack(length)
        if length > 0xFFFF:
            raise CannotFastEncode("value too long for a 2-byte length")
        return head + vr.encode("ascii") + self._u16.pack(length)

    def dataset(self, ds: Dataset, encodings: Any, parts: list[bytes]) -> None:
        charset = ds.get("SpecificCharacterSet", None) if 0x00080005 in ds else None
        if charset is not None:
            encodings = ds._character_set
        for tag in sorted(ds._dict):
            elem = ds._dict[tag]
            if (tag >> 16) == 0x0002 or ((tag & 0xFFFF) == 0 and (tag >> 16) > 6):
                continue
            if isinstance(elem, RawDataElement):
                self.raw(elem, parts)
            elif elem.VR == "SQ":
                self.sequence(elem, encodings, parts)
            else:
                buffer = DicomBytesIO()
                buffer.is_little_endian = self.little
                buffer.is_implicit_VR = self.implicit
                write_data_element(buffer, elem, encodings)
                parts.append(buffer.getvalue())

    def raw(self, elem: RawDataElement, parts: list[bytes]) -> None:
        if elem.is_implicit_VR != self.implicit or elem.is_little_endian != self.little:
            raise CannotFastEncode("raw element read in another encoding")
        value = elem.value
        if value is None:
            if elem.length not in (0, _UNDEFINED):
                raise CannotFastEncode("deferred element")
            value = b""
        if elem.length == _UNDEFINED:
            parts.append(self.header(elem.tag, elem.VR, _UNDEFINED))
            parts.append(value)
            parts.append(self._seq_delim)
            return
        parts.append(self.header(elem.tag, elem.VR, len(value)))
        parts.append(value)

    def sequence(self, elem: DataElement, encodings: Any, parts: list[bytes]) -> None:
        body: list[bytes] = []
        for item in elem.value:
            item_parts: list[bytes] = []
            self.dataset(item, encodings, item_parts)
            content = b"".join(item_parts)
            body.append(self._item + self._u32.pack(len(content)))
            body.append(content)
        data = b"".join(body)
        parts.append(self.header(elem.tag, "SQ", len(data)))
        parts.append(data)


def _file_meta(meta: Dataset) -> bytes:
    enc = _Encoder(implicit=False, little=True)
    parts: list[bytes] = []
    for tag in sorted(meta._dict):
        if tag == 0x00020000:
            continue
        elem = meta._dict[tag]
        if isinstance(elem, RawDataElement):
            raise CannotFastEncode("raw file meta")
        buffer = DicomBytesIO()
        buffer.is_little_endian = True
        buffer.is_implicit_VR = False
        write_data_element(buffer, elem, ["iso8859"])
        parts.append(buffer.getvalue())
    body = b"".join(parts)
    return enc.header(0x00020000, "UL", 4) + struct.pack("<I", len(body)) + body


def fast_encode(ds: Dataset) -> bytes:
    """Preamble, File Meta Information and data set, or CannotFastEncode."""
    return b"".join(fast_encode_parts(ds))


def fast_encode_parts(ds: Dataset) -> list[bytes]:
    """`fast_encode` as the pieces that make the file, in order, not joined: the values (pixel
    data) are the dataset's own objects, so writing the parts needs no second copy in memory."""
    meta = ds.file_meta
    ts = str(meta.TransferSyntaxUID)
    implicit, little = encoding_of(ts)
    enc = _Encoder(implicit, little)
    parts: list[bytes] = [b"\x00" * 128, b"DICM", _file_meta(meta)]
    enc.dataset(ds, ds._character_set, parts)
    return parts


__all__ = ["CannotFastEncode", "encoding_of", "fast_encode", "fast_encode_parts"]
