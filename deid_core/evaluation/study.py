"""One evaluation: every method applied to every photograph, judged by the gate, measured for
fidelity, then attacked for linkage. Pure computation over arrays; reading folders and writing the
report belong to the gateway.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from deid_core.errors import DeidGatewayError, InvalidInputError
from deid_core.evaluation.fidelity import NAN, Fidelity, measure_fidelity
from deid_core.evaluation.imaging import WorkingCopy, check_rgb, iou, resize_mask
from deid_core.evaluation.judge import PASS, LesionJudge, Verdict
from deid_core.evaluation.linkage import (
    ATTACKS,
    FUSED,
    AttackSettings,
    ImageDescriptors,
    Ranking,
    describe,
    fuse,
    rank_true_matches,
    similarity_matrices,
    wilson_interval,
)
from deid_core.evaluation.methods import Method

ERROR = "error"


@dataclass(frozen=True)
class Photo:
    """One photograph under evaluation. `id` is what the report prints: never a file name, which
    may carry a patient's name."""

    id: str
    image: np.ndarray
    seed: int
    #: Expert lesion mask at the image's size (True = lesion), when the site has one.
    expert_mask: np.ndarray | None = None


@dataclass(frozen=True)
class EvaluationSettings:
    #: Long side of the working copy used for descriptors, colour and SSIM.
    working_side: int = 512
    #: How many photographs get an example panel (0: none; the panels show the originals).
    examples: int = 4
    attack: AttackSettings = field(default_factory=AttackSettings)


@dataclass
class PhotoRecord:
    """Figures of a photograph that do not depend on the method: how well the gate's mask finds
    the lesion at all."""

    photo: str
    height: int
    width: int
    has_expert_mask: bool
    lesion_area_fraction: float  # of the gate's mask of the original
    expert_iou_original: float  # gate's mask of the original vs expert (NaN without expert)
    mask_seconds: float


@dataclass
class ImageRecord:
    """Figures of one (photograph, method) pair."""

    photo: str
    method: str
    outcome: str  # pass, reject or error
    reason: str | None
    iou_stability: float = NAN
    expert_iou: float = NAN  # gate's mask of the de-identified image vs expert
    delta_e00: float = NAN
    delta_a: float = NAN
    ssim_lesion: float = NAN
    ssim_rest: float = NAN
    ssim_image: float = NAN
    transform_seconds: float = NAN
    gate_seconds: float = NAN
    #: Linkage, filled after all photographs are done: mid-rank of the true original per attack
    #: (1 = found first) and the random-tie top-1 / top-5 hit probabilities.
    rank: dict[str, float] = field(default_factory=dict)
    top1: dict[str, float] = field(default_factory=dict)
    top5: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ExamplePanel:
    """Working-size pictures for the report's grid of example panels."""

    photo: str
    original: np.ndarray
    mask_original: np.ndarray
    expert_mask: np.ndarray | None
    edited: dict[str, np.ndarray]
    mask_edited: dict[str, np.ndarray]


@dataclass
class EvaluationResult:
    methods: list[Method]
    photos: list[PhotoRecord]
    images: list[ImageRecord]
    #: Per method name: figure name -> value (every figure the report prints).
    summary: dict[str, dict[str, float]]
    #: Per method name: rejection reason (or error type) -> count.
    rejections: dict[str, dict[str, int]]
    #: Per method name: reason a passed image was flagged with (e.g. no_lesion_found) -> count.
    flags: dict[str, dict[str, int]]
    #: Figures of the run as a whole (mask method vs expert, counts).
    overall: dict[str, float]
    examples: list[ExamplePanel]
    judge: str
    #: The gate's IoU threshold, when the judge has one (drawn on the trade-off plot).
    gate_threshold: float
    settings: EvaluationSettings

    def records(self, method: str) -> list[ImageRecord]:
        return [r for r in self.images if r.method == method]


