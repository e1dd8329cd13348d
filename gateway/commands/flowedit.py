"""`deid-gateway flowedit IN OUT`: the FlowEdit identity transform on one PNG/JPEG/DICOM file.

A tool for trying prompts and models by hand, and for the demo. A DICOM input becomes a derived
DICOM instance (new SOP Instance UID, Image Type DERIVED, Derivation Description, truthful lossy
attributes) with its other attributes untouched: metadata de-identification is the gateway's
separate step, so the output of this command alone is not de-identified.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from deid_core.errors import ConfigError, InvalidInputError
from gateway.commands import err, out
from gateway.commands.model import offline_ml_environment

_IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}


def _is_dicom(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(132)
    return head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom")


def _read_image(path: Path) -> tuple[np.ndarray, str, np.ndarray | None]:
    """(RGB uint8 (1, H, W, 3), the file's mode, its alpha channel if any). Modes that are not
    8-bit photographs (16-bit or float greyscale) are refused rather than silently rescaled."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode not in ("RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "YCbCr"):
                raise InvalidInputError(f"{path.name}: image mode {mode} is not supported")
            alpha = None
            if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
                alpha = np.asarray(image.convert("RGBA"))[..., 3].copy()
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInputError(
            f"{path.name} is not a readable image ({type(exc).__name__})"
        ) from exc
    return rgb[np.newaxis], mode, alpha


def _write_image(path: Path, rgb: np.ndarray, mode: str, alpha: np.ndarray | None) -> None:
    """Write without EXIF or other metadata of the input (it may identify: GPS, device, date)."""
    from PIL import Image

    fmt = _IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(_IMAGE_FORMATS))
        raise ConfigError(f"output {path.name}: unknown image format (use one of {known})")
    image = Image.fromarray(rgb)
    if mode in ("L", "LA"):
        image = image.convert("L")
    if alpha is not None and fmt != "JPEG":
        image.putalpha(Image.fromarray(alpha))
    if fmt == "JPEG":
        image.save(path, format=fmt, quality=95)
    else:
        image.save(path, format=fmt)


