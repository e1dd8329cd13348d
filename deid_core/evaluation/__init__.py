"""Evidence before deployment: how well photograph de-identification hides who a photograph came
from (a linkage attack) and how well it keeps the pathology (lesion IoU, colour, SSIM), measured
side by side with the classic baselines (no transform, blur, pixelation).

`evaluate(photos, methods, judge)` does the measuring; the gateway reads folders and writes the
report.
"""

from deid_core.evaluation.fidelity import Fidelity, measure_fidelity
from deid_core.evaluation.imaging import fit_long_side, iou
from deid_core.evaluation.judge import (
    PASS,
    REJECT,
    GateJudge,
    LesionJudge,
    ThresholdJudge,
    Verdict,
    otsu_redness_mask,
)
from deid_core.evaluation.linkage import ATTACKS, FUSED, AttackSettings, describe
from deid_core.evaluation.methods import (
    BASELINE,
    DEFAULT_BASELINES,
    DEIDENTIFICATION,
    GaussianBlur,
    Method,
    Pixelation,
    Transform,
    baseline,
    no_transform,
)
from deid_core.evaluation.study import (
    ERROR,
    EvaluationResult,
    EvaluationSettings,
    ExamplePanel,
    ImageRecord,
    Photo,
    PhotoRecord,
    evaluate,
    strongest_attack,
)

__all__ = [
    "ATTACKS",
    "BASELINE",
    "DEFAULT_BASELINES",
    "DEIDENTIFICATION",
    "ERROR",
    "FUSED",
    "PASS",
    "REJECT",
    "AttackSettings",
    "EvaluationResult",
    "EvaluationSettings",
    "ExamplePanel",
    "Fidelity",
    "GateJudge",
    "GaussianBlur",
    "ImageRecord",
    "LesionJudge",
    "Method",
    "Photo",
    "PhotoRecord",
    "Pixelation",
    "ThresholdJudge",
    "Transform",
    "Verdict",
    "baseline",
    "describe",
    "evaluate",
    "fit_long_side",
    "iou",
    "measure_fidelity",
    "no_transform",
    "otsu_redness_mask",
    "strongest_attack",
]
