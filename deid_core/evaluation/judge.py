"""The lesion gate as the evaluation sees it: a mask for any image, a verdict on a pair of masks.

The evaluation judges every method, baselines included, with the route's own gate: "would the gate
have let this blurred photograph through?" is part of the answer. The original's mask is computed
once per photograph and reused for every method, because with the twin method it costs a synthesis
of a healthy twin. Verdicts follow the gate's rules and reasons (`deid_core.lesion.gate.decide`),
whatever finds the masks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from skimage import color
from skimage.filters import threshold_otsu

from deid_core.evaluation.imaging import fit_long_side, resize_mask
from deid_core.lesion import (
    GateMethod,
    GateOutcome,
    GateResult,
    LesionGate,
    LesionGateParams,
    healthy_twins,
    skin_relative_mask,
    twin_mask,
)
from deid_core.lesion.gate import decide

#: Where a mask comes from: (H, W, 3) uint8 -> (H, W) bool, True = lesion.
MaskFunction = Callable[[np.ndarray], np.ndarray]

PASS = "pass"
REJECT = "reject"


@dataclass(frozen=True)
class Verdict:
    """The gate's answer for one de-identified image."""

    outcome: str  # PASS or REJECT
    #: The gate's reason: a rejection, or a flag on a pass ("no_lesion_found"); None when plainly
    #: accepted.
    reason: str | None
    iou: float  # lesion IoU between original and de-identified masks (NaN when both empty)


class LesionJudge(Protocol):
    """What the evaluation needs from a lesion gate."""

    #: A one-line description for the report (method and threshold).
    description: str
    #: The IoU the gate requires (drawn on the trade-off plot).
    threshold: float

    def mask(self, image: np.ndarray, seed: int) -> np.ndarray: ...

    def judge(self, mask_original: np.ndarray, mask_edited: np.ndarray) -> Verdict: ...


def _verdict(result: GateResult) -> Verdict:
    reason = None if result.outcome is GateOutcome.ACCEPTED else result.reason
    value = float("nan") if result.iou is None else float(result.iou)
    return Verdict(PASS if result.accepted else REJECT, reason, value)


class GateJudge:
    """The route's `LesionGate` (twin or synthesis-free), one image at a time. A twin mask uses the
    photograph's seed for the original and for every output, as the gate uses one seed for both
    twins, so only the images differ."""

    def __init__(self, gate: LesionGate, note: str = "") -> None:
        self.gate = gate
        params = gate.params
        self.threshold = params.iou_threshold
        self.description = f"lesion gate ({params.method.value}), IoU >= {params.iou_threshold:g}"
        if note:
            self.description += f"; {note}"

    def mask(self, image: np.ndarray, seed: int) -> np.ndarray:
        params = self.gate.params
        if params.method is GateMethod.SYNTHESIS_FREE:
            return skin_relative_mask(image, params.skin)
        assert self.gate.twin_generator is not None
        (twin,) = healthy_twins(self.gate.twin_generator, [image], [seed], params.twin_long_side)
        return twin_mask(image, twin, params.twin)

    def judge(self, mask_original: np.ndarray, mask_edited: np.ndarray) -> Verdict:
        return _verdict(decide(mask_original, mask_edited, self.gate.params))


class ThresholdJudge:
    """Any mask function under the gate's rules (mask unreliable, no lesion found, vanished, IoU
    below the threshold): for reference masks and for tests."""

    def __init__(
        self, mask_function: MaskFunction, threshold: float = 0.67, name: str = ""
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"the IoU threshold must lie in (0, 1], got {threshold}")
        self._mask = mask_function
        self._params = LesionGateParams(method=GateMethod.SYNTHESIS_FREE, iou_threshold=threshold)
        self.threshold = threshold
        label = name or getattr(mask_function, "__name__", type(mask_function).__name__)
        self.description = f"{label}, IoU >= {threshold:g}"

    def mask(self, image: np.ndarray, seed: int) -> np.ndarray:
        return np.asarray(self._mask(image), dtype=bool)

    def judge(self, mask_original: np.ndarray, mask_edited: np.ndarray) -> Verdict:
        return _verdict(decide(mask_original, mask_edited, self._params))


def otsu_redness_mask(image: np.ndarray) -> np.ndarray:
    """The naive lesion finder of ``shared/data/lesions/ASTAR_BASELINE.txt``: CIELAB a* above its
    Otsu threshold, on a copy of at most 512 px, scaled back with nearest neighbour.

    A reference point, not the gate: the floor a mask must beat, and a check of the evaluation's
    expert-mask figures against that file.
    """
    small = fit_long_side(image, 512)
    a = color.rgb2lab(small)[..., 1]
    if np.ptp(a) == 0:
        return np.zeros(image.shape[:2], dtype=bool)
    return resize_mask(a > threshold_otsu(a), image.shape[:2])
