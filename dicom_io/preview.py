"""A picture of a received instance for a person to look at (the review station).

Not for processing: the first frame only, scaled to 8 bits for display — grey images through the
modality and VOI LUTs (the instance's window, else its full range; MONOCHROME1 inverted), colour
images as RGB (YBR converted, palettes applied). Any failure to decode is an InvalidInputError
naming the reason's type, never a value from the data set.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

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
