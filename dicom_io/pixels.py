"""Pixels of photographic instances in and out of DICOM, for the generative edit.

Reading (`read_frames_rgb`) turns any photograph pydicom can decode (native, RLE, JPEG baseline /
extended / lossless, JPEG-LS, JPEG 2000 through pylibjpeg and GDCM) into (frames, rows, columns, 3)
uint8 RGB, the only thing the model sees. Writing (`write_derived_instance`) puts edited frames
back as a new, derived instance that looks like the original to a viewer: same size, same
photometric interpretation where the transfer syntax allows it, same bit depth.

Policy, per photometric interpretation of the source (read as -> written back as):

- RGB: RGB -> RGB.
- YBR_FULL: converted to RGB by pydicom -> YBR_FULL when 8-bit (native or RLE), else RGB.
- YBR_FULL_422: RGB -> YBR_FULL_422 in native syntaxes (8-bit, even columns), RGB under RLE
  (which cannot hold subsampled data).
- YBR_ICT, YBR_RCT, YBR_PARTIAL_420: RGB -> RGB (they exist only inside their codecs).
- PALETTE COLOR: RGB through the colour lookup table -> RGB, 8-bit, table removed (an edit makes
  colours the palette lacks).
- MONOCHROME1 / MONOCHROME2: grey replicated to RGB, MONOCHROME1 inverted first so that the model
  sees the displayed image -> the same MONOCHROME, from the luma of the edit.
- JPEG baseline output is always YBR_FULL_422 (colour) or the source's MONOCHROME; JPEG 2000
  output is RGB (colour).

Samples of more than 8 bits are scaled from their Bits Stored range to 0..255 for the model and back
on writing, so a 16-bit instance stays 16-bit (with 8 bits of information where the edit touched
it). Signed or floating-point pixel data, 1-bit data and other interpretations are not photographs:
they raise InvalidInputError, never a half-written instance.

Transfer syntaxes the writer can produce (`ENCODINGS`): explicit VR little endian (default),
implicit VR little endian, RLE lossless (pydicom's own encoder), JPEG 2000 lossless and lossy
(pylibjpeg-openjpeg), JPEG baseline (Pillow; 8-bit only). JPEG-LS would need pyjpegls, which is
not installed: asking for it is an InvalidInputError saying so.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_color_lut, compress, convert_color_space, get_decoder
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    RLELossless,
)

from deid_core.errors import InvalidInputError

COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
PALETTE = "PALETTE COLOR"


@dataclass(frozen=True)
class Encoding:
    """A transfer syntax the writer can produce."""

    uid: UID
    lossy: bool
    #: value for Lossy Image Compression Method when lossy (PS3.3 C.7.6.1.1.5.1)
    method: str = ""


#: Names a route (or the CLI) uses for the output transfer syntax.
ENCODINGS: dict[str, Encoding] = {
    "explicit": Encoding(ExplicitVRLittleEndian, lossy=False),
    "implicit": Encoding(ImplicitVRLittleEndian, lossy=False),
    "rle": Encoding(RLELossless, lossy=False),
    "jpeg2000-lossless": Encoding(JPEG2000Lossless, lossy=False),
    "jpeg2000": Encoding(JPEG2000, lossy=True, method="ISO_15444_1"),
    "jpeg-baseline": Encoding(JPEGBaseline8Bit, lossy=True, method="ISO_10918_1"),
}

#: Source transfer syntaxes that are lossy whatever the attributes say.
_LOSSY_SOURCE_SYNTAXES = {JPEGBaseline8Bit, JPEGExtended12Bit}

#: Attributes that describe the old pixel data and would be wrong for the new one.
_STALE_PIXEL_KEYWORDS = (
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "PixelDataProviderURL",
)
_PALETTE_KEYWORDS = (
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "AlphaPaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "AlphaPaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "SegmentedAlphaPaletteColorLookupTableData",
    "PaletteColorLookupTableUID",
)


@dataclass(frozen=True)
class PixelFormat:
    """The Image Pixel module of a source instance, validated for editing."""

    rows: int
    columns: int
    frames: int
    photometric: str
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    transfer_syntax: UID
    #: the pixels have been lossy-compressed at some point in their life
    lossy: bool

    @property
    def max_value(self) -> int:
        return int((1 << self.bits_stored) - 1)


def pixel_format(ds: Dataset) -> PixelFormat:
    """Validate that `ds` holds an unsigned integer photograph this module can edit."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise InvalidInputError("floating-point pixel data is not a photograph; not editable")
        raise InvalidInputError("the instance has no Pixel Data (7FE0,0010)")
    missing = [
        kw
        for kw in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation")
        if ds.get(kw) in (None, "")
    ]
    if missing:
        raise InvalidInputError(f"Image Pixel module incomplete: {', '.join(missing)} missing")
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if photometric not in (*COLOUR, *MONOCHROME, PALETTE):
        raise InvalidInputError(
            f"Photometric Interpretation {photometric!r} is not supported for editing"
        )
    samples = int(ds.get("SamplesPerPixel", 3 if photometric in COLOUR else 1))
    if samples != (3 if photometric in COLOUR else 1):
        raise InvalidInputError(
            f"Samples per Pixel {samples} does not match Photometric Interpretation {photometric}"
        )
    if int(ds.get("PixelRepresentation", 0)) != 0:
        raise InvalidInputError(
            "signed pixel data (Pixel Representation 1) is not a photograph; not editable"
        )
    bits_allocated = int(ds.BitsAllocated)
    bits_stored = int(ds.get("BitsStored", bits_allocated))
    if bits_allocated not in (8, 16, 32) or not 1 < bits_stored <= bits_allocated:
        raise InvalidInputError(
            f"Bits Allocated {bits_allocated} / Bits Stored {bits_stored} not supported for editing"
        )
    rows, columns = int(ds.Rows), int(ds.Columns)
    if rows < 1 or columns < 1:
        raise InvalidInputError(f"empty image ({rows} rows, {columns} columns)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames < 1:
        raise InvalidInputError(f"Number of Frames {frames} is not valid")
    meta = getattr(ds, "file_meta", None)
    syntax = UID(str(meta.TransferSyntaxUID)) if meta and "TransferSyntaxUID" in meta else None
    if syntax is None:
        raise InvalidInputError("the instance has no Transfer Syntax UID in its file meta")
    lossy = str(ds.get("LossyImageCompression", "")).strip() == "01" or (
        syntax in _LOSSY_SOURCE_SYNTAXES
    )
    return PixelFormat(
        rows=rows,
        columns=columns,
        frames=frames,
        photometric=photometric,
        samples_per_pixel=samples,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        transfer_syntax=syntax,
        lossy=lossy,
    )


def _to_uint8(values: np.ndarray, max_value: int) -> np.ndarray:
    if max_value == 255 and values.dtype == np.uint8:
        return values
    scaled = np.rint(values.astype(np.float64) * (255.0 / max_value))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _from_uint8(values: np.ndarray, max_value: int, dtype: np.dtype) -> np.ndarray:
    if max_value == 255:
        return values.astype(dtype)
    scaled = np.rint(values.astype(np.float64) * (max_value / 255.0))
    return np.clip(scaled, 0, max_value).astype(dtype)


def read_frames_rgb(ds: Dataset) -> np.ndarray:
    """Every frame of a photographic instance as (frames, rows, columns, 3) uint8 RGB.

    Raises InvalidInputError (naming the transfer syntax, never a value from the dataset) when the
    pixel data is not an editable photograph or cannot be decoded."""
    fmt = pixel_format(ds)
    try:
        decoder = get_decoder(fmt.transfer_syntax)
        options: dict[str, Any] = {"as_rgb": True}
        arr, meta = decoder.as_array(ds, **options)
    except NotImplementedError as exc:
        raise InvalidInputError(
            f"no decoder is installed for transfer syntax {fmt.transfer_syntax.name}"
        ) from exc
    except Exception as exc:  # decoders raise many types on corrupt data
        raise InvalidInputError(
            f"pixel data in {fmt.transfer_syntax.name} could not be decoded ({type(exc).__name__})"
        ) from exc
    decoded_pi = str(meta.get("photometric_interpretation", fmt.photometric))
    if fmt.photometric in COLOUR and decoded_pi != "RGB":
        raise InvalidInputError(
            f"{fmt.photometric} pixel data in {fmt.transfer_syntax.name} was not converted to RGB "
            "by the installed decoder"
        )
    if fmt.frames == 1:
        arr = arr[np.newaxis]
    if fmt.photometric == PALETTE:
        try:
            rgb = apply_color_lut(arr, ds)
        except Exception as exc:
            raise InvalidInputError(
                f"the palette colour lookup table cannot be applied ({type(exc).__name__})"
            ) from exc
        lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return _to_uint8(rgb, (1 << lut_bits) - 1)
    if fmt.photometric in MONOCHROME:
        grey = arr.astype(np.int64) & fmt.max_value
        if fmt.photometric == "MONOCHROME1":
            grey = fmt.max_value - grey
        grey8 = _to_uint8(grey, fmt.max_value)
        return np.repeat(grey8[..., np.newaxis], 3, axis=-1)
    return _to_uint8(arr, fmt.max_value)


# --- writing ------------------------------------------------------------------------------------


def _output_photometric(fmt: PixelFormat, encoding: Encoding) -> str:
    if fmt.photometric in MONOCHROME:
        return fmt.photometric
    if fmt.photometric == PALETTE:
        return "RGB" if encoding.uid != JPEGBaseline8Bit else "YBR_FULL_422"
    if encoding.uid == JPEGBaseline8Bit:
        return "YBR_FULL_422"
    if encoding.uid in (JPEG2000, JPEG2000Lossless):
        return "RGB"
    if fmt.bits_allocated == 8 and fmt.photometric == "YBR_FULL":
        return "YBR_FULL"
    if (
        fmt.bits_allocated == 8
        and fmt.photometric == "YBR_FULL_422"
        and encoding.uid in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        and fmt.columns % 2 == 0
    ):
        return "YBR_FULL_422"
    return "RGB"


def _luma(frames: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma in 0..255 (float), how a grey photograph's edit is brought back to grey."""
    f = frames.astype(np.float64)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def _ybr_422_bytes(ybr: np.ndarray) -> bytes:
    """Pack YBR_FULL (F, R, C, 3) uint8 as native YBR_FULL_422: Y1 Y2 Cb Cr per pair of pixels,
    chroma averaged over the pair (PS3.3 C.7.6.3.1.2)."""
    y = ybr[..., 0]
    chroma = ybr[..., 1:].astype(np.uint16)
    pair = ((chroma[:, :, 0::2] + chroma[:, :, 1::2] + 1) // 2).astype(np.uint8)
    out = np.empty((*y.shape[:2], y.shape[2] // 2, 4), dtype=np.uint8)
    out[..., 0] = y[:, :, 0::2]
    out[..., 1] = y[:, :, 1::2]
    out[..., 2] = pair[..., 0]
    out[..., 3] = pair[..., 1]
    return out.tobytes()


def _jpeg_baseline_frames(values: np.ndarray, quality: int) -> list[bytes]:
    from PIL import Image

    frames: list[bytes] = []
    for frame in values:
        image = Image.fromarray(frame, mode="L" if frame.ndim == 2 else "RGB")
        buf = io.BytesIO()
        # subsampling=1 is 4:2:2, what YBR_FULL_422 says; no EXIF or other metadata is written.
        image.save(buf, format="JPEG", quality=quality, subsampling=1, optimize=False)
        frames.append(buf.getvalue())
    return frames


def _stored_values(frames: np.ndarray, fmt: PixelFormat, photometric: str, bits: int) -> np.ndarray:
    """Edited RGB uint8 frames at the output's bit depth: grey for MONOCHROME, else still RGB (the
    conversion to YBR, where wanted, happens in the encoding step)."""
    max_value = (1 << bits) - 1
    dtype = np.dtype({8: np.uint8, 16: np.uint16, 32: np.uint32}[_allocated_for(bits, fmt)])
    if photometric in MONOCHROME:
        grey = _luma(frames) * (max_value / 255.0)
        grey = np.clip(np.rint(grey), 0, max_value)
        if photometric == "MONOCHROME1":
            grey = max_value - grey
        return grey.astype(dtype)
    return _from_uint8(frames, max_value, dtype)


def _allocated_for(bits: int, fmt: PixelFormat) -> int:
    return 8 if bits <= 8 else max(16, fmt.bits_allocated)


def _append_multi(ds: Dataset, keyword: str, value: str) -> None:
    """Add one value to a multi-valued history attribute (ratios, methods), keeping the old ones."""
    existing = ds.get(keyword)
    if existing is None or existing == "":
        values: list[str] = []
    elif isinstance(existing, str | bytes) or not hasattr(existing, "__iter__"):
        values = [str(existing)]
    else:
        values = [str(v) for v in existing]
    values.append(value)
    setattr(ds, keyword, values if len(values) > 1 else values[0])


def write_derived_instance(
    source: Dataset,
    frames: np.ndarray,
    sop_instance_uid: str,
    *,
    derivation_description: str,
    encoding: str = "explicit",
    jpeg_quality: int = 90,
    j2k_psnr: float = 45.0,
) -> Dataset:
    """A new instance: `source`'s attributes with the edited `frames` (F, rows, columns, 3) uint8 as
    its pixels, marked as derived.

    - SOP Instance UID (and the file meta's Media Storage SOP Instance UID) become
      `sop_instance_uid`, which the caller takes from the keyed UID mapping;
    - Image Type becomes DERIVED\\SECONDARY (further values kept); `derivation_description` is
      added to Derivation Description;
    - Lossy Image Compression is 01 when the source ever was, or this encoding is, lossy; Lossy
      Image Compression Ratio and Method keep the source's history and gain this encoding's entry;
      a lossy encoding adds (113040, DCM, "Lossy Compression") to the Derivation Code Sequence;
    - size, photometric interpretation and bit depth follow the module docstring's policy.

    No other attribute is changed: metadata de-identification is the caller's separate step.
    Raises InvalidInputError for frames that do not fit the source, or an encoding that cannot
    hold it.
    """
    fmt = pixel_format(source)
    if encoding not in ENCODINGS:
        known = ", ".join(ENCODINGS)
        raise InvalidInputError(f"unknown output encoding {encoding!r}; expected one of: {known}")
    enc = ENCODINGS[encoding]
    expected = (fmt.frames, fmt.rows, fmt.columns, 3)
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.shape != expected:
        got = (getattr(frames, "shape", None), getattr(frames, "dtype", None))
        raise InvalidInputError(f"edited frames must be uint8 of shape {expected}, got {got}")
    uid = UID(sop_instance_uid)
    if not uid.is_valid:
        raise InvalidInputError("the new SOP Instance UID is not a valid UID")
    photometric = _output_photometric(fmt, enc)
    bits = 8 if fmt.photometric == PALETTE else fmt.bits_stored
    if enc.uid == JPEGBaseline8Bit and bits > 8:
        raise InvalidInputError(
            f"JPEG baseline holds 8-bit samples; this instance has {bits} bits stored: choose "
            "another encoding (explicit, rle, jpeg2000-lossless, jpeg2000)"
        )
    if photometric.startswith("YBR"):
        bits = 8
    if enc.uid in (JPEG2000, JPEG2000Lossless) and bits > 16:
        raise InvalidInputError(
            f"JPEG 2000 here holds at most 16-bit samples; this instance has {bits}: choose "
            "explicit or rle"
        )
    allocated = _allocated_for(bits, fmt)
    samples = 1 if photometric in MONOCHROME else 3

    ds = Dataset()
    for elem in source:
        if elem.keyword in ("PixelData", *_STALE_PIXEL_KEYWORDS):
            continue
        if photometric != PALETTE and elem.keyword in _PALETTE_KEYWORDS:
            continue
        ds.add(DataElement(elem.tag, elem.VR, copy.deepcopy(elem.value)))
    ds.file_meta = _file_meta(source, uid, enc.uid)
    ds.SOPInstanceUID = uid
    ds.Rows, ds.Columns = fmt.rows, fmt.columns
    if fmt.frames > 1 or "NumberOfFrames" in source:
        ds.NumberOfFrames = fmt.frames
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = allocated
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if samples == 3:
        ds.PlanarConfiguration = 0
    elif "PlanarConfiguration" in ds:
        del ds.PlanarConfiguration

    values = _stored_values(frames, fmt, photometric, bits)
    uncompressed_bytes = values.size * (allocated // 8)
    single = values[0] if fmt.frames == 1 else values
    if enc.uid != JPEGBaseline8Bit and photometric in ("YBR_FULL", "YBR_FULL_422"):
        values = convert_color_space(values, "RGB", "YBR_FULL", per_frame=True)
        single = values[0] if fmt.frames == 1 else values
    if enc.uid in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        raw = _ybr_422_bytes(values) if photometric == "YBR_FULL_422" else values.tobytes()
        if len(raw) % 2:
            raw += b"\x00"
        ds.PixelData = raw
        ds["PixelData"].VR = "OB" if allocated == 8 else "OW"
        compressed_bytes = len(raw)
    elif enc.uid == JPEGBaseline8Bit:
        fragments = _jpeg_baseline_frames(values, jpeg_quality)
        ds.PixelData = encapsulate(fragments)
        ds["PixelData"].VR = "OB"
        compressed_bytes = sum(len(f) for f in fragments)
    else:
        # Named plugins: GDCM's RLE encoder aborts the whole process (C++ terminate) on small
        # images, e.g. 3x3 RGB, instead of raising.
        options: dict[str, object] = {
            "generate_instance_uid": False,
            "encoding_plugin": "pydicom" if enc.uid == RLELossless else "pylibjpeg",
        }
        if enc.uid == JPEG2000:
            options["j2k_psnr"] = [j2k_psnr]
        try:
            compress(ds, enc.uid, single, **options)  # type: ignore[arg-type]
        except Exception as exc:
            raise InvalidInputError(
                f"encoding as {enc.uid.name} failed ({type(exc).__name__}): the encoder does not "
                f"accept {fmt.rows}x{fmt.columns} images of {samples} samples at {allocated} bits"
            ) from exc
        compressed_bytes = len(ds.PixelData)

    _image_type(ds)
    _derivation(ds, derivation_description, enc)
    lossy = fmt.lossy or enc.lossy
    ds.LossyImageCompression = "01" if lossy else "00"
    if enc.lossy:
        ratio = uncompressed_bytes / max(1, compressed_bytes)
        _append_multi(ds, "LossyImageCompressionRatio", f"{ratio:.2f}"[:16])
        _append_multi(ds, "LossyImageCompressionMethod", enc.method)
    elif not lossy:
        for kw in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if kw in ds:
                delattr(ds, kw)
    return ds


def _file_meta(source: Dataset, uid: UID, syntax: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    src_meta = getattr(source, "file_meta", None)
    sop_class = source.get("SOPClassUID") or (src_meta or {}).get("MediaStorageSOPClassUID")
    if sop_class:
        meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = syntax
    return meta


def _image_type(ds: Dataset) -> None:
    current = ds.get("ImageType")
    rest: list[str] = []
    if current is not None:
        values = list(current) if not isinstance(current, str) else [current]
        rest = [str(v) for v in values[2:]]
    ds.ImageType = ["DERIVED", "SECONDARY", *rest]


def _derivation(ds: Dataset, description: str, enc: Encoding) -> None:
    previous = str(ds.get("DerivationDescription", "") or "").strip()
    text = f"{previous}; {description}" if previous else description
    ds.DerivationDescription = text[:1024]
    if enc.lossy:
        item = Dataset()
        item.CodeValue = "113040"
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = "Lossy Compression"
        existing = list(ds.get("DerivationCodeSequence", []))
        ds.DerivationCodeSequence = DicomSequence([*existing, item])


def save_instance(ds: Dataset, target: str | Path | BinaryIO) -> None:
    """Write an instance made by `write_derived_instance` as a DICOM file (Part 10, with preamble
    and file meta), to a path or a binary file object."""
    ds.save_as(target if hasattr(target, "write") else str(target), enforce_file_format=True)
