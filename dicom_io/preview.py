"""A picture of a received instance for a person to look at (the review station), and a summary
of what kind of object it is.

Not for processing: the first frame only, scaled to 8 bits for display — grey images through the
modality and VOI LUTs (the instance's window, else its full range; MONOCHROME1 inverted), colour
images as RGB (YBR converted, palettes applied). Any failure to decode is an InvalidInputError
naming the reason's type, never a value from the data set.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.uid import UID

from deid_core.errors import InvalidInputError


def _grey_to_uint8(ds: pydicom.Dataset, frame: np.ndarray) -> np.ndarray:
    values = apply_modality_lut(frame, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds, index=0)
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        scaled = 255.0 - scaled
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _to_rgb_uint8(ds: pydicom.Dataset, frame: np.ndarray) -> np.ndarray:
    if frame.dtype != np.uint8:
        bits = int(ds.get("BitsStored", 8) or 8)
        frame = np.clip(frame.astype(np.float64) * 255.0 / ((1 << bits) - 1), 0, 255)
        frame = np.rint(frame).astype(np.uint8)
    return frame


def render_png(data: bytes, max_side: int | None = 1600) -> bytes:
    """The instance's first frame as a PNG, at most `max_side` pixels on its longer side."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        if "PixelData" not in ds:
            raise InvalidInputError("the instance has no pixel data")
        photometric = str(ds.get("PhotometricInterpretation", ""))
        pixels = ds.pixel_array
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        frame = pixels[0] if frames > 1 else pixels
        if photometric == "PALETTE COLOR":
            frame = apply_color_lut(frame, ds)
            image = _to_rgb_uint8(ds, frame)
        elif int(ds.get("SamplesPerPixel", 1) or 1) == 3:
            image = _to_rgb_uint8(ds, frame)
        else:
            image = _grey_to_uint8(ds, frame)
        picture = Image.fromarray(image)
        if max_side is not None:
            picture.thumbnail((max_side, max_side))
        out = io.BytesIO()
        picture.save(out, format="PNG")
        return out.getvalue()
    except InvalidInputError:
        raise
    except Exception as exc:
        raise InvalidInputError(f"the pixels cannot be shown ({type(exc).__name__})") from None


@dataclass(frozen=True)
class InstanceSummary:
    """What kind of object an instance is — technical attributes only, never identifying ones —
    so that a reviewer knows what they are deciding about (and which route could take it)."""

    sop_class: str
    modality: str
    has_pixels: bool
    rows: int
    columns: int
    frames: int
    photometric: str
    transfer_syntax: str


_CODE = re.compile(r"^[A-Z0-9_ ]{1,16}$")


def _code(ds: pydicom.Dataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    return value if _CODE.match(value) else ""


def summarize(path: Path) -> InstanceSummary | None:
    """None when the file cannot be read as DICOM. Large values (pixels) are not loaded."""
    try:
        ds = pydicom.dcmread(path, defer_size=1024)
        uid = UID(str(ds.get("SOPClassUID", "")))
        meta = getattr(ds, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID") if meta is not None else None
        return InstanceSummary(
            sop_class=uid.name if uid.is_valid else "",
            modality=_code(ds, "Modality"),
            has_pixels="PixelData" in ds or "FloatPixelData" in ds,
            rows=int(ds.get("Rows", 0) or 0),
            columns=int(ds.get("Columns", 0) or 0),
            frames=int(ds.get("NumberOfFrames", 1) or 1),
            photometric=_code(ds, "PhotometricInterpretation"),
            transfer_syntax=UID(str(syntax)).name if syntax else "",
        )
    except Exception:
        return None
