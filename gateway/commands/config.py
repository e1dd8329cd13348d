"""Configuration and key commands: check-config, keygen, version."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

import gateway
from deid_core.errors import ConfigError
from deid_core.keys import ProjectKey
from gateway.commands import out
from gateway.config import load_config


def check_config(
    file: Annotated[Path, typer.Argument(help="YAML configuration file")],
    skip_key: Annotated[
        bool, typer.Option("--skip-key", help="validate the file without reading the project key")
    ] = False,
) -> None:
    """Validate a configuration file (and that its project key can be read)."""
    cfg = load_config(file)
    out.print(f"{file}: configuration is valid")
    if not skip_key:
        key = cfg.load_key()
        out.print(f"project key: {cfg.project.key.describe()}, fingerprint {key.fingerprint()}")
    for name, profile in cfg.profiles.items():
        opts = ", ".join(profile.options) or "basic profile only"
        out.print(f"profile {name}: {opts}")


def keygen(
    file: Annotated[Path, typer.Argument(help="where to write the new key (mode 0600)")],
) -> None:
    """Write a new random 256-bit project key. Refuses to overwrite an existing key: pseudonyms made
    under the old key could no longer be reproduced."""
    if file.exists():
        raise ConfigError(f"{file} already exists; refusing to overwrite a project key")
    file.parent.mkdir(parents=True, exist_ok=True)
    key = ProjectKey.generate()
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key.export_text() + "\n")
    out.print(f"wrote a new project key to {file} (fingerprint {key.fingerprint()})")


def version() -> None:
    """Print the version."""
    out.print(f"deid-gateway {gateway.__version__}")


def register(app: typer.Typer) -> None:
    app.command("check-config")(check_config)
    app.command("keygen")(keygen)
    app.command("version")(version)
