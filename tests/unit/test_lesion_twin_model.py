"""The twin mask through real FlowEdit on the tiny random model.

A random model cannot make a meaningful healthy twin, so these tests assert only what must hold for
any weights: the path runs end to end (in-process and through the CLI), the twins of the original
and the candidate share one batch, the result is deterministic for a seed, and identical inputs
cannot be rejected.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deid_core.lesion import (
    DEFAULT_HEALTHY_PROMPT,
    DEFAULT_LESION_PROMPT,
    GateOutcome,
    LesionGate,
    LesionGateParams,
    flowedit_twins,
)
from deid_core.models import RectifiedFlowModel, build_tiny_model, load_model
from gateway.commands import lesion as lesion_command
from tests.conftest import run_cli
from tests.support.skin import blob, skin_photo

SHAPE = (120, 160)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("lesion-model") / "tiny-sd3", "sd3")


@pytest.fixture(scope="module")
def model(model_dir: Path) -> RectifiedFlowModel:
    return load_model(model_dir)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skin_photo(blob(SHAPE, 60, 80, 25), tone="III", noise=2.0, seed=2)


def test_cli_defaults_match_the_library() -> None:
    assert lesion_command.DEFAULT_LESION_PROMPT == DEFAULT_LESION_PROMPT
    assert lesion_command.DEFAULT_HEALTHY_PROMPT == DEFAULT_HEALTHY_PROMPT


def test_flowedit_twin_gate_runs_in_one_batch_and_is_deterministic(
    model: RectifiedFlowModel, photo: np.ndarray
) -> None:
    edit = flowedit_twins(model, twin_long_side=64, num_steps=10, n_max=6)
    batches: list[tuple[int, ...]] = []

    def generator(images: np.ndarray, seeds: list[int]) -> np.ndarray:
        batches.append(images.shape)
        return edit(images, seeds)

    gate = LesionGate(LesionGateParams(method="twin", twin_long_side=64), generator)
    candidate = np.clip(photo.astype(int) + 2, 0, 255).astype(np.uint8)
    first = gate.check(photo, candidate, seed=5)
    again = gate.check(photo, candidate, seed=5)

    assert batches == [(2, 48, 64, 3), (2, 48, 64, 3)]  # both twins in one call, at 64 px
    assert first.original_mask.shape == SHAPE
    assert np.array_equal(first.original_mask, again.original_mask)
    assert np.array_equal(first.candidate_mask, again.candidate_mask)
    assert first.outcome is again.outcome


def test_identical_images_are_never_rejected_whatever_the_model(
    model: RectifiedFlowModel, photo: np.ndarray
) -> None:
    """Same image, same seed: same twin, same mask. The median shift keeps any twin mask under
    half the image, so the only outcomes are accepted or no lesion found."""
    edit = flowedit_twins(model, twin_long_side=64, num_steps=10, n_max=6)
    result = LesionGate(LesionGateParams(method="twin", twin_long_side=64), edit).check(
        photo, photo, seed=1
    )
    assert result.outcome in (GateOutcome.ACCEPTED, GateOutcome.NO_LESION_FOUND)
    assert np.array_equal(result.original_mask, result.candidate_mask)


@pytest.mark.slow
def test_lesion_check_with_a_model_directory(
    tmp_path: Path, model_dir: Path, photo: np.ndarray
) -> None:
    original = tmp_path / "o.png"
    candidate = tmp_path / "c.png"
    Image.fromarray(photo).save(original)
    Image.fromarray(photo).save(candidate)
    panel = tmp_path / "panel.png"
    proc = run_cli(
        [
            "lesion-check",
            str(original),
            str(candidate),
            "--model",
            str(model_dir),
            "--twin-size",
            "64",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--panel",
            str(panel),
            "--json",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert figures["method"] == "twin"
    assert figures["outcome"] in ("accepted", "no_lesion_found")
    assert isinstance(figures["cross_check_iou"], float)
    assert "TEST MODEL" in figures["note"]
    assert Image.open(panel).format == "PNG"
