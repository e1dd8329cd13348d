"""Model directories: verification names what is missing; the tiny model round-trips offline."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from deid_core.errors import ConfigError
from deid_core.model_dir import TEST_MODEL_MARKER, verify_model_dir
from deid_core.models import build_tiny_model, load_model


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Two cores shared with other test runs: spinning OpenMP threads make tiny models 10x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd3", "sd3")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _weights_digest(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(model_dir.rglob("*.safetensors")):
        digest.update(f.read_bytes())
    return digest.hexdigest()


def test_tiny_model_round_trips_through_the_loading_path(tiny_sd3: Path) -> None:
    report = verify_model_dir(tiny_sd3)
    assert report.family == "sd3"
    assert report.is_test_model
    assert {"transformer", "vae", "scheduler", "text_encoder_3"} <= set(report.components)
    model = load_model(tiny_sd3)
    assert model.family == "sd3"
    assert model.is_test_model
    assert model.identity() == report.identity
    assert model.identity().startswith("tiny-sd3@")
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    embeds, pooled = model.encode_prompt("a photo of skin", 16)
    assert embeds.shape[0] == 1 and pooled.shape[0] == 1


def test_flux_tiny_model_round_trips(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "tiny-flux", "flux")
    model = load_model(path)
    assert model.family == "flux"
    assert model.is_test_model
    assert model.alignment == 16
    assert model.max_image_side is None


def test_same_seed_builds_the_same_weights_and_identity(tmp_path: Path, tiny_sd3: Path) -> None:
    again = build_tiny_model(tmp_path / "tiny-sd3", "sd3")
    assert _weights_digest(again) == _weights_digest(tiny_sd3)
    assert verify_model_dir(again).identity == verify_model_dir(tiny_sd3).identity
    other = build_tiny_model(tmp_path / "other", "sd3", seed=1)
    assert _weights_digest(other) != _weights_digest(tiny_sd3)


def test_build_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("real model here")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        build_tiny_model(tmp_path, "sd3")
    assert (tmp_path / "keep.txt").read_text() == "real model here"


def test_unknown_family_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sd3, flux"):
        build_tiny_model(tmp_path / "x", "sdxl")


def test_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        verify_model_dir(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_directory_without_model_index(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model_index\.json is missing"):
        verify_model_dir(tmp_path)


def test_unsupported_pipeline_is_named(tmp_path: Path, tiny_sd3: Path) -> None:
    model = _copy(tiny_sd3, tmp_path / "m")
    index = json.loads((model / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionXLPipeline"
    (model / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError, match="StableDiffusionXLPipeline"):
        verify_model_dir(model)


def test_every_missing_piece_is_named_in_one_error(tmp_path: Path, tiny_sd3: Path) -> None:
    model = _copy(tiny_sd3, tmp_path / "m")
    for f in (model / "vae").glob("*.safetensors"):
        f.unlink()
    (model / "scheduler" / "scheduler_config.json").unlink()
    shutil.rmtree(model / "tokenizer_2")
    (model / "transformer" / "config.json").unlink()
    with pytest.raises(ConfigError) as info:
        verify_model_dir(model)
    message = str(info.value)
    for expected in (
        "vae/ has no weights",
        "scheduler/scheduler_config.json is missing",
        "tokenizer_2/ is missing",
        "transformer/config.json is missing",
    ):
        assert expected in message
    # load_model runs the same check before touching diffusers
    with pytest.raises(ConfigError, match="vae/ has no weights"):
        load_model(model)


def test_required_component_not_listed(tmp_path: Path, tiny_sd3: Path) -> None:
    model = _copy(tiny_sd3, tmp_path / "m")
    index = json.loads((model / "model_index.json").read_text())
    del index["vae"]
    (model / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError, match="does not list vae"):
        verify_model_dir(model)


def test_git_lfs_pointer_is_not_weights(tmp_path: Path, tiny_sd3: Path) -> None:
    model = _copy(tiny_sd3, tmp_path / "m")
    weights = next((model / "transformer").glob("*.safetensors"))
    weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
    with pytest.raises(ConfigError, match="Git LFS pointer"):
        verify_model_dir(model)


def test_missing_shard_of_a_sharded_component(tmp_path: Path, tiny_sd3: Path) -> None:
    model = _copy(tiny_sd3, tmp_path / "m")
    folder = model / "transformer"
    weights = next(folder.glob("*.safetensors"))
    weights.rename(folder / "diffusion_pytorch_model-00001-of-00002.safetensors")
    index = {
        "metadata": {},
        "weight_map": {
            "a": "diffusion_pytorch_model-00001-of-00002.safetensors",
            "b": "diffusion_pytorch_model-00002-of-00002.safetensors",
        },
    }
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError, match=r"00002-of-00002\.safetensors \(a shard"):
        verify_model_dir(model)


def test_optional_t5_may_be_absent(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "no-t5", "sd3", with_t5=False)
    report = verify_model_dir(path)
    assert "text_encoder_3" not in report.components
    model = load_model(path)
    embeds, _ = model.encode_prompt("a photo", 16)
    assert embeds.shape[0] == 1


def test_marker_is_what_makes_a_test_model(tmp_path: Path, tiny_sd3: Path) -> None:
    model = _copy(tiny_sd3, tmp_path / "m")
    (model / TEST_MODEL_MARKER).unlink()
    assert not verify_model_dir(model).is_test_model
    assert not load_model(model).is_test_model


def test_released_text_encoders_keep_known_prompts(tiny_sd3: Path) -> None:
    model = load_model(tiny_sd3)
    before = model.encode_prompt("healthy skin", 16)
    model.release_text_encoders()
    model.release_text_encoders()  # safe twice
    assert model.text_encoders_released
    after = model.encode_prompt("healthy skin", 16)
    assert torch.equal(before[0], after[0])
    with pytest.raises(ConfigError, match="released"):
        model.encode_prompt("a new prompt", 16)


def test_cuda_request_without_cuda_is_a_config_error(tiny_sd3: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="no usable CUDA"):
        load_model(tiny_sd3, device="cuda")
