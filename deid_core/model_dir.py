"""A model directory (diffusers layout) checked for completeness without loading anything.

Kept apart from `deid_core.models` so that start-up checks and `deid-gateway model verify` run
without importing torch: an operator learns of a missing file in a second, not after a minute.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from deid_core.errors import ConfigError

Family = Literal["sd3", "flux"]

#: The diffusers pipeline class (as written in model_index.json) of each family.
FAMILY_PIPELINES: dict[str, str] = {"sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}

#: File written into a directory by `build_tiny_model`; its presence makes `is_test_model` true.
TEST_MODEL_MARKER = "deid-test-model.json"

#: Said in the provenance of anything a test model produced (derivation description, logs).
TEST_MODEL_NOTICE = "made by a TEST MODEL with random weights, not a real de-identification"

#: Components every model of a family needs; SD3's T5 encoder (text_encoder_3) is optional, as in
#: diffusers, but when model_index.json lists it, it must be present.
REQUIRED_COMPONENTS: dict[str, tuple[str, ...]] = {
    "sd3": (
        "transformer",
        "vae",
        "scheduler",
        "text_encoder",
        "tokenizer",
        "text_encoder_2",
        "tokenizer_2",
    ),
    "flux": (
        "transformer",
        "vae",
        "scheduler",
        "text_encoder",
        "tokenizer",
        "text_encoder_2",
        "tokenizer_2",
    ),
}

_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model")
_LFS_POINTER_PREFIX = b"version https://git-lfs"


@dataclass(frozen=True)
class ModelDirReport:
    """What `verify_model_dir` found in a complete model directory."""

    path: Path
    family: Family
    #: component name -> class name as listed in model_index.json (listed-as-absent ones omitted)
    components: dict[str, str]
    is_test_model: bool
    #: sha256 of model_index.json and the components' configuration files
    config_hash: str

    @property
    def identity(self) -> str:
        """`<directory name>@<first 12 hex of the config hash>`, like the loaded model's."""
        return f"{self.path.resolve().name}@{self.config_hash[:12]}"


def _fail(path: Path, problems: Iterable[str]) -> ConfigError:
    listed = "; ".join(problems)
    return ConfigError(f"model directory {path} is incomplete: {listed}")


def _is_lfs_pointer(file: Path) -> bool:
    try:
        if file.stat().st_size > 1024:
            return False
        with file.open("rb") as fh:
            return fh.read(len(_LFS_POINTER_PREFIX)) == _LFS_POINTER_PREFIX
    except OSError:
        return False


def _weights_problems(folder: Path, name: str) -> list[str]:
    """Problems with the weight files of one model component (empty when they look complete)."""
    problems: list[str] = []
    indexes = sorted(folder.glob("*.index.json"))
    if indexes:
        for index in indexes:
            try:
                weight_map = json.loads(index.read_text("utf-8")).get("weight_map", {})
            except (OSError, ValueError):
                problems.append(f"{name}/{index.name} is not valid JSON")
                continue
            for shard in sorted(set(weight_map.values())):
                shard_path = folder / shard
                if not shard_path.is_file():
                    problems.append(f"{name}/{shard} (a shard listed in {index.name}) is missing")
                elif _is_lfs_pointer(shard_path):
                    problems.append(f"{name}/{shard} is a Git LFS pointer, not the weights")
        return problems
    weights = sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin")])
    if not weights:
        return [f"{name}/ has no weights (*.safetensors or *.bin)"]
    problems.extend(
        f"{name}/{w.name} is a Git LFS pointer, not the weights"
        for w in weights
        if _is_lfs_pointer(w)
    )
    return problems


def _component_problems(root: Path, name: str) -> list[str]:
    folder = root / name
    if not folder.is_dir():
        return [f"{name}/ is missing"]
    if name.startswith("scheduler"):
        return (
            []
            if (folder / "scheduler_config.json").is_file()
            else [f"{name}/scheduler_config.json is missing"]
        )
    if name.startswith("tokenizer"):
        if any((folder / f).is_file() for f in _TOKENIZER_FILES):
            return []
        return [f"{name}/ has no tokenizer file ({' or '.join(_TOKENIZER_FILES)})"]
    if not (folder / "config.json").is_file():
        return [f"{name}/config.json is missing"]
    return _weights_problems(folder, name)


def _config_hash(root: Path, components: Iterable[str]) -> str:
    """Hash of model_index.json and every component's configuration: two directories with the same
    hash hold the same architecture and settings (weights are not hashed: tens of GB)."""
    digest = hashlib.sha256()
    files = [root / "model_index.json"]
    for name in sorted(components):
        folder = root / name
        files.extend(
            sorted(p for p in folder.glob("*.json") if p.is_file() and "index" not in p.name)
        )
    for file in files:
        digest.update(str(file.relative_to(root)).encode("utf-8") + b"\x00")
        digest.update(file.read_bytes() + b"\x00")
    return digest.hexdigest()


def verify_model_dir(path: str | Path) -> ModelDirReport:
    """Check that `path` holds a complete SD3/SD3.5/FLUX model in diffusers layout, without loading
    any weights. Every missing piece is named in one ConfigError, so an operator fixes them all at
    once rather than one per restart."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigError(f"model directory {root} does not exist or is not a directory")
    index_file = root / "model_index.json"
    if not index_file.is_file():
        raise _fail(root, ["model_index.json is missing (not a diffusers pipeline directory)"])
    try:
        index = json.loads(index_file.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise _fail(root, [f"model_index.json is not valid JSON ({type(exc).__name__})"]) from exc
    if not isinstance(index, dict):
        raise _fail(root, ["model_index.json is not a JSON object"])
    class_name = index.get("_class_name")
    family = next((f for f, cls in FAMILY_PIPELINES.items() if cls == class_name), None)
    if family is None:
        known = ", ".join(sorted(FAMILY_PIPELINES.values()))
        raise ConfigError(
            f"model directory {root}: model_index.json names pipeline {class_name!r}; "
            f"supported: {known}"
        )
    components = {
        name: str(spec[1])
        for name, spec in index.items()
        if not name.startswith("_")
        and isinstance(spec, list)
        and len(spec) == 2
        and spec[1] is not None
    }
    problems: list[str] = []
    for name in REQUIRED_COMPONENTS[family]:
        if name not in components:
            problems.append(f"model_index.json does not list {name}")
    for name in components:
        if name in ("image_encoder", "feature_extractor"):
            continue  # IP-adapter parts, unused by FlowEdit
        problems.extend(_component_problems(root, name))
    if problems:
        raise _fail(root, problems)
    used = [c for c in components if c not in ("image_encoder", "feature_extractor")]
    return ModelDirReport(
        path=root,
        family=family,  # type: ignore[arg-type]
        components=components,
        is_test_model=(root / TEST_MODEL_MARKER).is_file(),
        config_hash=_config_hash(root, used),
    )


def ensure_new_model_dir(path: str | Path) -> Path:
    """`path` if it is absent or an empty directory; ConfigError otherwise, so that building a test
    model can never overwrite a real one."""
    root = Path(path).expanduser()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"{root} exists and is not an empty directory; refusing to overwrite it")
    return root
