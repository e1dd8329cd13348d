"""The photograph engine with the tiny model, and the stand-in lesion gate's outcomes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from deid_core.lesion_stand_in import (
    ACCEPTED,
    LESION_IOU_BELOW_THRESHOLD,
    LESION_MASK_UNRELIABLE,
    LESION_VANISHED,
    NO_LESION_FOUND,
    StandInLesionGate,
    render_panel,
)
from deid_core.models import build_tiny_model
from gateway.config import parse_config
from gateway.photo import PhotoEngine
from gateway.pixel_jobs import PixelJob
from tests.support.photos import photo_route, skin_image, skin_image_and_mask


def _shift(image: np.ndarray, dx: int) -> np.ndarray:
    return np.roll(image, dx, axis=1)


def test_synthesis_free_mask_finds_the_lesion() -> None:
    gate = StandInLesionGate(0.67)
    image, truth = skin_image_and_mask(64, 3, lesion=True)
    [mask] = gate.masks(image[None])
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou >= 0.9


@pytest.mark.parametrize(
    ("original_lesion", "edited", "outcome"),
    [
        (True, lambda im, plain: im, ACCEPTED),
        (True, lambda im, plain: plain, LESION_VANISHED),
        (True, lambda im, plain: _shift(im, 12), LESION_IOU_BELOW_THRESHOLD),
        (False, lambda im, plain: im, NO_LESION_FOUND),
    ],
)
def test_gate_outcomes(original_lesion: bool, edited, outcome: str) -> None:  # type: ignore[no-untyped-def]
    gate = StandInLesionGate(0.67)
    image = skin_image(64, 5, lesion=original_lesion)
    plain = skin_image(64, 5, lesion=False)
    [decision] = gate.check(image[None], edited(image, plain)[None])
    assert decision.outcome == outcome
    assert decision.passed == (outcome in (ACCEPTED, NO_LESION_FOUND))
    if outcome == ACCEPTED:
        assert decision.iou == 1.0


def test_mask_covering_nearly_everything_is_unreliable() -> None:
    gate = StandInLesionGate(0.67)
    mask = np.ones((32, 32), bool)
    mask[:4] = False
    assert gate.decide(mask, mask).outcome == LESION_MASK_UNRELIABLE


def test_twins_of_original_and_edit_share_one_batch_and_seed() -> None:
    calls: list[tuple[tuple[int, ...], list[int]]] = []

    def twin(images: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        calls.append((images.shape, list(seeds)))
        return images

    gate = StandInLesionGate(0.67, twin=twin, max_side=32)
    images = np.stack([skin_image(64, i, True) for i in range(3)])
    decisions = gate.check(images, images, twin_seeds=[7, 8, 9])
    assert calls == [((6, 32, 32, 3), [7, 8, 9, 7, 8, 9])]  # downscaled, one call, paired seeds
    assert all(d.outcome == NO_LESION_FOUND for d in decisions)  # twin == image: no a* drop


def test_panel_shows_four_tiles_and_the_outcome() -> None:
    from io import BytesIO

    from PIL import Image

    gate = StandInLesionGate(0.67)
    image = skin_image(48, 1, lesion=True)
    [decision] = gate.check(image[None], skin_image(48, 1, lesion=False)[None])
    panel = Image.open(BytesIO(render_panel(image, image, decision)))
    assert panel.size == (4 * 48, 48 + 14)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def test_engine_loads_a_model_once_for_several_routes_and_runs_a_batch(tiny_model: Path) -> None:
    twin_gate = {"method": "twin", "threshold": 0.5, "twin_max_side": 32}
    twin_gate["twin_params"] = {"num_steps": 4, "n_max": 2}
    routes = [
        photo_route(tiny_model, ["archive"], name="derm", gate=twin_gate),
        photo_route(tiny_model, ["archive"], name="wounds"),
    ]
    cfg = parse_config(
        {
            "project": {"key": {"env": "KEY"}},
            "destinations": {"archive": {"ae_title": "A", "host": "127.0.0.1", "port": 104}},
            "routes": routes,
        }
    )
    engine = PhotoEngine.from_config(cfg, threads=1)
    derm, wounds = engine.routes["derm"], engine.routes["wounds"]
    assert derm.model is wounds.model  # one directory, loaded once
    assert derm.model.text_encoders_released  # after every editor was built
    assert derm.gate.method == "twin" and wounds.gate.method == "synthesis_free"

    frames = [skin_image(64, i, lesion=i % 2 == 0)[None] for i in range(4)]
    jobs = [
        PixelJob(f"j{i}", "derm" if i < 2 else "wounds", f, (100 + i,), (200 + i,))
        for i, f in enumerate(frames)
    ]
    jobs.append(PixelJob("unknown", "nope", frames[0], (1,), (2,)))
    results = engine.run(jobs)
    assert [r.job_id for r in results] == ["j0", "j1", "j2", "j3", "unknown"]
    assert results[-1].status == "failed" and results[-1].reason == "UnknownRoute"
    for r in results[:-1]:
        assert r.status in ("accepted", "rejected")
        assert r.test_model and "TEST MODEL" in r.provenance
        assert r.edit_seconds > 0
        if r.status == "rejected":
            assert set(r.artifacts) == {"panel.png", "original.png", "deidentified.png"}
        else:
            assert r.frames is not None and r.frames.shape == (1, 64, 64, 3)
    # deterministic: the same job gives the same pixels and decision
    again = engine.run(jobs[:1])[0]
    assert again.status == results[0].status and again.reason == results[0].reason
    if again.frames is not None:
        assert np.array_equal(again.frames, results[0].frames)
