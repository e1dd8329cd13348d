"""dcmtk's storescu and echoscu as the modality (TCP_NODELAY=1, which Debian's dcmtk honours)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

STORESCU = shutil.which("storescu")
ECHOSCU = shutil.which("echoscu")


def require_dcmtk() -> None:
    if STORESCU is None or ECHOSCU is None:
        pytest.skip("dcmtk (storescu/echoscu) is not installed")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def echoscu(
    host: str, port: int, calling: str, called: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    assert ECHOSCU is not None
    return subprocess.run(
        [ECHOSCU, "-aet", calling, "-aec", called, "-to", "10", host, str(port)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
    )


def storescu_command(
    host: str, port: int, calling: str, called: str, files: Sequence[Path] | Path
) -> list[str]:
    assert STORESCU is not None
    args = [STORESCU, "-v", "-aet", calling, "-aec", called, "-to", "30", "-nh"]
    if isinstance(files, Path):
        args += ["+sd", "+r", host, str(port), str(files)]
    else:
        args += [host, str(port), *map(str, files)]
    return args


def storescu(
    host: str,
    port: int,
    calling: str,
    called: str,
    files: Sequence[Path] | Path,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Send files (or every file under a folder) over one association."""
    return subprocess.run(
        storescu_command(host, port, calling, called, files),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
    )


def storescu_popen(
    host: str, port: int, calling: str, called: str, files: Sequence[Path] | Path
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        storescu_command(host, port, calling, called, files),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
