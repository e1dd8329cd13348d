"""The pathology gate: the lesion must survive de-identification.

The gate finds the lesion in the original photograph and in its de-identified version and compares
the masks. Outcomes, checked in this order:

1. either mask covers more than `unreliable_fraction` of the image -> ``lesion_mask_unreliable``
   (a mask that finds everything measures nothing);
2. both masks empty -> ``no_lesion_found``, forwarded (nothing to protect, but flagged);
3. a lesion in the original and (almost) none after -> ``lesion_vanished``;
4. IoU below `iou_threshold` -> ``lesion_iou_below_threshold`` (also a lesion that *appeared*);
5. otherwise ``accepted``.

Rejections carry the values of `gateway.events.QuarantineReason`; the gateway quarantines them with
the figures and a QA panel (`deid_core.qa_panel`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from deid_core.errors import ConfigError, InvalidInputError
from deid_core.lesion.image import check_rgb
from deid_core.lesion.overlap import iou as mask_iou
from deid_core.lesion.skin import SkinRelativeParams, skin_relative_mask
from deid_core.lesion.twin import TwinGenerator, TwinMaskParams, healthy_twins, twin_mask


class GateMethod(StrEnum):
    """How the lesion is found."""

    TWIN = "twin"
    SYNTHESIS_FREE = "synthesis_free"


class GateOutcome(StrEnum):
    """The gate's answer; rejection values equal `gateway.events.QuarantineReason` values."""

    ACCEPTED = "accepted"
    NO_LESION_FOUND = "no_lesion_found"
    LESION_VANISHED = "lesion_vanished"
    LESION_IOU_BELOW_THRESHOLD = "lesion_iou_below_threshold"
    LESION_MASK_UNRELIABLE = "lesion_mask_unreliable"

    @property
    def forwards(self) -> bool:
        return self in (GateOutcome.ACCEPTED, GateOutcome.NO_LESION_FOUND)


@dataclass(frozen=True)
class LesionGateParams:
    method: GateMethod = GateMethod.TWIN
    #: The seed paper reports lesion IoU stability above 0.67 for its edits.
    iou_threshold: float = 0.67
    #: A mask larger than this share of the image is not a lesion finding.
    unreliable_fraction: float = 0.9
    #: "Vanished": the de-identified mask is smaller than this share of the original's.
    vanished_ratio: float = 0.1
    #: Longer side of the healthy twins (method "twin").
    twin_long_side: int = 512
    twin: TwinMaskParams = field(default_factory=TwinMaskParams)
    skin: SkinRelativeParams = field(default_factory=SkinRelativeParams)
    #: With method "twin": also compute the synthesis-free mask of the original and report how
    #: well the two methods agree (does not change the outcome).
    cross_check: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", GateMethod(self.method))
        if not 0 < self.iou_threshold <= 1:
            raise ValueError("iou_threshold must be in (0, 1]")
        if not 0 < self.unreliable_fraction <= 1:
            raise ValueError("unreliable_fraction must be in (0, 1]")
        if not 0 <= self.vanished_ratio < 1:
            raise ValueError("vanished_ratio must be in [0, 1)")
        if self.twin_long_side < 64:
            raise ValueError("twin_long_side must be at least 64")


@dataclass(frozen=True, eq=False)
class GateResult:
    """What the gate decided and why. Masks are boolean arrays of the original's height and
    width; `figures()` is the JSON-safe part (no masks, no pixel values)."""

    outcome: GateOutcome
    method: GateMethod
    #: None when there was nothing to compare (both masks empty).
    iou: float | None
    iou_threshold: float
    original_mask: np.ndarray
    candidate_mask: np.ndarray
    #: Agreement of the twin and synthesis-free masks of the original (cross_check only).
    cross_check_iou: float | None = None

    @property
    def accepted(self) -> bool:
        """Whether the instance may be forwarded (also true for "no lesion found")."""
        return self.outcome.forwards

    @property
    def reason(self) -> str:
        return self.outcome.value

    @property
    def quarantine_reason(self) -> str | None:
        """The `QuarantineReason` value for a rejection, None when forwarded."""
        return None if self.accepted else self.outcome.value

    @property
    def image_area(self) -> int:
        return int(self.original_mask.size)

    @property
    def original_area(self) -> int:
        return int(np.count_nonzero(self.original_mask))

    @property
    def candidate_area(self) -> int:
        return int(np.count_nonzero(self.candidate_mask))

    @property
    def original_fraction(self) -> float:
        return self.original_area / self.image_area

    @property
    def candidate_fraction(self) -> float:
        return self.candidate_area / self.image_area

    def figures(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "accepted": self.accepted,
            "method": self.method.value,
            "iou": None if self.iou is None else round(self.iou, 4),
            "iou_threshold": self.iou_threshold,
            "original_area_px": self.original_area,
            "candidate_area_px": self.candidate_area,
            "original_area_fraction": round(self.original_fraction, 5),
            "candidate_area_fraction": round(self.candidate_fraction, 5),
            "image_area_px": self.image_area,
            "cross_check_iou": None
            if self.cross_check_iou is None
            else round(self.cross_check_iou, 4),
        }

    def details(self) -> dict[str, float | int | str]:
        """`figures()` without empty values and flags: the shape a pixel step's
        `PixelAccepted.details` / `PixelRejected.details` takes."""
        return {
            k: v for k, v in self.figures().items() if v is not None and not isinstance(v, bool)
        }

    def summary(self) -> str:
        iou_text = "n/a" if self.iou is None else f"{self.iou:.3f}"
        return (
            f"{self.outcome.value}: IoU {iou_text} (threshold {self.iou_threshold:.2f}), "
            f"lesion {100 * self.original_fraction:.1f}% of the original, "
            f"{100 * self.candidate_fraction:.1f}% of the de-identified image ({self.method.value})"
        )


