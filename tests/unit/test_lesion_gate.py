"""The lesion gate's defined outcomes, on masks and end to end on synthetic photographs."""

from __future__ import annotations

import numpy as np
import pytest

from deid_core.errors import ConfigError, InvalidInputError
from deid_core.lesion import (
    GateMethod,
    GateOutcome,
    LesionGate,
    LesionGateParams,
    TwinMaskParams,
)
from deid_core.lesion.gate import decide
from gateway.events import QuarantineReason
from tests.support.skin import blob, disc, red_stub_twin, skin_photo

SHAPE = (240, 320)
SYNTHESIS_FREE = LesionGateParams(method=GateMethod.SYNTHESIS_FREE)


def _mask(*discs: tuple[int, int, int]) -> np.ndarray:
    m = np.zeros((100, 100), bool)
    for cy, cx, r in discs:
        m |= disc((100, 100), cy, cx, r)
    return m


# --- the rules, on masks --------------------------------------------------------------------------


def test_rejections_are_quarantine_reasons() -> None:
    """The gateway files rejections under these names; they must stay in step."""
    rejections = {o.value for o in GateOutcome if not o.forwards}
    assert rejections == {
        QuarantineReason.LESION_VANISHED.value,
        QuarantineReason.LESION_IOU_BELOW_THRESHOLD.value,
        QuarantineReason.LESION_MASK_UNRELIABLE.value,
    }
    assert {o.value for o in GateOutcome if o.forwards} == {"accepted", "no_lesion_found"}


def test_same_lesion_is_accepted() -> None:
    r = decide(_mask((50, 50, 20)), _mask((51, 50, 20)), SYNTHESIS_FREE)
    assert r.outcome is GateOutcome.ACCEPTED and r.accepted
    assert r.quarantine_reason is None
    assert r.iou is not None and r.iou > 0.9


def test_both_empty_is_forwarded_but_flagged() -> None:
    empty = np.zeros((100, 100), bool)
    r = decide(empty, empty, SYNTHESIS_FREE)
    assert r.outcome is GateOutcome.NO_LESION_FOUND
    assert r.accepted and r.reason == "no_lesion_found"
    assert r.iou is None  # nothing to compare, not a perfect match


def test_lesion_gone_after_deidentification_is_vanished() -> None:
    r = decide(_mask((50, 50, 20)), np.zeros((100, 100), bool), SYNTHESIS_FREE)
    assert r.outcome is GateOutcome.LESION_VANISHED
    assert not r.accepted and r.quarantine_reason == "lesion_vanished"
    assert r.iou == 0.0


def test_a_remnant_below_the_vanished_ratio_is_still_vanished() -> None:
    original = _mask((50, 50, 30))  # ~2800 px
    remnant = _mask((50, 50, 5))  # ~80 px: under 10 % of the original
    assert decide(original, remnant, SYNTHESIS_FREE).outcome is GateOutcome.LESION_VANISHED


def test_moved_or_shrunk_lesion_is_below_threshold_with_its_iou() -> None:
    r = decide(_mask((50, 40, 20)), _mask((50, 60, 20)), SYNTHESIS_FREE)
    assert r.outcome is GateOutcome.LESION_IOU_BELOW_THRESHOLD
    assert r.iou is not None and 0 < r.iou < 0.67
    assert r.figures()["iou"] == pytest.approx(r.iou, abs=1e-4)


def test_a_lesion_that_appeared_is_below_threshold() -> None:
    r = decide(np.zeros((100, 100), bool), _mask((50, 50, 20)), SYNTHESIS_FREE)
    assert r.outcome is GateOutcome.LESION_IOU_BELOW_THRESHOLD
    assert r.iou == 0.0


@pytest.mark.parametrize("which", ["original", "candidate", "both"])
def test_a_mask_covering_nearly_everything_is_unreliable(which: str) -> None:
    huge = np.ones((100, 100), bool)
    huge[:3] = False  # 97 %
    normal = _mask((50, 50, 20))
    o = huge if which in ("original", "both") else normal
    c = huge if which in ("candidate", "both") else normal
    r = decide(o, c, SYNTHESIS_FREE)
    assert r.outcome is GateOutcome.LESION_MASK_UNRELIABLE
    assert r.quarantine_reason == "lesion_mask_unreliable"


def test_threshold_is_the_routes() -> None:
    o, c = _mask((50, 45, 20)), _mask((50, 55, 20))
    strict = decide(o, c, LesionGateParams(method="synthesis_free", iou_threshold=0.9))
    lenient = decide(o, c, LesionGateParams(method="synthesis_free", iou_threshold=0.3))
    assert strict.outcome is GateOutcome.LESION_IOU_BELOW_THRESHOLD
    assert lenient.outcome is GateOutcome.ACCEPTED
    assert strict.iou == lenient.iou


def test_figures_carry_areas_and_no_masks() -> None:
    o, c = _mask((50, 50, 20)), _mask((50, 50, 18))
    fig = decide(o, c, SYNTHESIS_FREE).figures()
    assert fig["original_area_px"] == int(o.sum())
    assert fig["candidate_area_px"] == int(c.sum())
    assert fig["image_area_px"] == 100 * 100
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in fig.values())