#: Called once per (photograph, method) pair done, with a short description of what was done.
Progress = Callable[[str], None]


def evaluate(
    photos: Sequence[Photo],
    methods: Sequence[Method],
    judge: LesionJudge,
    settings: EvaluationSettings | None = None,
    progress: Progress | None = None,
) -> EvaluationResult:
    """Apply every method to every photograph and measure privacy and fidelity.

    Photographs are taken one at a time (a lazy sequence keeps only one full-size image in memory);
    only working-size copies of the first few are kept, for the example panels.
    """
    settings = settings or EvaluationSettings()
    if not methods:
        raise ValueError("no method to evaluate")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    report = progress or (lambda _what: None)

    photo_records: list[PhotoRecord] = []
    image_records: list[ImageRecord] = []
    originals: list[ImageDescriptors] = []
    edited_desc: dict[str, list[ImageDescriptors | None]] = {m.name: [] for m in methods}
    examples: list[ExamplePanel] = []

    for index, photo in enumerate(photos):
        image = check_rgb(photo.image, f"photograph {photo.id}")
        expert = _expert_mask(photo, image.shape[:2])
        start = time.perf_counter()
        mask_o = judge.mask(image, photo.seed)
        mask_seconds = time.perf_counter() - start
        _check_mask(mask_o, image.shape[:2], photo.id)
        small_o = WorkingCopy.of(image, settings.working_side)
        desc_o = describe(small_o, settings.attack)
        originals.append(desc_o)
        region = expert if expert is not None else mask_o
        photo_records.append(
            PhotoRecord(
                photo=photo.id,
                height=image.shape[0],
                width=image.shape[1],
                has_expert_mask=expert is not None,
                lesion_area_fraction=float(mask_o.mean()),
                expert_iou_original=iou(mask_o, expert) if expert is not None else NAN,
                mask_seconds=mask_seconds,
            )
        )
        panel: ExamplePanel | None = None
        if index < settings.examples:
            panel = ExamplePanel(
                photo=photo.id,
                original=small_o.rgb,
                mask_original=resize_mask(mask_o, small_o.shape),
                expert_mask=resize_mask(expert, small_o.shape) if expert is not None else None,
                edited={},
                mask_edited={},
            )
            examples.append(panel)

        for method in methods:
            record, edited, mask_e = _apply(method, photo, image, mask_o, judge)
            image_records.append(record)
            if edited is None or mask_e is None:
                edited_desc[method.name].append(None)
                report(f"{method.name} ({index + 1}/{len(photos)})")
                continue
            if expert is not None:
                record.expert_iou = iou(mask_e, expert)
            if np.array_equal(edited, image):
                small_e, desc_e = small_o, desc_o  # nothing changed: same figures, less work
            else:
                small_e = WorkingCopy.of(edited, settings.working_side)
                desc_e = describe(small_e, settings.attack)
            _set_fidelity(record, measure_fidelity(small_o, small_e, region))
            edited_desc[method.name].append(desc_e)
            if panel is not None:
                panel.edited[method.name] = small_e.rgb
                panel.mask_edited[method.name] = resize_mask(mask_e, small_e.shape)
            report(f"{method.name} ({index + 1}/{len(photos)})")

    for method in methods:
        _link(method.name, originals, edited_desc[method.name], image_records, settings.attack)

    summary = {}
    rejections = {}
    flags = {}
    for method in methods:
        records = [r for r in image_records if r.method == method.name]
        summary[method.name] = _summarise(records, len(originals))
        rejections[method.name] = _count(r.reason for r in records if r.outcome != PASS)
        flags[method.name] = _count(r.reason for r in records if r.outcome == PASS)
    return EvaluationResult(
        methods=list(methods),
        photos=photo_records,
        images=image_records,
        summary=summary,
        rejections=rejections,
        flags=flags,
        overall=_overall(photo_records),
        examples=examples,
        judge=judge.description,
        gate_threshold=judge.threshold,
        settings=settings,
    )


