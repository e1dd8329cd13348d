"""Morphological clean-up of a raw thresholded mask."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class MaskCleanup:
    """Sizes are relative to the image, so the same settings serve any working resolution."""

    #: Radius of the opening (removes speckle, hair) and closing (joins a lesion's broken rim),
    #: as a fraction of the longer side.
    radius_fraction: float = 1 / 128
    #: Components smaller than this fraction of the image are noise, not a lesion.
    min_object_fraction: float = 0.002
    #: A lesion with a pale centre (scale, ulcer floor) is still one lesion.
    fill_holes: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.radius_fraction < 0.25:
            raise ValueError("radius_fraction must be in [0, 0.25)")
        if not 0 <= self.min_object_fraction < 1:
            raise ValueError("min_object_fraction must be in [0, 1)")


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return np.asarray(x * x + y * y <= radius * radius)


def clean_mask(mask: np.ndarray, params: MaskCleanup | None = None) -> np.ndarray:
    """Opening, closing, small-object removal and hole filling, in that order."""
    params = params or MaskCleanup()
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return m.copy()
    radius = round(max(m.shape) * params.radius_fraction)
    if radius >= 1:
        disk = _disk(radius)
        m = ndi.binary_opening(m, structure=disk)
        # Pad so that closing does not erode what touches the image edge.
        padded = np.pad(m, radius, mode="edge")
        m = ndi.binary_closing(padded, structure=disk)[radius:-radius, radius:-radius]
    min_size = max(1, int(params.min_object_fraction * m.size))
    labels, count = ndi.label(m)
    if count:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= min_size
        keep[0] = False
        m = keep[labels]
    if params.fill_holes:
        m = ndi.binary_fill_holes(m)
    return np.asarray(m, dtype=bool)
