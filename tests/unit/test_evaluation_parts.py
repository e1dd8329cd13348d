"""The evaluation's parts one by one: ranking with ties, intervals, the judge's reasons, baselines,
fidelity figures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deid_core.evaluation import (
    PASS,
    REJECT,
    GateJudge,
    GaussianBlur,
    Pixelation,
    ThresholdJudge,
    Verdict,
    baseline,
    fit_long_side,
    iou,
    measure_fidelity,
)
from deid_core.evaluation.linkage import (
    describe,
    rank_true_matches,
    robust_z,
    similarity_matrices,
    wilson_interval,
)
from deid_core.lesion import GateMethod, LesionGate, LesionGateParams
from tests.support.evaluation_photos import redness_mask, skin_photo


def test_rank_counts_ties_as_a_random_order() -> None:
    scores = np.array(
        [
            [5.0, 1.0, 1.0, 1.0],  # clear first
            [2.0, 2.0, 2.0, 0.0],  # three-way tie for first
            [9.0, 8.0, 7.0, 1.0],  # last
            [3.0, 3.0, 3.0, 3.0],  # all equal
        ]
    )
    ranking = rank_true_matches(scores, [0, 1, 3, 2])
    assert ranking.ranks.tolist() == [1.0, 2.0, 4.0, 2.5]
    assert ranking.top1.tolist() == pytest.approx([1.0, 1 / 3, 0.0, 0.25])
    # top-5 of only four candidates: always found
    assert ranking.top5.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_top5_with_more_candidates_than_five() -> None:
    scores = np.arange(10, dtype=float)[None, ::-1].copy()  # 9, 8, ..., 0
    for true, expected in [(0, 1.0), (4, 1.0), (5, 0.0), (9, 0.0)]:
        assert rank_true_matches(scores, [true]).top5[0] == expected


def test_wilson_interval() -> None:
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and 0.69 < low < 0.73
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and 0.15 < high < 0.17
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_robust_z_of_a_constant_row_is_zero() -> None:
    z = robust_z(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 6.0]]))
    assert z[0].tolist() == [0.0, 0.0, 0.0]
    assert z[1, 2] > 1 and z[1, 0] == z[1, 1]


def test_each_descriptor_prefers_the_same_photograph() -> None:
    images = [skin_photo(s)[0] for s in range(4)]
    desc = [describe(im) for im in images]
    matrices = similarity_matrices(desc, desc)
    for name, m in matrices.items():
        assert m.shape == (4, 4)
        assert np.all(np.argmax(m, axis=1) == np.arange(4)), name


def test_a_flat_image_has_no_keypoints_and_no_error() -> None:
    flat = np.full((64, 64, 3), 120, np.uint8)
    d = describe(flat)
    assert d.keypoints.shape == (0, 256)
    assert np.isfinite(d.glcm).all() and d.colour.sum() == pytest.approx(1.0)


def test_judge_follows_the_gate_rules() -> None:
    judge = ThresholdJudge(redness_mask, threshold=0.5)
    lesion = np.zeros((10, 10), bool)
    lesion[2:6, 2:6] = True
    nothing = np.zeros_like(lesion)
    moved = np.roll(lesion, 3, axis=1)
    assert judge.judge(lesion, lesion) == Verdict(PASS, None, 1.0)
    found_nothing = judge.judge(nothing, nothing)  # forwarded, but flagged; IoU undefined
    assert found_nothing.outcome == PASS and found_nothing.reason == "no_lesion_found"
    assert math.isnan(found_nothing.iou)
    assert judge.judge(lesion, nothing).reason == "lesion_vanished"
    verdict = judge.judge(lesion, moved)
    assert verdict.outcome == REJECT and verdict.reason == "lesion_iou_below_threshold"
    assert verdict.iou == pytest.approx(4 / 28)
    everything = np.ones_like(lesion)
    assert judge.judge(lesion, everything).reason == "lesion_mask_unreliable"
    assert "IoU >= 0.5" in judge.description
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError):
            ThresholdJudge(redness_mask, threshold=bad)


def _gate_photos() -> tuple[np.ndarray, list[np.ndarray]]:
    from tests.support import skin

    truth = skin.blob((96, 112), 48, 56, 18)
    original = skin.skin_photo(truth, tone="III", noise=2.0, seed=1)
    moved = skin.skin_photo(np.roll(truth, 14, axis=1), tone="III", noise=2.0, seed=2)
    healed = skin.skin_photo(np.zeros_like(truth), tone="III", noise=2.0, seed=3)
    return original, [original.copy(), moved, healed]


@pytest.mark.parametrize("method", ["synthesis_free", "twin"])
def test_gate_judge_decides_as_the_lesion_gate_does(method: str) -> None:
    """Masks one image at a time (the original's once per photograph), same verdicts as the
    route's gate checking the pair."""
    from tests.support.skin import red_stub_twin

    params = LesionGateParams(method=GateMethod(method), iou_threshold=0.67)
    gate = LesionGate(params, red_stub_twin if method == "twin" else None)
    judge = GateJudge(gate)
    assert judge.threshold == 0.67 and method in judge.description
    original, candidates = _gate_photos()
    mask_o = judge.mask(original, seed=5)
    outcomes = []
    for candidate in candidates:
        verdict = judge.judge(mask_o, judge.mask(candidate, seed=5))
        expected = gate.check(original, candidate, seed=5)
        assert verdict.outcome == (PASS if expected.accepted else REJECT)
        assert verdict.reason == (None if expected.outcome.value == "accepted" else expected.reason)
        assert verdict.iou == pytest.approx(expected.iou if expected.iou is not None else math.nan,
                                            nan_ok=True)  # fmt: skip
        outcomes.append(verdict.reason)
    assert outcomes[0] is None  # the same picture passes
    assert outcomes[2] == "lesion_vanished"


def test_iou() -> None:
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert iou(a, b) == pytest.approx(1 / 3)
    assert math.isnan(iou(np.zeros_like(a), np.zeros_like(a)))


def test_baseline_specs() -> None:
    assert baseline("none").name == "none"
    blur = baseline("blur:0.02")
    assert blur.name == "blur 2%" and blur.params["sigma_fraction_of_long_side"] == 0.02
    assert baseline("pixelate:0.05").name == "pixelate 5%"
    for bad in ("blur", "blur:x", "blur:2", "sharpen:0.1", "none:1"):
        with pytest.raises(ValueError):
            baseline(bad)


def test_blur_and_pixelation_keep_size_and_mean_colour() -> None:
    image = skin_photo(3)[0][None]
    for transform in (GaussianBlur(0.04), Pixelation(0.06)):
        out = transform(image, [0])
        assert out.shape == image.shape and out.dtype == np.uint8
        assert np.abs(out.mean(axis=(1, 2)) - image.mean(axis=(1, 2))).max() < 2.0
        assert out.std() < image.std()


def test_pixelation_makes_flat_blocks() -> None:
    image = np.random.default_rng(0).integers(0, 256, (1, 100, 100, 3), dtype=np.uint8)
    out = Pixelation(0.1)(image, [0])
    assert len(np.unique(out[0, :10, :10].reshape(-1, 3), axis=0)) == 1


def test_fidelity_of_a_change_inside_the_lesion_only() -> None:
    image, lesion = skin_photo(5)
    redder = image.copy()
    redder[lesion, 0] = np.clip(redder[lesion, 0].astype(int) + 40, 0, 255)
    fid = measure_fidelity(image, redder, lesion)
    assert fid.delta_e00 > 3 and fid.delta_a > 3
    assert fid.ssim_rest > fid.ssim_lesion
    same = measure_fidelity(image, image, lesion)
    assert same.delta_e00 == 0 and same.ssim_lesion == pytest.approx(1.0)


def test_fidelity_without_a_lesion_region_is_undefined_not_zero() -> None:
    image = skin_photo(1)[0]
    fid = measure_fidelity(image, image, np.zeros(image.shape[:2], bool))
    assert math.isnan(fid.delta_e00) and math.isnan(fid.ssim_lesion)
    assert fid.ssim_rest == pytest.approx(1.0)


def test_working_copy_is_never_upscaled() -> None:
    big = np.zeros((1000, 600, 3), np.uint8)
    assert fit_long_side(big, 512).shape == (512, 307, 3)
    small = np.zeros((100, 60, 3), np.uint8)
    assert fit_long_side(small, 512) is small


def test_keypoint_matching_in_chunks_gives_the_same_scores() -> None:
    from deid_core.evaluation.linkage import AttackSettings, _keypoint_scores

    originals = [describe(skin_photo(s)[0]) for s in range(5)]
    moved = [describe(np.roll(skin_photo(s)[0], 3, axis=1)) for s in range(5)]
    whole = _keypoint_scores(moved, originals, AttackSettings())
    one_by_one = _keypoint_scores(moved, originals, AttackSettings(), block_cells=1)
    assert np.array_equal(whole, one_by_one)
    assert np.all(np.argmax(whole, axis=1) == np.arange(5))
