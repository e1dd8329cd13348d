"""The evaluation engine on synthetic skin photographs made here: the properties that must hold for
the classic reference points (no transform, blur, unrelated images, one constant image)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deid_core.errors import InvalidInputError
from deid_core.evaluation import (
    ATTACKS,
    DEIDENTIFICATION,
    ERROR,
    FUSED,
    PASS,
    EvaluationResult,
    EvaluationSettings,
    Method,
    Photo,
    ThresholdJudge,
    baseline,
    evaluate,
)
from tests.support.evaluation_photos import random_images, redness_mask, skin_photo

N = 12


def constant_image(images: np.ndarray, seeds: list[int]) -> np.ndarray:
    """Every input becomes the same unrelated photograph."""
    same = skin_photo(999, images.shape[1], images.shape[2])[0]
    return np.broadcast_to(same, images.shape).copy()


def shifted_noisy(images: np.ndarray, seeds: list[int]) -> np.ndarray:
    """The same photograph moved a few pixels with noise added: no pixel is equal any more, the
    scene is."""
    rng = np.random.default_rng(seeds[0])
    moved = np.roll(images, (4, -6), axis=(1, 2)).astype(int)
    return np.clip(moved + rng.integers(-6, 7, images.shape), 0, 255).astype(np.uint8)


def photos(n: int = N) -> list[Photo]:
    out = []
    for seed in range(n):
        image, lesion = skin_photo(seed)
        out.append(Photo(f"p{seed + 1:04d}", image, seed, lesion))
    return out


@pytest.fixture(scope="module")
def result() -> EvaluationResult:
    methods = [
        baseline("none"),
        baseline("blur:0.005"),
        baseline("blur:0.1"),
        Method("random", DEIDENTIFICATION, random_images),
        Method("constant", DEIDENTIFICATION, constant_image),
        Method("shifted", DEIDENTIFICATION, shifted_noisy),
    ]
    return evaluate(
        photos(), methods, ThresholdJudge(redness_mask, 0.67), EvaluationSettings(examples=2)
    )


def test_no_transform_links_every_photograph_and_keeps_the_lesion(result: EvaluationResult) -> None:
    s = result.summary["none"]
    for attack in (*ATTACKS, FUSED):
        assert s[f"reid_top1_{attack}"] == 1.0, attack
    assert s["reid_top1"] == 1.0 and s["reid_top5"] == 1.0
    assert s["iou_stability_median"] == 1.0 and s["iou_stability_q25"] == 1.0
    assert s["gate_pass_rate"] == 1.0
    assert s["delta_e00_median"] == 0.0 and s["delta_a_median"] == 0.0
    assert s["ssim_lesion_mean"] == pytest.approx(1.0)
    assert s["ssim_rest_mean"] == pytest.approx(1.0)
    assert all(r.rank[FUSED] == 1.0 for r in result.records("none"))


def test_heavy_blur_keeps_little_lesion_fidelity(result: EvaluationResult) -> None:
    light, heavy = result.summary["blur 0.5%"], result.summary["blur 10%"]
    assert heavy["ssim_lesion_mean"] < 0.5 < light["ssim_lesion_mean"]
    assert heavy["delta_e00_median"] > 3.0 > light["delta_e00_median"]
    assert heavy["iou_stability_median"] < light["iou_stability_median"]
    assert heavy["iou_stability_median"] < 1.0
    assert heavy["gate_pass_rate"] < 1.0
    assert result.rejections["blur 10%"].get("lesion_iou_below_threshold", 0) > 0


def test_unrelated_images_link_near_chance(result: EvaluationResult) -> None:
    s = result.summary["random"]
    assert s["chance_top1"] == pytest.approx(1 / N)
    # Each attack's top-1 rate over 12 queries: chance is 1/12; 4/12 would need luck p < 0.01.
    for attack in (*ATTACKS, FUSED):
        assert s[f"reid_top1_{attack}"] <= 3 / N, attack
    assert s["reid_top5_fused"] <= 0.75
    # ... and they keep no lesion: the gate stops them.
    assert s["gate_pass_rate"] < 0.5


def test_one_constant_output_links_exactly_at_chance(result: EvaluationResult) -> None:
    """All queries are the same picture, so exactly one original can come first: 1/N, for every
    attack, however the descriptors behave."""
    s = result.summary["constant"]
    for attack in (*ATTACKS, FUSED):
        assert s[f"reid_top1_{attack}"] == pytest.approx(1 / N), attack
        assert s[f"reid_top5_{attack}"] == pytest.approx(5 / N), attack


def test_keypoints_find_a_moved_noisy_copy(result: EvaluationResult) -> None:
    s = result.summary["shifted"]
    assert s["reid_top1_orb"] == 1.0
    assert s["reid_top1"] == 1.0
    assert s["ssim_image_mean"] < 0.5  # no pixel-level similarity left to explain it


def test_strongest_attack_is_the_headline(result: EvaluationResult) -> None:
    for name, s in result.summary.items():
        rates = [s[f"reid_top1_{a}"] for a in (*ATTACKS, FUSED)]
        assert s["reid_top1"] == max(rates), name
        assert s["reid_top1_ci_low"] <= s["reid_top1"] <= s["reid_top1_ci_high"]


def test_mask_method_is_measured_against_the_expert_masks(result: EvaluationResult) -> None:
    assert result.overall["photos"] == N
    assert result.overall["photos_with_expert_mask"] == N
    assert result.overall["mask_vs_expert_iou_median"] > 0.8
    assert result.summary["none"]["expert_iou_median"] == pytest.approx(
        result.overall["mask_vs_expert_iou_median"]
    )


def test_example_panels_are_kept_for_the_first_photographs(result: EvaluationResult) -> None:
    assert [p.photo for p in result.examples] == ["p0001", "p0002"]
    panel = result.examples[0]
    assert set(panel.edited) == {m.name for m in result.methods}
    assert panel.mask_original.shape == panel.original.shape[:2]


def test_timing_is_recorded_per_image(result: EvaluationResult) -> None:
    for record in result.images:
        assert record.transform_seconds >= 0 and record.gate_seconds >= 0
    assert result.summary["none"]["seconds_per_image"] >= 0


def failing_on_second(images: np.ndarray, seeds: list[int]) -> np.ndarray:
    if seeds[0] == 1:
        raise InvalidInputError("cannot edit this one")
    return images.copy()


def test_an_edit_error_is_recorded_and_left_out_of_the_attack() -> None:
    res = evaluate(
        photos(3),
        [Method("flaky", DEIDENTIFICATION, failing_on_second)],
        ThresholdJudge(redness_mask),
        EvaluationSettings(examples=0),
    )
    records = res.records("flaky")
    assert [r.outcome for r in records] == [PASS, ERROR, PASS]
    assert records[1].reason == "InvalidInputError" and not records[1].rank
    s = res.summary["flaky"]
    assert s["errors"] == 1 and s["images"] == 3
    assert s["reid_top1"] == 1.0  # over the two that were made, against all three originals
    assert s["gate_pass_rate"] == pytest.approx(2 / 3)
    assert res.rejections["flaky"] == {"InvalidInputError": 1}


def test_a_transform_that_changes_the_size_is_refused() -> None:
    def crop(images: np.ndarray, seeds: list[int]) -> np.ndarray:
        return images[:, 1:].copy()

    with pytest.raises(ValueError, match="must keep size and dtype"):
        evaluate(photos(2), [Method("crop", DEIDENTIFICATION, crop)], ThresholdJudge(redness_mask))


def test_method_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        evaluate(photos(2), [baseline("none"), baseline("none")], ThresholdJudge(redness_mask))


def test_a_non_rgb_photograph_is_refused_with_its_id() -> None:
    grey = Photo("p0009", np.zeros((32, 32), np.uint8), 0)
    with pytest.raises(InvalidInputError, match="p0009"):
        evaluate([grey], [baseline("none")], ThresholdJudge(redness_mask))


def test_a_single_photograph_has_no_linkage_figure() -> None:
    res = evaluate(photos(1), [baseline("none")], ThresholdJudge(redness_mask))
    assert math.isnan(res.summary["none"]["reid_top1"])
    assert res.summary["none"]["iou_stability_median"] == 1.0


def test_progress_is_reported_once_per_pair_done() -> None:
    seen: list[str] = []
    evaluate(
        photos(2),
        [baseline("none"), Method("flaky", DEIDENTIFICATION, failing_on_second)],
        ThresholdJudge(redness_mask),
        EvaluationSettings(examples=0),
        progress=seen.append,
    )
    assert seen == ["none (1/2)", "flaky (1/2)", "none (2/2)", "flaky (2/2)"]
