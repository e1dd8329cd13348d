"""The spool: received instances on disk, durable before the sender hears success.

A received instance is written as `incoming/<day>/<random>.part`, fsynced, renamed to `.dcm`, and
its directory is fsynced, so after a crash a `.dcm` file is complete and present, and a `.part`
file was never acknowledged (it is deleted on start). File names are random: no UID or name of a
patient appears in a path.

Directory fsyncs are shared between concurrent writers (group commit, `DirectorySync`): a writer
whose rename is already covered by a sync that started after it simply waits for that sync rather
than issuing its own. Every writer still returns only once a directory fsync that began after its
rename has completed, so the per-instance guarantee is unchanged.

The spool refuses new data (`SpoolFull`, answered 0xA700 so the sender keeps it) when its file
system is fuller than the high-water mark or has less than `min_free_bytes` free.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from deid_core.errors import RetryableError


class SpoolFull(RetryableError):
    """The spool's file system is past its high-water mark: refuse, the sender retries later."""


class DirectorySync:
    """fsync of directories with group commit between threads."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._requested: dict[str, int] = {}
        self._synced: dict[str, int] = {}
        self._running: set[str] = set()

    def sync(self, directory: Path) -> None:
        key = str(directory)
        with self._cond:
            ticket = self._requested.get(key, 0) + 1
            self._requested[key] = ticket
            while True:
                if self._synced.get(key, 0) >= ticket:
                    return
                if key not in self._running:
                    self._running.add(key)
                    covers = self._requested[key]
                    break
                self._cond.wait()
        try:
            fsync_directory(directory)
        finally:
            with self._cond:
                self._running.discard(key)
                self._synced[key] = max(self._synced.get(key, 0), covers)
                self._cond.notify_all()


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(
    directory: Path, name: str, parts: Sequence[bytes], dirsync: DirectorySync
) -> int:
    """Write `parts` to `directory/name` via a temporary name, fsync file and directory; return
    the size. The file is either absent or complete after a crash."""
    tmp = directory / (name + ".part")
    final = directory / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        size = 0
        for part in parts:
            view = memoryview(part)
            while view:
                written = os.write(fd, view)
                view = view[written:]
                size += written
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.rename(tmp, final)
    dirsync.sync(directory)
    return size


def probe_directory(directory: Path) -> None:
    """Create, write, fsync and remove a small file in `directory`: raises OSError when new files
    cannot be made there (read-only or full file system, permissions, an immutable folder)."""
    probe = directory / f".probe-{uuid.uuid4().hex}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"probe")
        os.fsync(fd)
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def ensure_directory(path: Path, dirsync: DirectorySync) -> None:
    """Create `path` (and parents) durably: each new directory's parent is fsynced."""
    if path.is_dir():
        return
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue
        dirsync.sync(d.parent)


@dataclass(frozen=True)
class SpooledFile:
    relative_path: str
    size: int


class Spool:
    """Received instances, durable, under `root/incoming`."""

    def __init__(
        self,
        root: Path,
        *,
        high_water_percent: float = 90.0,
        min_free_bytes: int = 0,
        dirsync: DirectorySync | None = None,
    ) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.high_water_percent = high_water_percent
        self.min_free_bytes = min_free_bytes
        self.dirsync = dirsync or DirectorySync()
        self._day_lock = threading.Lock()
        self._day: tuple[str, Path] | None = None
        ensure_directory(self.incoming, self.dirsync)

    def path(self, relative: str) -> Path:
        return self.root / relative

    def _day_dir(self) -> Path:
        day = time.strftime("%Y%m%d", time.gmtime())
        with self._day_lock:
            if self._day is None or self._day[0] != day:
                path = self.incoming / day
                ensure_directory(path, self.dirsync)
                self._day = (day, path)
            return self._day[1]

    def refusal_free_bytes(self) -> int:
        """Free space below which the spool refuses instances: the stricter of `min_free_bytes`
        and the high-water percentage of the file system's size."""
        st = os.statvfs(self.root)
        total = st.f_blocks * st.f_frsize
        return max(self.min_free_bytes, int(total * (100.0 - self.high_water_percent) / 100.0))

    def check_writable(self) -> None:
        """Raise when the spool cannot take an instance now: SpoolFull past the high-water mark,
        OSError when no file can be written where received instances go."""
        self.check_space()
        probe_directory(self._day_dir())

    def check_space(self, incoming_bytes: int = 0) -> None:
        """Raise SpoolFull when accepting `incoming_bytes` more would pass the high-water mark."""
        st = os.statvfs(self.root)
        total = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize - incoming_bytes
        used_percent = 100.0 * (total - free) / total if total else 100.0
        if free < self.min_free_bytes or used_percent > self.high_water_percent:
            raise SpoolFull(
                f"spool file system past its high-water mark ({used_percent:.1f}% used, "
                f"{max(free, 0)} bytes free)"
            )

    def write(self, parts: Sequence[bytes]) -> SpooledFile:
        """Durably store one received instance."""
        self.check_space(sum(len(p) for p in parts))
        directory = self._day_dir()
        name = uuid.uuid4().hex + ".dcm"
        size = write_durably(directory, name, parts, self.dirsync)
        return SpooledFile(str((directory / name).relative_to(self.root)), size)

    def read(self, relative: str) -> bytes:
        return (self.root / relative).read_bytes()

    def remove(self, relative: str) -> None:
        (self.root / relative).unlink(missing_ok=True)

    def files(self) -> Iterator[Path]:
        """Every complete spooled file."""
        yield from self.incoming.glob("*/*.dcm")

    def remove_partial_files(self) -> int:
        """Delete `.part` files: writes a crash interrupted, never acknowledged."""
        count = 0
        for part in self.incoming.glob("*/*.part"):
            part.unlink(missing_ok=True)
            count += 1
        return count

    def remove_finished(self, finished: set[str]) -> int:
        """Delete spooled files whose instance reached a final state (its deletion was cut off
        by a crash after the journal commit). Files of unfinished rows and files without a row
        (adopted instead) are never touched."""
        removed = 0
        for path in self.files():
            if str(path.relative_to(self.root)) in finished:
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            for day in self.incoming.iterdir():
                self.dirsync.sync(day)
        return removed

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.incoming.glob("*/*") if p.is_file())

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free
