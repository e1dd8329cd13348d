"""FlowEdit properties on the tiny random models (SD3 and FLUX), on the CPU.

A random model edits nonsense, so these tests assert what must hold for any weights: equal prompts
give the VAE round trip, n_max = 0 gives the input, seeds decide the noise, shapes are kept.
Step counts are cut down where the property does not depend on them (the CI budget is minutes).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from deid_core.errors import ConfigError, InvalidInputError
from deid_core.flowedit import FlowEditor, FlowEditParams
from deid_core.models import RectifiedFlowModel, build_tiny_model, load_model

FAMILIES = ("sd3", "flux")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RectifiedFlowModel]:
    root = tmp_path_factory.mktemp("flowedit-models")
    return {f: load_model(build_tiny_model(root / f"tiny-{f}", f)) for f in FAMILIES}


def _images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus a little noise: closer to a photograph than pure noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        base = np.stack(
            [
                128 + 100 * np.sin(x / max(w, 1) * 3 + i),
                128 + 100 * np.cos(y / max(h, 1) * 2 + i),
                np.full((h, w), 60 + 40 * i),
            ],
            axis=-1,
        )
        out[i] = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    return out


def _fast(family: str, **overrides: object) -> FlowEditParams:
    settings: dict[str, object] = {"num_steps": 10, "n_max": 6}
    settings.update(overrides)
    return FlowEditParams.defaults_for(family, **settings)


def test_published_defaults() -> None:
    sd3 = FlowEditParams.defaults_for("sd3")
    assert (sd3.num_steps, sd3.n_max, sd3.n_min, sd3.n_avg) == (50, 33, 0, 1)
    assert (sd3.source_guidance, sd3.target_guidance) == (3.5, 13.5)
    flux = FlowEditParams.defaults_for("flux")
    assert (flux.num_steps, flux.n_max, flux.n_min, flux.n_avg) == (28, 24, 0, 1)
    assert (flux.source_guidance, flux.target_guidance) == (1.5, 5.5)
    assert FlowEditParams.defaults_for("sd3", n_max=10).n_max == 10
    with pytest.raises(ConfigError):
        FlowEditParams.defaults_for("sdxl")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"n_max": 51}, "n_max"),
        ({"n_min": 34}, "n_min"),
        ({"n_avg": 0}, "n_avg"),
        ({"num_steps": 0}, "num_steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"source_guidance": float("nan")}, "source_guidance"),
        ({"max_side": 8}, "max_side"),
        ({"n_max": 3.5}, "n_max"),
    ],
)
def test_invalid_params_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"flowedit.{field}"):
        FlowEditParams.defaults_for("sd3", **overrides)


@pytest.mark.parametrize("family", FAMILIES)
def test_equal_prompts_and_guidance_give_the_vae_round_trip(
    models: dict[str, RectifiedFlowModel], family: str
) -> None:
    model = models[family]
    base = FlowEditParams.defaults_for(family)
    params = FlowEditParams.defaults_for(family, target_guidance=base.source_guidance)
    editor = FlowEditor(model, params, "a photo of a forearm", "a photo of a forearm")
    images = _images(2, 40, 56)
    edited = editor.edit(images, [11, 12])
    round_trip = editor.reconstruct(images)
    assert edited.shape == images.shape and edited.dtype == np.uint8
    assert np.abs(edited.astype(int) - round_trip).max() <= 1
    # ... and the random VAE does change the image, so the comparison above is not vacuous
    assert np.abs(round_trip.astype(int) - images).mean() > 5


@pytest.mark.parametrize("family", FAMILIES)
def test_different_prompts_do_edit(models: dict[str, RectifiedFlowModel], family: str) -> None:
    editor = FlowEditor(models[family], _fast(family), "a photo of a face", "a photo of a hand")
    images = _images(1, 32, 32)
    edited = editor.edit(images, [5])
    assert np.abs(edited.astype(int) - editor.reconstruct(images)).max() > 2


@pytest.mark.parametrize("family", FAMILIES)
def test_n_max_zero_returns_the_input_unchanged(
    models: dict[str, RectifiedFlowModel], family: str
) -> None:
    editor = FlowEditor(models[family], _fast(family, n_max=0), "a", "b")
    images = _images(2, 21, 35)
    out = editor.edit(images, [1, 2])
    # Bit-exact: any VAE pass of the random model would change pixels (see the round-trip test).
    assert np.array_equal(out, images)
    assert out is not images


@pytest.mark.parametrize("family", FAMILIES)
def test_seeds_decide_the_noise(models: dict[str, RectifiedFlowModel], family: str) -> None:
    editor = FlowEditor(models[family], _fast(family), "a photo of a face", "a photo of a hand")
    images = _images(2, 32, 48)
    first = editor.edit(images, [7, 8])
    assert np.array_equal(first, editor.edit(images, [7, 8]))
    swapped_seed = editor.edit(images, [9, 8])
    assert not np.array_equal(first[0], swapped_seed[0])
    assert np.array_equal(first[1], swapped_seed[1])
    # an image's result does not depend on what else is in its batch
    alone = editor.edit(images[1:], [8])
    assert np.abs(alone.astype(int) - first[1]).max() <= 1


def test_batch_size_splits_without_changing_results(models: dict[str, RectifiedFlowModel]) -> None:
    images = _images(3, 16, 16)
    whole = FlowEditor(models["sd3"], _fast("sd3", batch_size=4), "a", "b").edit(images, [1, 2, 3])
    split = FlowEditor(models["sd3"], _fast("sd3", batch_size=1), "a", "b").edit(images, [1, 2, 3])
    assert np.abs(whole.astype(int) - split).max() <= 1


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", [(1, 1), (3, 50), (17, 33), (64, 16)])
def test_any_size_comes_back_the_same_size(
    models: dict[str, RectifiedFlowModel], family: str, size: tuple[int, int]
) -> None:
    editor = FlowEditor(models[family], _fast(family, num_steps=4, n_max=2), "a", "b")
    images = _images(1, *size)
    out = editor.edit(images, [0])
    assert out.shape == images.shape and out.dtype == np.uint8


@pytest.mark.parametrize("family", FAMILIES)
def test_n_min_and_n_avg_paths_run_deterministically(
    models: dict[str, RectifiedFlowModel], family: str
) -> None:
    params = _fast(family, n_min=2, n_avg=2)
    editor = FlowEditor(models[family], params, "a photo of a face", "a photo of a hand")
    images = _images(1, 32, 32)
    out = editor.edit(images, [3])
    assert np.array_equal(out, editor.edit(images, [3]))
    plain = FlowEditor(models[family], _fast(family), "a photo of a face", "a photo of a hand")
    assert not np.array_equal(out, plain.edit(images, [3]))


def test_max_side_edits_smaller_and_restores_the_size(
    models: dict[str, RectifiedFlowModel],
) -> None:
    editor = FlowEditor(models["sd3"], _fast("sd3", max_side=32), "a", "b")
    images = _images(1, 48, 96)
    out = editor.edit(images, [0])
    assert out.shape == images.shape


def test_too_large_for_the_transformer_says_use_max_side(
    models: dict[str, RectifiedFlowModel],
) -> None:
    model = models["sd3"]
    assert model.max_image_side is not None
    tall = np.zeros((1, model.max_image_side + 16, 16, 3), dtype=np.uint8)
    editor = FlowEditor(model, _fast("sd3"), "a", "b")
    with pytest.raises(InvalidInputError, match="max_side"):
        editor.edit(tall, [0])


@pytest.mark.parametrize(
    ("images", "seeds", "match"),
    [
        (np.zeros((1, 8, 8, 3), dtype=np.float32), [0], "uint8"),
        (np.zeros((8, 8, 3), dtype=np.uint8), [0], "shape"),
        (np.zeros((1, 8, 8, 4), dtype=np.uint8), [0], "shape"),
        (np.zeros((0, 8, 8, 3), dtype=np.uint8), [], "empty"),
        (np.zeros((2, 8, 8, 3), dtype=np.uint8), [0], "2 images but 1 seeds"),
        (np.zeros((1, 8, 8, 3), dtype=np.uint8), [-1], "seed"),
        (np.zeros((1, 8, 8, 3), dtype=np.uint8), ["1"], "seed"),
    ],
)
def test_bad_input_is_a_clear_error(
    models: dict[str, RectifiedFlowModel], images: np.ndarray, seeds: list[object], match: str
) -> None:
    editor = FlowEditor(models["sd3"], _fast("sd3"), "a", "b")
    with pytest.raises(InvalidInputError, match=match):
        editor.edit(images, seeds)  # type: ignore[arg-type]


def test_release_text_encoders_keeps_the_editor_working(tmp_path: Path) -> None:
    model = load_model(build_tiny_model(tmp_path / "m", "sd3"))
    images = _images(1, 16, 16)
    editor = FlowEditor(model, _fast("sd3"), "a photo of a face", "a photo of a hand")
    twin = FlowEditor(model, _fast("sd3"), "a lesion", "healthy skin")
    before = editor.edit(images, [1])
    editor.release_text_encoders()
    assert np.array_equal(before, editor.edit(images, [1]))
    twin.edit(images, [2])
    with pytest.raises(ConfigError, match="released"):
        FlowEditor(model, _fast("sd3"), "a new prompt", "another new prompt")


def test_derivation_description_names_model_settings_and_test_model(
    models: dict[str, RectifiedFlowModel],
) -> None:
    editor = FlowEditor(models["sd3"], FlowEditParams.defaults_for("sd3"), "a", "b")
    text = editor.derivation_description()
    assert models["sd3"].identity() in text
    assert "n_max=33" in text
    assert "TEST MODEL" in text


@pytest.mark.parametrize("family", FAMILIES)
def test_sigma_schedule_runs_from_noise_to_image(
    models: dict[str, RectifiedFlowModel], family: str
) -> None:
    timesteps, sigmas = models[family].sigma_schedule(28, 64, 64)
    assert len(timesteps) == 28 and len(sigmas) == 29
    assert float(sigmas[0]) == pytest.approx(1.0)
    assert float(sigmas[-1]) == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())


def test_flux_shift_grows_with_resolution(models: dict[str, RectifiedFlowModel]) -> None:
    # FLUX's mu depends on the number of image tokens: larger images stay noisier for longer.
    _, small = models["flux"].sigma_schedule(28, 32, 32)
    _, large = models["flux"].sigma_schedule(28, 128, 128)
    assert float(large[14]) > float(small[14])
    # SD3's shift is fixed: the schedule does not depend on the size
    _, sd3_small = models["sd3"].sigma_schedule(28, 32, 32)
    _, sd3_large = models["sd3"].sigma_schedule(28, 128, 128)
    assert torch.equal(sd3_small, sd3_large)
