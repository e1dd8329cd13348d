"""Per-destination outbox: de-identified copies waiting to be sent, durable on disk.

`<outbox>/<destination>/<study key>/<random>.dcm`. Because the copies are on disk (and in the
journal), an archive that is down only makes the outbox grow; ingest never waits for it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.spool import DirectorySync, ensure_directory, write_durably


class Outbox:
    def __init__(self, root: Path, dirsync: DirectorySync | None = None) -> None:
        self.root = root
        self.dirsync = dirsync or DirectorySync()
        ensure_directory(root, self.dirsync)

    def put(self, destination: str, study_key: str, data: bytes | Sequence[bytes]) -> str:
        """Store one copy durably (the file's bytes, or its parts in order); return its path
        relative to the outbox root."""
        parts = (data,) if isinstance(data, bytes) else data
        directory = self.root / destination / study_key
        name = uuid.uuid4().hex + ".dcm"
        for attempt in range(3):
            ensure_directory(directory, self.dirsync)
            try:
                write_durably(directory, name, parts, self.dirsync)
                break
            except FileNotFoundError:
                # The forwarder removed the study's folder (its last sent copy) between our check
                # and our write: photographs of one study reach the outbox one by one.
                if attempt == 2:
                    raise
        return str((directory / name).relative_to(self.root))

    def path(self, relative: str) -> Path:
        return self.root / relative

    def remove(self, relative: str) -> None:
        path = self.root / relative
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # the study's folder, once empty

    def remove_orphans(
        self,
        live: Callable[[], set[str]],
        older_than: float | None = None,
    ) -> int:
        """Delete copies no pending journal row refers to (written before a crash, or already
        sent): they would never be sent, or would be sent twice. Only files last modified before
        `older_than` (the start of this process) go: a copy another process (a quarantine
        release) is writing right now is not an orphan. `live` is asked again just before
        deleting, so a row committed in the meantime keeps its file."""
        candidates = []
        referenced = live()
        for path in list(self.root.glob("*/*/*")):
            relative = str(path.relative_to(self.root))
            if not path.is_file() or relative in referenced:
                continue
            if older_than is not None and path.stat().st_mtime >= older_than:
                continue
            candidates.append(relative)
        if not candidates:
            return 0
        referenced = live()
        removed = 0
        for relative in candidates:
            if relative not in referenced:
                self.remove(relative)
                removed += 1
        return removed

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*/*/*.dcm"))
