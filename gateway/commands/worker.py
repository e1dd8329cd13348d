"""`deid-gateway worker --config FILE`: a GPU worker of the pool (executor: celery).

Runs on a machine with the route models (the same configuration file as the gateways, or one with
the same routes, model directories and executor section); needs no project key, no spool and no
DICOM network: it sees pixels only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.config import load_config
from gateway.logs import configure_logging

CONFIG_OPTION = typer.Option("--config", "-c", help="YAML configuration file")


def worker(
    config: Annotated[Path, CONFIG_OPTION],
    name: Annotated[
        str | None, typer.Option("--name", help="worker name in heartbeats and logs")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, help="torch CPU threads (1 per worker on a shared CPU)"),
    ] = None,
) -> None:
    """Take pixel jobs from the broker until SIGTERM (the job in hand finishes first)."""
    from gateway.commands.model import offline_ml_environment
    from gateway.workerpool import run_worker

    cfg = load_config(config)
    configure_logging(cfg.logging.level, cfg.logging.format)
    offline_ml_environment()
    run_worker(cfg, name=name, threads=threads, loglevel=cfg.logging.level.upper())


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
