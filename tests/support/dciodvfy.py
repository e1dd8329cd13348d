"""Running dicom3tools' `dciodvfy` and comparing what it says about an input and an output.

dciodvfy checks an instance against its IOD. pydicom's own test files already carry errors, so
a de-identified output is judged by the errors it adds: the output's error set minus the input's,
after normalising what de-identification legitimately changes (UIDs, numbers, quoted values).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

_UID = re.compile(r"\b\d+(?:\.\d+)*\b")


def available() -> bool:
    return shutil.which("dciodvfy") is not None


_NAMED = re.compile(r"(attribute |Element=|Module=)?<([^<>]*)>")


def normalise(line: str) -> str:
    # Keep attribute and module names (<Patient's Name>, Element=<PatientName>), drop values.
    line = _NAMED.sub(lambda m: m.group(0) if m.group(1) else "<value>", line)
    return _UID.sub("<num>", line).strip()  # UIDs and numbers alike (an invalid UID may be "0")


def errors(path: Path) -> set[str]:
    """dciodvfy's error lines for one file, normalised."""
    proc = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, errors="replace", timeout=120
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    return {normalise(line) for line in lines if line.startswith("Error")}


def added_errors(before: Path, after: Path) -> set[str]:
    return errors(after) - errors(before)
