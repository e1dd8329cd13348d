"""The lesion gate as the evaluation sees it: a mask for any image, a verdict on a pair of masks.

The evaluation judges every method, baselines included, with the route's own gate: "would the gate
have let this blurred photograph through?" is part of the answer. The original's mask is computed
once per photograph and reused for every method, because on a real route it costs a synthesis of a
healthy twin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from skimage import color
from skimage.filters import threshold_otsu

from deid_core.evaluation.imaging import fit_long_side, iou, resize_mask

#: Where a mask comes from: (H, W, 3) uint8 -> (H, W) bool, True = lesion.
MaskFunction = Callable[[np.ndarray], np.ndarray]

PASS = "pass"
REJECT = "reject"


@dataclass(frozen=True)
class Verdict:
    """The gate's answer for one de-identified image."""

    outcome: str  # PASS or REJECT
    reason: str | None  # short fixed vocabulary, None when passed
    iou: float  # lesion IoU between original and de-identified masks (NaN when both empty)


class LesionJudge(Protocol):
    """What the evaluation needs from a lesion gate."""

    #: A one-line description for the report (method and threshold).
    description: str

    def mask(self, image: np.ndarray) -> np.ndarray: ...

    def judge(self, mask_original: np.ndarray, mask_edited: np.ndarray) -> Verdict: ...


class ThresholdJudge:
    """A gate built from any mask function and an IoU threshold, with the rejection reasons of the
    design: nothing found in the original (IoU would be meaningless), the lesion vanished, or the
    masks overlap too little."""

    def __init__(
        self, mask_function: MaskFunction, threshold: float = 0.67, name: str = ""
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"the IoU threshold must lie in [0, 1], got {threshold}")
        self._mask = mask_function
        self.threshold = threshold
        label = name or getattr(mask_function, "__name__", type(mask_function).__name__)
        self.description = f"{label}, IoU >= {threshold:g}"

    def mask(self, image: np.ndarray) -> np.ndarray:
        return np.asarray(self._mask(image), dtype=bool)

    def judge(self, mask_original: np.ndarray, mask_edited: np.ndarray) -> Verdict:
        value = iou(mask_original, mask_edited)
        if not mask_original.any():
            return Verdict(REJECT, "no_lesion_in_original", value)
        if not mask_edited.any():
            return Verdict(REJECT, "lesion_vanished", value)
        if value < self.threshold:
            return Verdict(REJECT, "iou_below_threshold", value)
        return Verdict(PASS, None, value)


def otsu_redness_mask(image: np.ndarray) -> np.ndarray:
    """The naive lesion finder of ``shared/data/lesions/ASTAR_BASELINE.txt``: CIELAB a* above its
    Otsu threshold, on a copy of at most 512 px, scaled back with nearest neighbour.

    A reference point, not the gate: it is what a mask must beat, and it lets the evaluation be run
    (and its expert-mask figures be checked against that file) without a model for healthy twins.
    """
    small = fit_long_side(image, 512)
    a = color.rgb2lab(small)[..., 1]
    if np.ptp(a) == 0:
        return np.zeros(image.shape[:2], dtype=bool)
    return resize_mask(a > threshold_otsu(a), image.shape[:2])
