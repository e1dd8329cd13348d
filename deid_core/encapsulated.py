"""Identity outside the header: comments and application segments inside compressed pixel data.

A JPEG frame can carry text the DICOM header never shows: COM segments, EXIF and XMP (APP1),
Photoshop/IPTC (APP13), ICC descriptions (APP2), vendor blobs (APPn) and bytes after the end of
the image. A JPEG 2000 codestream can carry COM (0xFF64) marker segments, and a JP2 file XML,
UUID and IPR boxes. None of these is needed to decode the pixels, so de-identification removes
them by cutting bytes out of each frame (never by re-encoding): the decoded pixels are
bit-identical before and after.

Kept, because a decoder reads them: APP0 "JFIF" (its thumbnail removed), APP14 "Adobe" (colour
transform), APP8 "mrfx" (JPEG-LS colour transform), every non-APP marker segment; in JPEG 2000
every main and tile-part header segment except COM (and TLM, an optional index of tile-part
lengths, when a tile-part was shortened). A frame that claims to be JPEG or JPEG 2000 and cannot
be parsed is refused: passing it through could pass its metadata through.
"""

from __future__ import annotations

import re
import struct

from pydicom.encaps import (
    encapsulate,
    encapsulate_extended,
    generate_frames,
    parse_basic_offsets,
)

from deid_core.errors import InvalidInputError

JPEG_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
    }
)
J2K_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.92",
        "1.2.840.10008.1.2.4.93",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
    }
)

_SOI = b"\xff\xd8"
_J2K_SOC = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
#: Standalone JPEG markers (no length): TEM, RST0-7, SOI, EOI.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8, 0xD9})
#: The end of entropy-coded data: 0xFF then 0x80-0xFE other than RSTn (JPEG stuffs 0xFF00 and
#: JPEG-LS 0xFF0x-0xFF7x inside the data; 0xFFFF is a fill byte before the marker).
_SCAN_END = re.compile(rb"\xff[\x80-\xcf\xd8-\xfe]")
#: JP2 top-level boxes a decoder needs; everything else (xml, uuid, jp2i, uinf, ...) is dropped.
_JP2_KEEP = frozenset({b"jP  ", b"ftyp", b"jp2h", b"jp2c", b"rreq"})


def _keep_app(marker: int, payload: bytes) -> bytes | None:
    """The APPn payload to keep (possibly shortened), or None to drop the segment."""
    if marker == 0xE0 and payload.startswith(b"JFIF\x00") and len(payload) >= 14:
        # Version, units and density; thumbnail size set to 0x0 and the thumbnail cut.
        return payload[:12] + b"\x00\x00"
    if marker == 0xEE and payload.startswith(b"Adobe"):
        return payload
    if marker == 0xE8 and payload.startswith(b"mrfx"):
        return payload
    return None


def strip_jpeg(frame: bytes) -> bytes:
    """A JPEG / JPEG-LS / lossless JPEG stream without COM, non-decoding APPn segments and
    anything after EOI."""
    if not frame.startswith(_SOI):
        raise InvalidInputError("a JPEG frame does not start with SOI")
    out = bytearray(_SOI)
    i, n = 2, len(frame)
    while True:
        # At a marker: skip fill bytes.
        if i >= n or frame[i] != 0xFF:
            raise InvalidInputError("a JPEG frame is malformed (marker expected)")
        while i < n and frame[i] == 0xFF:
            i += 1
        if i >= n:
            raise InvalidInputError("a JPEG frame is truncated")
        marker = frame[i]
        i += 1
        if marker == 0xD9:
            out += b"\xff\xd9"
            return bytes(out)  # bytes after EOI are dropped
        if marker in _STANDALONE:
            out += bytes((0xFF, marker))
            continue
        if i + 2 > n:
            raise InvalidInputError("a JPEG frame is truncated")
        (length,) = struct.unpack(">H", frame[i : i + 2])
        end = i + length
        if length < 2 or end > n:
            raise InvalidInputError("a JPEG frame has a bad segment length")
        payload = frame[i + 2 : end]
        if marker == 0xFE:
            pass  # COM
        elif 0xE0 <= marker <= 0xEF:
            kept = _keep_app(marker, payload)
            if kept is not None:
                out += bytes((0xFF, marker)) + struct.pack(">H", len(kept) + 2) + kept
        else:
            out += bytes((0xFF, marker)) + frame[i:end]
        i = end
        if marker == 0xDA:
            # Entropy-coded data up to the next marker: 0xFF followed by 0x80-0xFE other than
            # RSTn (JPEG stuffs 0xFF00, JPEG-LS 0xFF0x-0xFF7x; both keep those in the data).
            found = _SCAN_END.search(frame, i)
            if found is None:
                raise InvalidInputError("a JPEG frame is truncated (no EOI)")
            out += frame[i : found.start()]  # a fill byte before the marker may stay: harmless
            i = found.start()


