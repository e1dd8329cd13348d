"""Small image operations shared by the evaluation: working-size copies, CIELAB, IoU.

Every figure except the gate's own IoU is measured on a copy scaled to at most a fixed long side
(512 px by default): descriptors and SSIM need no more, and a 2592 px dermoscopy image would
otherwise cost seconds per figure on a two-core machine.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from skimage import color

from deid_core.errors import InvalidInputError


def check_rgb(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Refuse anything but an (H, W, 3) uint8 array, naming what was wrong."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise InvalidInputError(f"{what} must be an (H, W, 3) RGB array, got shape {shape}")
    if image.dtype != np.uint8:
        raise InvalidInputError(f"{what} must be uint8, got {image.dtype}")
    if image.shape[0] < 8 or image.shape[1] < 8:
        raise InvalidInputError(f"{what} is too small ({image.shape[1]}x{image.shape[0]} px)")
    return image


def fit_long_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """A copy scaled down (never up) so that its long side is at most `long_side`."""
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    pil = Image.fromarray(image)
    return np.asarray(pil.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0))


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a boolean mask to (H, W): no new labels at the boundary."""
    if mask.shape[:2] == shape:
        return mask.astype(bool, copy=False)
    pil = Image.fromarray(mask.astype(np.uint8) * 255)
    out = pil.resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    return np.asarray(out) > 127


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks; NaN when both are empty (nothing to compare)."""
    if a.shape != b.shape:
        b = resize_mask(b, a.shape)
    union = np.logical_or(a, b).sum()
    if union == 0:
        return float("nan")
    return float(np.logical_and(a, b).sum() / union)


class WorkingCopy:
    """A photograph at working size with its CIELAB and grey versions, computed once and shared
    by the attack's descriptors and the fidelity figures."""

    __slots__ = ("grey", "lab", "rgb")

    def __init__(self, rgb: np.ndarray) -> None:
        self.rgb = check_rgb(rgb)
        self.lab = color.rgb2lab(rgb)
        self.grey = color.rgb2gray(rgb)

    @classmethod
    def of(cls, image: np.ndarray, long_side: int) -> WorkingCopy:
        return cls(fit_long_side(check_rgb(image), long_side))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rgb.shape[0], self.rgb.shape[1])
