"""`deid-gateway orthanc-plugin snippet`: the Orthanc configuration that loads the gateway plugin.

Run it with the Python that has the gateway installed (e.g. the project's virtual environment):
it prints the `Plugins`, `PythonScript` and `DeidGateway` entries to merge into Orthanc's JSON
configuration, with this installation's paths, and warns when the Python version Orthanc's plugin
embeds differs from this one (compiled dependencies would not load).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Annotated

import typer

from gateway.commands import err, out
from gateway.config import load_config

PYTHON_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")

orthanc_app = typer.Typer(
    help="Run the gateway inside Orthanc (Python plugin).", no_args_is_help=True
)


def plugin_python_version(plugin: Path = PYTHON_PLUGIN) -> tuple[int, int] | None:
    """The Python version (major, minor) the plugin library links, from `ldd`; None if unknown."""
    ldd = shutil.which("ldd")
    if ldd is None or not plugin.exists():
        return None
    try:
        text = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"libpython(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def python_path() -> list[str]:
    """Where this installation's code and dependencies live, for the plugin's `sys.path`."""
    spec = importlib.util.find_spec("gateway")
    assert spec is not None and spec.submodule_search_locations
    package_parent = str(Path(next(iter(spec.submodule_search_locations))).parent)
    paths = [package_parent, sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return list(dict.fromkeys(paths))


def entry_script() -> Path:
    spec = importlib.util.find_spec("gateway.integrations")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "orthanc_entry.py"


@orthanc_app.command("snippet")
def snippet(
    config: Annotated[Path, typer.Option("--config", "-c", help="the gateway's YAML")],
    plugin: Annotated[
        Path, typer.Option("--plugin", help="Orthanc's Python plugin library")
    ] = PYTHON_PLUGIN,
) -> None:
    """Print the entries to add to Orthanc's configuration (JSON)."""
    load_config(config)  # a broken configuration is reported now, not when Orthanc starts
    linked = plugin_python_version(plugin)
    ours = sys.version_info[:2]
    if linked is None:
        err.print(f"note: cannot tell which Python {plugin} embeds (is orthanc-python installed?)")
    elif linked != ours:
        err.print(
            f"[bold red]warning:[/] Orthanc's plugin embeds Python {linked[0]}.{linked[1]}, this "
            f"is Python {ours[0]}.{ours[1]}: install the gateway with Python "
            f"{linked[0]}.{linked[1]} for the plugin, or its compiled dependencies will not load"
        )
    snippet = {
        "Plugins": [str(plugin)],
        "PythonScript": str(entry_script()),
        "DeidGateway": {
            "Configuration": str(config.resolve()),
            "PythonPath": python_path(),
        },
    }
    out.print(json.dumps(snippet, indent=2), markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(orthanc_app, name="orthanc-plugin")
