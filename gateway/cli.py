"""The `deid-gateway` command. Each group of subcommands lives in `gateway/commands/<name>.py` and
exposes `register(app)`; add a module to COMMAND_MODULES to add commands.

Errors of the project's own kinds are printed as one clear line (no traceback) with exit status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer

from deid_core.errors import DeidGatewayError
from gateway.commands import err

COMMAND_MODULES = [
    "gateway.commands.config",
    "gateway.commands.deidentify",
    "gateway.commands.serve",
    "gateway.commands.review",
    "gateway.commands.model",
    "gateway.commands.flowedit",
    "gateway.commands.worker",
    "gateway.commands.lesion",
    "gateway.commands.pull",
    "gateway.commands.orthanc",
    "gateway.commands.evaluate",
]

app = typer.Typer(
    name="deid-gateway",
    help="DICOM privacy gateway: de-identify metadata and photographs, route, forward.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main() -> None:
    try:
        app()
    except DeidGatewayError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)
