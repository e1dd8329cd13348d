"""Make files and folders unwritable, even for root, with the file system's immutable attribute.

Tests run as root here (network namespaces need it), and root ignores permission bits, so
`chmod` cannot make a journal unwritable. `chattr +i` can: no new entries in an immutable folder,
no writes to an immutable file, for anyone. To the gateway that looks like a file system gone
read-only after an I/O error: SQLite answers "disk I/O error", creating a file EPERM.

Never set it on SQLite's `-shm` file: SQLite writes that file through a shared memory map, and a
write to an immutable mapped file kills the process with SIGBUS.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _chattr(flag: str, paths: list[Path]) -> subprocess.CompletedProcess[str]:
    chattr = shutil.which("chattr")
    assert chattr is not None
    return subprocess.run(
        [chattr, flag, *map(str, paths)], capture_output=True, text=True, timeout=30
    )


def journal_files(journal: Path) -> list[Path]:
    """The journal's folder, database and write-ahead log (not its shared-memory file)."""
    paths = [journal.parent, journal, journal.with_name(journal.name + "-wal")]
    return [p for p in paths if p.exists()]


def immutable_available(probe_dir: Path) -> str | None:
    """None when `chattr +i` works in `probe_dir`, otherwise why not."""
    if shutil.which("chattr") is None:
        return "chattr (e2fsprogs) is not installed"
    probe = probe_dir / ".immutable-probe"
    probe.write_text("x")
    try:
        result = _chattr("+i", [probe])
        if result.returncode != 0:
            return f"chattr +i does not work here: {result.stderr.strip()}"
        _chattr("-i", [probe])
        return None
    finally:
        probe.unlink(missing_ok=True)


@contextmanager
def unwritable(paths: list[Path]) -> Iterator[None]:
    """`paths` immutable inside the block, writable again after it, whatever happens."""
    assert not any(p.name.endswith("-shm") for p in paths), "never an mmapped -shm file"
    why = immutable_available(paths[0] if paths[0].is_dir() else paths[0].parent)
    if why:
        pytest.skip(why)
    result = _chattr("+i", paths)
    try:
        assert result.returncode == 0, result.stderr
        yield
    finally:
        _chattr("-i", paths)
