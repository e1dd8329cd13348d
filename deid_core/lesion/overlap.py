"""Overlap of two binary masks."""

from __future__ import annotations

import numpy as np


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    return a, b


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union. Two empty masks agree perfectly (1.0): callers that must treat
    "nothing found twice" differently (the gate does) check emptiness first."""
    a, b = _pair(a, b)
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(a & b)) / union


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient (F1 of the pixels); 1.0 for two empty masks, as for `iou`."""
    a, b = _pair(a, b)
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return 1.0
    return 2 * int(np.count_nonzero(a & b)) / total