def flowedit(
    source: Annotated[Path, typer.Argument(help="input PNG/JPEG/TIFF or DICOM file")],
    target: Annotated[Path, typer.Argument(help="output file (DICOM in gives DICOM out)")],
    model_dir: Annotated[Path, typer.Option("--model", help="model directory (diffusers layout)")],
    source_prompt: Annotated[str, typer.Option("--source-prompt", help="describes the input")],
    target_prompt: Annotated[str, typer.Option("--target-prompt", help="describes the output")],
    seed: Annotated[
        int | None, typer.Option("--seed", help="noise seed (frame i uses seed + i)")
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option("--key", help="project key file: seeds and the new UID derive from it"),
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="T (default: the family's)")] = None,
    n_max: Annotated[int | None, typer.Option("--n-max")] = None,
    n_min: Annotated[int | None, typer.Option("--n-min")] = None,
    n_avg: Annotated[int | None, typer.Option("--n-avg")] = None,
    source_guidance: Annotated[float | None, typer.Option("--source-guidance")] = None,
    target_guidance: Annotated[float | None, typer.Option("--target-guidance")] = None,
    max_side: Annotated[
        int | None, typer.Option("--max-side", help="edit at most this many pixels a side")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto")] = "auto",
    encoding: Annotated[
        str, typer.Option("--encoding", help="DICOM output transfer syntax (see dicom_io.pixels)")
    ] = "explicit",
    sop_instance_uid: Annotated[
        str | None, typer.Option("--sop-instance-uid", help="UID of the derived instance")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", help="CPU threads for torch (1 is fastest on a busy machine)"),
    ] = None,
) -> None:
    """Edit one file with FlowEdit (no inversion) and write the result."""
    if seed is not None and key_file is not None:
        raise ConfigError("give --seed or --key, not both")
    if not source.is_file():
        raise ConfigError(f"input {source} does not exist")
    from deid_core.model_dir import verify_model_dir

    verify_model_dir(model_dir)  # a missing file is reported before a minute of imports
    if _is_dicom(source) and key_file is None and sop_instance_uid is None:
        # A random UID would give a retry a second instance; the gateway derives it keyed.
        raise ConfigError(
            "a DICOM output needs --key (its SOP Instance UID is derived from the project key, "
            "as the gateway does) or an explicit --sop-instance-uid"
        )
    offline_ml_environment()
    import torch

    from deid_core.flowedit import FlowEditor, FlowEditParams
    from deid_core.keys import ProjectKey
    from deid_core.models import load_model
    from deid_core.seeds import derive_seed

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if threads is not None:
        if threads < 1:
            raise ConfigError("--threads must be at least 1")
        torch.set_num_threads(threads)
    key = ProjectKey(key_file.read_bytes()) if key_file is not None else None

    dicom_in = _is_dicom(source)
    ds = None
    mode, alpha = "RGB", None
    if dicom_in:
        import pydicom
        from pydicom.errors import InvalidDicomError

        from dicom_io.pixels import ENCODINGS, read_frames_rgb

        if encoding not in ENCODINGS:
            raise ConfigError(f"--encoding must be one of {', '.join(ENCODINGS)}")
        try:
            ds = pydicom.dcmread(source)
        except (InvalidDicomError, OSError, ValueError) as exc:
            raise InvalidInputError(f"{source.name} is not a readable DICOM file") from exc
        frames = read_frames_rgb(ds)
        instance = (
            str(ds.get("SOPInstanceUID", "")) or hashlib.sha256(source.read_bytes()).hexdigest()
        )
    else:
        frames, mode, alpha = _read_image(source)
        instance = hashlib.sha256(source.read_bytes()).hexdigest()

    if key is not None:
        seeds = [derive_seed(key, instance, i, "identity") for i in range(len(frames))]
    else:
        seeds = [(seed or 0) + i for i in range(len(frames))]

    started = time.perf_counter()
    model = load_model(model_dir, device=device)
    overrides = {
        name: value
        for name, value in (
            ("num_steps", steps),
            ("n_max", n_max),
            ("n_min", n_min),
            ("n_avg", n_avg),
            ("source_guidance", source_guidance),
            ("target_guidance", target_guidance),
            ("max_side", max_side),
        )
        if value is not None
    }
    params = FlowEditParams.defaults_for(model.family, **overrides)
    editor = FlowEditor(model, params, source_prompt, target_prompt)
    editor.release_text_encoders()
    loaded = time.perf_counter()
    edited = editor.edit(frames, seeds)
    done = time.perf_counter()

    target.parent.mkdir(parents=True, exist_ok=True)
    if ds is not None:
        from deid_core.pseudonyms import Pseudonymizer
        from dicom_io.pixels import save_instance, write_derived_instance

        if sop_instance_uid is None:
            assert key is not None  # checked above, before loading the model
            original = str(ds.get("SOPInstanceUID", "")) or instance
            # The same keyed derivation as the gateway's pixel step (gateway/photo.py).
            sop_instance_uid = Pseudonymizer(key).derived_uid(original, "flowedit")
        derived = write_derived_instance(
            ds,
            edited,
            sop_instance_uid,
            derivation_description=editor.derivation_description(),
            encoding=encoding,
        )
        save_instance(derived, target)
    else:
        _write_image(target, edited[0], mode, alpha)

    n, h, w, _ = frames.shape
    out.print(
        f"edited {n} frame(s) of {w}x{h} with {model.identity()} ({params.describe()}) on "
        f"{device}: model {loaded - started:.1f} s, edit {done - loaded:.2f} s; wrote {target}"
    )
    if model.is_test_model:
        err.print("[yellow]warning:[/] made by a TEST MODEL with random weights")
    if ds is not None:
        err.print("note: only the pixels were edited; the metadata is not de-identified")


def register(app: typer.Typer) -> None:
    app.command("flowedit")(flowedit)
