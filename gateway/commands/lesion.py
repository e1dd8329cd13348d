"""`deid-gateway lesion-check`: run the pathology gate on one pair of images by hand.

Prints the figures (outcome, IoU, mask areas) and, with --panel, writes the QA panel. Exit status 0
when the gate would forward the candidate, 1 when it would quarantine it, 2 on an error.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from PIL import Image, UnidentifiedImageError

from deid_core.errors import ConfigError, InvalidInputError
from gateway.commands import err, out
from gateway.commands.model import offline_ml_environment

if TYPE_CHECKING:
    from deid_core.lesion import TwinGenerator

# Kept in step with deid_core.lesion.synthesis (not imported: that would load scikit-image for
# every command of the CLI); a unit test checks they agree.
DEFAULT_LESION_PROMPT = "a clinical photograph of skin with a red inflamed lesion"
DEFAULT_HEALTHY_PROMPT = "a clinical photograph of healthy normal skin"


class MethodChoice(StrEnum):
    twin = "twin"
    synthesis_free = "synthesis_free"


class ChannelChoice(StrEnum):
    ab = "ab"
    a = "a"


def _is_dicom(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _dicom_rgb(path: Path, label: str) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    from dicom_io.pixels import read_frames_rgb

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise InvalidInputError(f"{label}: not a readable DICOM file") from exc
    frames = read_frames_rgb(ds)
    if len(frames) > 1:
        err.print(f"note: {label} has {len(frames)} frames; the gate checks the first")
    return np.ascontiguousarray(frames[0])


def read_rgb(path: Path, label: str) -> np.ndarray:
    """A PNG, JPEG (anything Pillow reads) or DICOM colour image as uint8 RGB. Errors name the
    image by `label`, not by its file name."""
    if not path.is_file():
        raise InvalidInputError(f"{label}: no such file")
    if _is_dicom(path):
        return _dicom_rgb(path, label)
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInputError(f"{label}: not a readable PNG, JPEG or DICOM image") from exc


def healthy_twin_generator(
    model_dir: Path,
    lesion_prompt: str,
    healthy_prompt: str,
    twin_size: int,
    device: str,
    threads: int | None,
) -> tuple[TwinGenerator, bool]:
    """FlowEdit with the "pathological -> healthy" prompt pair on a local model directory; also
    whether the model is the tiny random test model (its twins are meaningless)."""
    from deid_core.model_dir import verify_model_dir

    verify_model_dir(model_dir)  # a missing file is reported before a minute of imports
    offline_ml_environment()
    import torch

    from deid_core.lesion import flowedit_twins
    from deid_core.models import load_model

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if threads is not None:
        if threads < 1:
            raise ConfigError("--threads must be at least 1")
        torch.set_num_threads(threads)
    model = load_model(model_dir, device=device)
    generator = flowedit_twins(model, lesion_prompt, healthy_prompt, twin_size)
    model.release_text_encoders()
    return generator, bool(model.is_test_model)


def lesion_check(
    original: Annotated[Path, typer.Argument(help="original photograph (PNG, JPEG or DICOM)")],
    candidate: Annotated[
        Path, typer.Argument(help="its de-identified version (same size as the original)")
    ],
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", metavar="DIR", help="local model directory for healthy twins (FlowEdit)"
        ),
    ] = None,
    method: Annotated[
        MethodChoice | None,
        typer.Option(
            help="how to find the lesion [default: twin with --model, else synthesis_free]"
        ),
    ] = None,
    threshold: Annotated[
        float, typer.Option(help="the IoU the two lesion masks must reach", min=0.01, max=1.0)
    ] = 0.67,
    panel: Annotated[
        Path | None,
        typer.Option(
            "--panel", metavar="OUT.png", help="write the QA panel here (it shows the original)"
        ),
    ] = None,
    channels: Annotated[
        ChannelChoice, typer.Option(help="synthesis-free cue: a* and b*, or a* (redness) only")
    ] = ChannelChoice.ab,
    twin_size: Annotated[
        int, typer.Option(help="longer side of the healthy twins in pixels", min=64)
    ] = 512,
    lesion_prompt: Annotated[
        str, typer.Option(help="source prompt of the healthy-twin edit")
    ] = DEFAULT_LESION_PROMPT,
    healthy_prompt: Annotated[
        str, typer.Option(help="target prompt of the healthy-twin edit")
    ] = DEFAULT_HEALTHY_PROMPT,
    seed: Annotated[int, typer.Option(help="noise seed of both twins")] = 0,
    device: Annotated[
        str, typer.Option(help="torch device for the model: cpu, cuda or auto")
    ] = "auto",
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads for torch (1 is fastest on a busy machine)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the figures as JSON")] = False,
) -> None:
    """Check that the lesion of ORIGINAL survived in CANDIDATE (exit 0: forward, 1: quarantine)."""
    # Imported here so that the other commands start without scikit-image.
    from deid_core.lesion import GateMethod, LesionGate, LesionGateParams, SkinRelativeParams
    from deid_core.qa_panel import render_panel

    chosen = (
        GateMethod(method.value)
        if method
        else (GateMethod.TWIN if model else GateMethod.SYNTHESIS_FREE)
    )
    if chosen is GateMethod.TWIN and model is None:
        raise ConfigError("--method twin needs --model DIR (a local model directory)")
    image_o = read_rgb(original, "original")
    image_c = read_rgb(candidate, "candidate")

    generator: TwinGenerator | None = None
    test_model = False
    if chosen is GateMethod.TWIN:
        assert model is not None
        generator, test_model = healthy_twin_generator(
            model, lesion_prompt, healthy_prompt, twin_size, device, threads
        )
    params = LesionGateParams(
        method=chosen,
        iou_threshold=threshold,
        twin_long_side=twin_size,
        skin=SkinRelativeParams(channels=channels.value),
        cross_check=chosen is GateMethod.TWIN,
    )
    result = LesionGate(params, generator).check(image_o, image_c, seed=seed)
    note = (
        "healthy twins made by a TEST MODEL (random weights): this twin mask means nothing"
        if test_model
        else None
    )

    figures = result.figures()
    if panel is not None:
        png = render_panel(image_o, image_c, result, note=note)
        panel.parent.mkdir(parents=True, exist_ok=True)
        panel.write_bytes(png)
        figures["panel"] = str(panel)
    if note:
        figures["note"] = note
    if as_json:
        out.print(json.dumps(figures, indent=2), markup=False)
    else:
        verdict = "forward" if result.accepted else "quarantine"
        iou_text = "n/a" if result.iou is None else f"{result.iou:.3f}"
        rows = [
            ("outcome", f"{result.outcome.value} ({verdict})"),
            ("iou", f"{iou_text} (threshold {result.iou_threshold:.2f})"),
            (
                "original mask",
                f"{result.original_area} px ({100 * result.original_fraction:.2f}% of "
                f"{result.image_area} px)",
            ),
            (
                "candidate mask",
                f"{result.candidate_area} px ({100 * result.candidate_fraction:.2f}%)",
            ),
            ("method", result.method.value),
        ]
        if result.cross_check_iou is not None:
            rows.append(
                ("cross-check iou", f"{result.cross_check_iou:.3f} (twin vs synthesis-free)")
            )
        if panel is not None:
            rows.append(("panel", str(panel)))
        if note:
            rows.append(("note", note))
        for key, value in rows:
            out.print(f"{key:<16}{value}", markup=False)
    if not result.accepted:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.command("lesion-check")(lesion_check)