def test_details_fit_a_pixel_step_outcome() -> None:
    empty = np.zeros((100, 100), bool)
    details = decide(empty, empty, SYNTHESIS_FREE).details()
    assert "iou" not in details  # None is left out
    assert details["outcome"] == "no_lesion_found"
    assert all(
        isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in details.values()
    )


@pytest.mark.parametrize(
    "kwargs",
    [{"iou_threshold": 0}, {"iou_threshold": 1.5}, {"unreliable_fraction": 0}, {"method": "x"}],
)
def test_bad_gate_params_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LesionGateParams(**kwargs)  # type: ignore[arg-type]


def test_twin_method_without_a_generator_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="twin"):
        LesionGate(LesionGateParams(method=GateMethod.TWIN))


# --- end to end on photographs --------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skin_photo(blob(SHAPE, 120, 160, 50), tone="III", noise=2.0, gradient=5.0, seed=2)


@pytest.fixture(scope="module")
def painted_out(photo: np.ndarray) -> np.ndarray:
    return red_stub_twin(photo[None], [0])[0]


def _deidentified(photo: np.ndarray) -> np.ndarray:
    """What an identity edit that spares the lesion does: small changes everywhere."""
    rng = np.random.default_rng(11)
    return np.clip(photo.astype(int) + rng.integers(-3, 4, photo.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("method", ["synthesis_free", "twin"])
def test_gate_accepts_a_deidentified_photo_that_kept_the_lesion(
    photo: np.ndarray, method: str
) -> None:
    gate = LesionGate(LesionGateParams(method=method), red_stub_twin)
    r = gate.check(photo, _deidentified(photo))
    assert r.outcome is GateOutcome.ACCEPTED
    assert r.iou is not None and r.iou >= 0.9
    assert r.original_mask.shape == SHAPE
    assert 0.05 < r.original_fraction < 0.3


@pytest.mark.parametrize("method", ["synthesis_free", "twin"])
def test_gate_rejects_a_photo_whose_lesion_vanished(
    photo: np.ndarray, painted_out: np.ndarray, method: str
) -> None:
    r = LesionGate(LesionGateParams(method=method), red_stub_twin).check(photo, painted_out)
    assert r.outcome is GateOutcome.LESION_VANISHED


@pytest.mark.parametrize("method", ["synthesis_free", "twin"])
def test_gate_rejects_a_moved_lesion_below_threshold(photo: np.ndarray, method: str) -> None:
    moved = skin_photo(blob(SHAPE, 120, 215, 50), tone="III", noise=2.0, gradient=5.0, seed=2)
    r = LesionGate(LesionGateParams(method=method), red_stub_twin).check(photo, moved)
    assert r.outcome is GateOutcome.LESION_IOU_BELOW_THRESHOLD
    assert r.iou is not None and r.iou < 0.67


@pytest.mark.parametrize("method", ["synthesis_free", "twin"])
def test_gate_on_healthy_skin_finds_no_lesion(method: str) -> None:
    healthy = skin_photo(np.zeros(SHAPE, bool), tone="V", noise=2.0, gradient=5.0, seed=4)
    r = LesionGate(LesionGateParams(method=method), red_stub_twin).check(
        healthy, _deidentified(healthy)
    )
    assert r.outcome is GateOutcome.NO_LESION_FOUND and r.accepted


def test_gate_rejects_an_unreliable_mask_from_a_broken_twin(photo: np.ndarray) -> None:
    """A twin that made the whole frame less red marks the whole frame: not a finding."""

    def greener(images: np.ndarray, seeds: object) -> np.ndarray:
        out = images.astype(int)
        out[..., 0] -= 40
        return np.clip(out, 0, 255).astype(np.uint8)

    params = LesionGateParams(
        method="twin", twin=TwinMaskParams(threshold=5.0, remove_global_shift=False)
    )
    r = LesionGate(params, greener).check(photo, photo)
    assert r.outcome is GateOutcome.LESION_MASK_UNRELIABLE


def test_gate_passes_one_seed_to_both_twins_in_one_batch(photo: np.ndarray) -> None:
    seen: list[list[int]] = []

    def generator(images: np.ndarray, seeds: list[int]) -> np.ndarray:
        seen.append(list(seeds))
        return red_stub_twin(images, seeds)

    LesionGate(LesionGateParams(method="twin"), generator).check(photo, photo, seed=1234)
    assert seen == [[1234, 1234]]


def test_twin_gate_with_cross_check_reports_agreement(photo: np.ndarray) -> None:
    params = LesionGateParams(method="twin", cross_check=True)
    r = LesionGate(params, red_stub_twin).check(photo, photo)
    assert r.cross_check_iou is not None and r.cross_check_iou >= 0.8


def test_gate_refuses_a_candidate_of_another_size(photo: np.ndarray) -> None:
    with pytest.raises(InvalidInputError, match="candidate"):
        LesionGate(SYNTHESIS_FREE).check(photo, photo[:200])
