"""Image plumbing shared by the mask methods: input checks, working resolution, CIELAB."""

from __future__ import annotations

import numpy as np
from PIL import Image
from skimage.color import rgb2lab

from deid_core.errors import InvalidInputError

#: Smaller images carry too little skin around a lesion to say anything.
MIN_SIDE = 16


def check_rgb(image: np.ndarray, label: str = "image") -> np.ndarray:
    """Accept only what the pixel step hands over: uint8 RGB of shape (H, W, 3).

    `label` names the image in the error ("original", "candidate"), never a file or patient.
    """
    if not isinstance(image, np.ndarray):
        raise InvalidInputError(f"{label}: expected a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInputError(f"{label}: expected shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise InvalidInputError(f"{label}: expected uint8 pixels, got {image.dtype}")
    if min(image.shape[:2]) < MIN_SIDE:
        raise InvalidInputError(
            f"{label}: {image.shape[1]}x{image.shape[0]} is too small (at least {MIN_SIDE} px)"
        )
    return image


def working_size(shape: tuple[int, ...], long_side: int) -> tuple[int, int]:
    """(height, width) with the longer side at most `long_side`, aspect kept; never upscales."""
    h, w = int(shape[0]), int(shape[1])
    scale = min(1.0, long_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def downscale(image: np.ndarray, long_side: int) -> np.ndarray:
    """Area-averaged downscale of uint8 RGB (Pillow's box filter: fast, no aliasing)."""
    h, w = working_size(image.shape, long_side)
    if (h, w) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BOX))


def resize_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Bring a boolean mask to (height, width) = shape[:2]; bilinear then 50 %, so upscaled edges
    stay smooth instead of blocky."""
    h, w = int(shape[0]), int(shape[1])
    if mask.shape == (h, w):
        return mask.astype(bool, copy=False)
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR)) >= 128


def to_lab(image: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of uint8 RGB taken as sRGB: L* 0-100, a* (green-red), b* (blue-yellow)."""
    return np.asarray(rgb2lab(image), dtype=np.float64)
