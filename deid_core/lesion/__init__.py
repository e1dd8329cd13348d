"""Lesion masks and the pathology gate for de-identified photographs.

A photograph edited to remove identity is only useful if the pathology survived. The gate finds the
lesion in the original and in the de-identified image and compares the two masks (IoU). Two ways to
find a lesion:

- ``twin`` (segment-by-synthesis): a generative model makes a counterfactual *healthy twin* of the
  image; where CIELAB a* (redness) falls from image to twin is the lesion (`twin_mask`).
- ``synthesis_free``: where the colour departs from the surrounding skin, estimated robustly from
  the image alone (`skin_relative_mask`); for sites without a GPU and as a cross-check.
"""

from deid_core.lesion.cleanup import MaskCleanup, clean_mask
from deid_core.lesion.gate import (
    GateMethod,
    GateOutcome,
    GateResult,
    LesionGate,
    LesionGateParams,
)
from deid_core.lesion.image import check_rgb, resize_mask
from deid_core.lesion.overlap import dice, iou
from deid_core.lesion.skin import SkinRelativeParams, skin_relative_mask, skin_relative_score
from deid_core.lesion.synthesis import (
    DEFAULT_HEALTHY_PROMPT,
    DEFAULT_LESION_PROMPT,
    flowedit_twins,
)
from deid_core.lesion.twin import (
    TwinGenerator,
    TwinMaskParams,
    healthy_twins,
    twin_mask,
)

__all__ = [
    "DEFAULT_HEALTHY_PROMPT",
    "DEFAULT_LESION_PROMPT",
    "GateMethod",
    "GateOutcome",
    "GateResult",
    "LesionGate",
    "LesionGateParams",
    "MaskCleanup",
    "SkinRelativeParams",
    "TwinGenerator",
    "TwinMaskParams",
    "check_rgb",
    "clean_mask",
    "dice",
    "flowedit_twins",
    "healthy_twins",
    "iou",
    "resize_mask",
    "skin_relative_mask",
    "skin_relative_score",
    "twin_mask",
]