def _count(reasons: Iterable[str | None]) -> dict[str, int]:
    return dict(sorted(Counter(r for r in reasons if r is not None).items()))


def _expert_mask(photo: Photo, shape: tuple[int, int]) -> np.ndarray | None:
    if photo.expert_mask is None:
        return None
    mask = np.asarray(photo.expert_mask)
    if mask.ndim != 2:
        raise InvalidInputError(f"expert mask of {photo.id} must be 2-D, got shape {mask.shape}")
    return resize_mask(mask.astype(bool), shape)


def _check_mask(mask: np.ndarray, shape: tuple[int, int], photo: str) -> None:
    if mask.shape != shape:
        raise ValueError(f"the lesion mask of {photo} has shape {mask.shape}, expected {shape}")


def _apply(
    method: Method, photo: Photo, image: np.ndarray, mask_o: np.ndarray, judge: LesionJudge
) -> tuple[ImageRecord, np.ndarray | None, np.ndarray | None]:
    """Run one method on one photograph and the gate on its output. A de-identification error of
    the project's own kinds (the input cannot be edited) is a result, recorded as outcome `error`;
    anything else is a bug and propagates."""
    start = time.perf_counter()
    try:
        out = method.transform(image[None], [photo.seed])
    except DeidGatewayError as exc:
        return ImageRecord(photo.id, method.name, ERROR, type(exc).__name__), None, None
    transform_seconds = time.perf_counter() - start
    out = np.asarray(out)
    if out.shape != (1, *image.shape) or out.dtype != np.uint8:
        raise ValueError(
            f"method {method.name} returned {out.dtype} {out.shape} for a "
            f"{image.shape} uint8 photograph: a transform must keep size and dtype"
        )
    edited = out[0]
    start = time.perf_counter()
    mask_e = judge.mask(edited, photo.seed)
    _check_mask(mask_e, image.shape[:2], photo.id)
    verdict: Verdict = judge.judge(mask_o, mask_e)
    gate_seconds = time.perf_counter() - start
    record = ImageRecord(
        photo=photo.id,
        method=method.name,
        outcome=verdict.outcome,
        reason=verdict.reason,
        iou_stability=verdict.iou,
        transform_seconds=transform_seconds,
        gate_seconds=gate_seconds,
    )
    return record, edited, mask_e


def _set_fidelity(record: ImageRecord, fid: Fidelity) -> None:
    record.delta_e00 = fid.delta_e00
    record.delta_a = fid.delta_a
    record.ssim_lesion = fid.ssim_lesion
    record.ssim_rest = fid.ssim_rest
    record.ssim_image = fid.ssim_image


def _link(
    method: str,
    originals: list[ImageDescriptors],
    edited: list[ImageDescriptors | None],
    records: list[ImageRecord],
    settings: AttackSettings,
) -> None:
    """Rank all originals for each de-identified image of `method` and store the ranks."""
    by_photo = [r for r in records if r.method == method]
    done = [i for i, d in enumerate(edited) if d is not None]
    if not done or len(originals) < 2:
        return  # nothing to attack, or nothing to confuse it with: linkage is undefined
    queries = [d for d in edited if d is not None]
    matrices = similarity_matrices(queries, originals, settings)
    matrices[FUSED] = fuse(matrices)
    for attack, scores in matrices.items():
        ranking: Ranking = rank_true_matches(scores, done)
        for row, i in enumerate(done):
            by_photo[i].rank[attack] = float(ranking.ranks[row])
            by_photo[i].top1[attack] = float(ranking.top1[row])
            by_photo[i].top5[attack] = float(ranking.top5[row])


def _stat(values: list[float], fn: Callable[[np.ndarray], float]) -> float:
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    return float(fn(arr)) if arr.size else NAN


def _median(values: list[float]) -> float:
    return _stat(values, np.median)


def _mean(values: list[float]) -> float:
    return _stat(values, np.mean)


