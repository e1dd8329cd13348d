"""The photograph engine with the tiny model: models shared, encoders released after every
editor, batches by route, failures contained, deterministic results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deid_core.models import build_tiny_model
from gateway.config import parse_config
from gateway.photo import PhotoEngine
from gateway.pixel_jobs import PixelJob
from tests.support.photos import photo_route, skin_image


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def test_engine_loads_a_model_once_for_several_routes_and_runs_a_batch(tiny_model: Path) -> None:
    twin_gate = {"method": "twin", "threshold": 0.5, "twin_max_side": 64}
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
    assert derm.gate.params.method == "twin" and wounds.gate.params.method == "synthesis_free"
    assert derm.gate.params.twin_long_side == 64 and derm.gate.params.iou_threshold == 0.5

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