def decide(
    original_mask: np.ndarray,
    candidate_mask: np.ndarray,
    params: LesionGateParams,
    cross_check_iou: float | None = None,
) -> GateResult:
    """The outcome for two masks (see the module docstring for the order of the rules)."""
    o = np.asarray(original_mask, dtype=bool)
    c = np.asarray(candidate_mask, dtype=bool)
    if o.shape != c.shape or o.ndim != 2:
        raise InvalidInputError(f"masks must be 2-D and equal in shape, got {o.shape}, {c.shape}")
    area_o, area_c = int(np.count_nonzero(o)), int(np.count_nonzero(c))
    iou: float | None = None if area_o == 0 and area_c == 0 else mask_iou(o, c)
    limit = params.unreliable_fraction * o.size
    if area_o > limit or area_c > limit:
        outcome = GateOutcome.LESION_MASK_UNRELIABLE
    elif iou is None:
        outcome = GateOutcome.NO_LESION_FOUND
    elif area_o > 0 and area_c < params.vanished_ratio * area_o:
        outcome = GateOutcome.LESION_VANISHED
    elif iou < params.iou_threshold:
        outcome = GateOutcome.LESION_IOU_BELOW_THRESHOLD
    else:
        outcome = GateOutcome.ACCEPTED
    return GateResult(
        outcome=outcome,
        method=params.method,
        iou=iou,
        iou_threshold=params.iou_threshold,
        original_mask=o,
        candidate_mask=c,
        cross_check_iou=cross_check_iou,
    )


class LesionGate:
    """Check that a de-identified photograph kept the original's lesion.

    One instance per route: construct it with the route's parameters and, for method "twin", the
    healthy-twin generator (e.g. ``FlowEditor(model, params, sick_prompt, healthy_prompt).edit``).
    `check` is a pure function of its inputs: the same images and seed give the same result.
    """

    def __init__(
        self,
        params: LesionGateParams | None = None,
        twin_generator: TwinGenerator | None = None,
    ) -> None:
        self.params = params or LesionGateParams()
        if self.params.method is GateMethod.TWIN and twin_generator is None:
            raise ConfigError(
                'lesion gate method "twin" needs a healthy-twin generator (a model); '
                'use method "synthesis_free" where there is none'
            )
        self.twin_generator = twin_generator

    def masks(
        self, original: np.ndarray, candidate: np.ndarray, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Lesion masks of both images at the original's size. Both twins use `seed`, so the
        noise is the same and only the images differ."""
        check_rgb(original, "original")
        check_rgb(candidate, "candidate")
        if original.shape != candidate.shape:
            raise InvalidInputError(
                f"candidate: {candidate.shape[1]}x{candidate.shape[0]} differs from the "
                f"original's {original.shape[1]}x{original.shape[0]}"
            )
        if self.params.method is GateMethod.SYNTHESIS_FREE:
            return (
                skin_relative_mask(original, self.params.skin),
                skin_relative_mask(candidate, self.params.skin),
            )
        assert self.twin_generator is not None
        twin_o, twin_c = healthy_twins(
            self.twin_generator, [original, candidate], [seed, seed], self.params.twin_long_side
        )
        return (
            twin_mask(original, twin_o, self.params.twin),
            twin_mask(candidate, twin_c, self.params.twin),
        )

    def check(self, original: np.ndarray, candidate: np.ndarray, seed: int = 0) -> GateResult:
        """Find the lesion in both images and decide."""
        mask_o, mask_c = self.masks(original, candidate, seed)
        agreement = None
        if self.params.cross_check and self.params.method is GateMethod.TWIN:
            agreement = mask_iou(mask_o, skin_relative_mask(original, self.params.skin))
        return decide(mask_o, mask_c, self.params, agreement)