def _strip_codestream(stream: bytes) -> bytes:
    """A JPEG 2000 / HTJ2K codestream without COM marker segments."""
    if not stream.startswith(b"\xff\x4f"):
        raise InvalidInputError("a JPEG 2000 frame does not start with SOC")
    n = len(stream)
    main = bytearray(b"\xff\x4f")
    tiles: list[bytearray] = []
    shortened = False
    i = 2
    # Main header, up to the first SOT.
    while True:
        if i + 4 > n or stream[i] != 0xFF:
            raise InvalidInputError("a JPEG 2000 frame is malformed")
        marker = stream[i + 1]
        if marker in (0x90, 0xD9):
            break
        (length,) = struct.unpack(">H", stream[i + 2 : i + 4])
        end = i + 2 + length
        if length < 2 or end > n:
            raise InvalidInputError("a JPEG 2000 frame has a bad segment length")
        if marker != 0x64:
            main += stream[i:end]
        i = end
    # Tile-parts: SOT (its Psot is the tile-part's length from SOT), header, SOD, data.
    while i + 2 <= n and stream[i : i + 2] == b"\xff\x90":
        if i + 12 > n:
            raise InvalidInputError("a JPEG 2000 frame is truncated")
        (psot,) = struct.unpack(">I", stream[i + 6 : i + 10])
        part_end = stream.rfind(b"\xff\xd9") if psot == 0 else i + psot
        if part_end > n:
            raise InvalidInputError("a JPEG 2000 tile-part is longer than the frame")
        part = bytearray(stream[i : i + 12])
        j = i + 12
        while True:
            if j + 2 > part_end or stream[j] != 0xFF:
                raise InvalidInputError("a JPEG 2000 tile-part header is malformed")
            marker = stream[j + 1]
            if marker == 0x93:  # SOD: the rest of the tile-part is data
                part += stream[j:part_end]
                break
            (length,) = struct.unpack(">H", stream[j + 2 : j + 4])
            end = j + 2 + length
            if length < 2 or end > part_end:
                raise InvalidInputError("a JPEG 2000 frame has a bad segment length")
            if marker == 0x64:
                shortened = True
            else:
                part += stream[j:end]
            j = end
        if psot != 0:
            part[6:10] = struct.pack(">I", len(part))
        tiles.append(part)
        i = part_end
    if stream[i : i + 2] != b"\xff\xd9":
        raise InvalidInputError("a JPEG 2000 frame does not end with EOC")
    if shortened:
        # TLM lists tile-part lengths; it is optional, so drop it rather than rewrite it.
        main = _drop_segments(main, 0x55)
    return bytes(main) + b"".join(bytes(t) for t in tiles) + b"\xff\xd9"


def _drop_segments(main: bytearray, marker: int) -> bytearray:
    out = bytearray(main[:2])
    i = 2
    while i + 4 <= len(main):
        (length,) = struct.unpack(">H", main[i + 2 : i + 4])
        if main[i + 1] != marker:
            out += main[i : i + 2 + length]
        i += 2 + length
    return out


def _strip_jp2(data: bytes) -> bytes:
    """A JP2 file: keep the boxes a decoder needs, strip COM in its codestream."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        if i + 8 > n:
            raise InvalidInputError("a JP2 box is truncated")
        (lbox,) = struct.unpack(">I", data[i : i + 4])
        tbox = data[i + 4 : i + 8]
        header = 8
        if lbox == 1:
            (lbox,) = struct.unpack(">Q", data[i + 8 : i + 16])
            header = 16
        elif lbox == 0:
            lbox = n - i
        if lbox < header or i + lbox > n:
            raise InvalidInputError("a JP2 box has a bad length")
        if tbox == b"jp2c":
            body = _strip_codestream(data[i + header : i + lbox])
            out += struct.pack(">I", len(body) + 8) + tbox + body
        elif tbox in _JP2_KEEP:
            out += data[i : i + lbox]
        i += lbox
    return bytes(out)


def strip_j2k(frame: bytes) -> bytes:
    """A JPEG 2000 frame (codestream or JP2 file) without comments and metadata boxes."""
    if frame.startswith(_JP2_SIGNATURE):
        return _strip_jp2(frame)
    # Trailing padding after EOC (even length) is dropped with everything else after it.
    return _strip_codestream(frame)


def strip_frame(frame: bytes, transfer_syntax: str) -> bytes:
    """One frame without metadata segments; frames of other syntaxes (RLE, video) unchanged."""
    if transfer_syntax in JPEG_SYNTAXES:
        return strip_jpeg(frame)
    if transfer_syntax in J2K_SYNTAXES:
        return strip_j2k(frame)
    # An unknown or unlisted syntax: recognise the stream by its signature.
    if frame.startswith(b"\xff\xd8\xff"):
        return strip_jpeg(frame)
    if frame.startswith(_J2K_SOC) or frame.startswith(_JP2_SIGNATURE):
        return strip_j2k(frame)
    return frame


def strip_pixel_data(
    value: bytes,
    transfer_syntax: str,
    number_of_frames: int,
    extended_offsets: tuple[bytes, bytes] | None = None,
) -> tuple[bytes, tuple[bytes, bytes] | None] | None:
    """Encapsulated Pixel Data (the items after the element header) with every frame stripped.

    Returns None when nothing had to change (the caller keeps the original bytes), else the new
    value and, when the input had an Extended Offset Table (`extended_offsets`: the table and its
    lengths), the new table and lengths. Frames are written one fragment each, with a Basic
    Offset Table when the input had one."""
    try:
        has_bot = bool(parse_basic_offsets(value))
        frames = list(
            generate_frames(
                value,
                number_of_frames=max(1, number_of_frames),
                extended_offsets=extended_offsets,
            )
        )
    except Exception:
        raise InvalidInputError("encapsulated Pixel Data cannot be split into frames") from None
    stripped = [strip_frame(f, transfer_syntax) for f in frames]
    if all(
        f[: len(s)] == s and not f[len(s) :].strip(b"\x00")
        for f, s in zip(frames, stripped, strict=True)
    ):
        return None  # nothing but even-length padding would change
    if extended_offsets is not None:
        data, offsets, lengths = encapsulate_extended(stripped)
        return data, (offsets, lengths)
    return encapsulate(stripped, has_bot=has_bot), None


__all__ = [
    "J2K_SYNTAXES",
    "JPEG_SYNTAXES",
    "strip_frame",
    "strip_j2k",
    "strip_jpeg",
    "strip_pixel_data",
]
