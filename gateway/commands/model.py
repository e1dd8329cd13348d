"""Model commands: `deid-gateway model build-tiny DIR` and `deid-gateway model verify DIR`.

Heavy libraries (torch, diffusers, transformers) are imported inside the commands, so that other
commands of the CLI start fast; `offline_ml_environment` forces the hub off before they load.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer

from deid_core.errors import ConfigError
from gateway.commands import err, out

model_app = typer.Typer(
    help="Local rectified-flow models (SD3 / SD3.5 / FLUX in diffusers layout).",
    no_args_is_help=True,
)


def offline_ml_environment() -> None:
    """No hub access, ever: set before diffusers/transformers/huggingface_hub are imported (they
    read these once), and quiet their progress bars and advisory warnings on the console."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()


@model_app.command("build-tiny")
def build_tiny(
    directory: Annotated[Path, typer.Argument(help="new, empty directory to write the model to")],
    family: Annotated[str, typer.Option("--family", help="sd3 or flux")] = "sd3",
    seed: Annotated[int, typer.Option("--seed", help="seed of the random weights")] = 0,
) -> None:
    """Build a tiny random test model offline (tokenizers built in code). It loads like a real
    model, and everything made with it is labelled as made by a test model."""
    if family not in ("sd3", "flux"):
        raise ConfigError(f"--family must be sd3 or flux, not {family!r}")
    from deid_core.model_dir import ensure_new_model_dir, verify_model_dir

    ensure_new_model_dir(directory)  # before a minute of imports
    offline_ml_environment()
    from deid_core.models import build_tiny_model

    started = time.perf_counter()
    path = build_tiny_model(directory, family, seed=seed)
    report = verify_model_dir(path)
    out.print(
        f"built tiny {family} test model in {path} ({report.identity}) "
        f"in {time.perf_counter() - started:.1f} s"
    )


@model_app.command("verify")
def verify(
    directory: Annotated[Path, typer.Argument(help="model directory (diffusers layout)")],
    load: Annotated[
        bool, typer.Option("--load", help="also load every component (slow for real models)")
    ] = False,
) -> None:
    """Check that a model directory is complete; exit status 2 naming what is missing if not."""
    from deid_core.model_dir import verify_model_dir

    report = verify_model_dir(directory)
    out.print(f"{report.path}: complete {report.family} model, identity {report.identity}")
    out.print(
        "components: " + ", ".join(f"{k} ({v})" for k, v in sorted(report.components.items()))
    )
    if report.is_test_model:
        err.print("[yellow]warning:[/] this is a TEST MODEL with random weights")
    if load:
        offline_ml_environment()
        from deid_core.models import load_model

        started = time.perf_counter()
        load_model(report.path)
        out.print(f"loaded every component in {time.perf_counter() - started:.1f} s")


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
