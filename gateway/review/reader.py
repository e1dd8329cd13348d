"""Read-only queries on the journal for pages and exports.

A separate read-only SQLite connection per query: in WAL mode readers never block the gateway's
writers (the SCP and the pipeline), and a page that scans the last day of instances cannot stall
ingest by holding the journal's lock.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class JournalReader:
    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        if not self.path.exists():
            return []
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10.0)
        try:
            db.row_factory = sqlite3.Row
            return list(db.execute(sql, args).fetchall())
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            with contextlib.suppress(sqlite3.Error):
                db.close()

    def has_table(self, name: str) -> bool:
        return bool(self.rows("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)))