def _summarise(records: list[ImageRecord], n_originals: int) -> dict[str, float]:
    ok = [r for r in records if r.outcome != ERROR]
    fig: dict[str, float] = {
        "images": float(len(records)),
        "errors": float(len(records) - len(ok)),
        "chance_top1": 1.0 / n_originals if n_originals else NAN,
        "chance_top5": min(5, n_originals) / n_originals if n_originals else NAN,
    }
    linked = [r for r in ok if r.top1]
    for attack in (*ATTACKS, FUSED):
        fig[f"reid_top1_{attack}"] = _mean([r.top1[attack] for r in linked])
        fig[f"reid_top5_{attack}"] = _mean([r.top5[attack] for r in linked])
        fig[f"median_rank_{attack}"] = _median([r.rank[attack] for r in linked])
    for k in ("top1", "top5"):
        fig[f"reid_{k}"] = NAN
        best = strongest_attack(fig, k)
        if best is not None:
            fig[f"reid_{k}"] = fig[f"reid_{k}_{best}"]
    low, high = wilson_interval(fig["reid_top1"] * len(linked), len(linked))
    fig["reid_top1_ci_low"], fig["reid_top1_ci_high"] = low, high

    ious = [r.iou_stability for r in ok]
    fig["iou_stability_median"] = _median(ious)
    fig["iou_stability_mean"] = _mean(ious)
    fig["iou_stability_q25"] = _stat(ious, lambda a: np.percentile(a, 25))
    fig["iou_stability_q75"] = _stat(ious, lambda a: np.percentile(a, 75))
    fig["iou_defined"] = float(sum(not np.isnan(v) for v in ious))
    fig["gate_pass_rate"] = (
        sum(r.outcome == PASS for r in records) / len(records) if records else NAN
    )
    fig["expert_iou_median"] = _median([r.expert_iou for r in ok])
    for name in ("delta_e00", "delta_a"):
        fig[f"{name}_median"] = _median([getattr(r, name) for r in ok])
        fig[f"{name}_mean"] = _mean([getattr(r, name) for r in ok])
    for name in ("ssim_lesion", "ssim_rest", "ssim_image"):
        fig[f"{name}_mean"] = _mean([getattr(r, name) for r in ok])
    fig["transform_seconds_mean"] = _mean([r.transform_seconds for r in ok])
    fig["gate_seconds_mean"] = _mean([r.gate_seconds for r in ok])
    per_image = [r.transform_seconds + r.gate_seconds for r in ok]
    fig["seconds_per_image"] = _mean(per_image)
    # the first edit in a process pays for warm-up; the median is the steady cost
    fig["seconds_per_image_median"] = _median(per_image)
    return fig


def strongest_attack(summary: dict[str, float], k: str = "top1") -> str | None:
    """The attack that gives the headline re-identification rate (`k`: top1 or top5): the highest
    rate over every descriptor and the fusion; the first in ATTACKS order on a tie. None when no
    image could be attacked."""
    rates = {a: summary.get(f"reid_{k}_{a}", NAN) for a in (*ATTACKS, FUSED)}
    defined = {a: v for a, v in rates.items() if not np.isnan(v)}
    if not defined:
        return None
    return max(defined, key=lambda a: defined[a])


def _overall(photos: list[PhotoRecord]) -> dict[str, float]:
    with_expert = [p for p in photos if p.has_expert_mask]
    return {
        "photos": float(len(photos)),
        "photos_with_expert_mask": float(len(with_expert)),
        "lesion_found_fraction": (
            sum(p.lesion_area_fraction > 0 for p in photos) / len(photos) if photos else NAN
        ),
        "mask_vs_expert_iou_median": _median([p.expert_iou_original for p in with_expert]),
        "mask_vs_expert_iou_mean": _mean([p.expert_iou_original for p in with_expert]),
        "mask_seconds_mean": _mean([p.mask_seconds for p in photos]),
    }
