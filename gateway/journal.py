"""The journal: where every received instance is in its life, in SQLite (WAL).

One row per received instance (`instances`), one per (instance, destination) copy waiting to be
sent (`outbox`), one per photograph whose pixel job is out (`pixel_jobs`), one per quarantine
entry (`quarantine`) and one per operator decision (`decisions`). Every stage moves rows forward
in one transaction *after* the files it made are durable, so a crash at any point leaves either
the old state (the stage runs again; its output is deterministic) or the new one. A restart
resumes every unfinished row.

Durability: WAL with `synchronous=NORMAL`. A commit is then durable against a crash of the process
(`kill -9`) but the last commits may roll back on a power loss. That is safe for the rows that only
move work forward because the journal is not the only record: the SCP fsyncs each received file and
its directory before it writes the row, and the spool files carry their sender in their File Meta
Information, so on start `Spool.adopt_orphans` re-registers any spooled file without a row.
`synchronous=FULL` on every commit would add an fsync of the WAL to every C-STORE for no extra
safety. Later stages can repeat work after a power loss (at-least-once; pseudonyms are
deterministic, so a re-sent instance is identical).

The exception: a commit after which a file is deleted (a spool original once its instance is
finished, an outbox copy once sent or dead-lettered) is made with `durable=True`, which fsyncs the
WAL for that commit (and so for every commit before it). Otherwise a power loss could roll the row
back to a state that needs the file the gateway had already deleted.

Rows hold no PHI: studies are identified by a keyed hash (`study_key`), files by random names.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any


class InstanceState(StrEnum):
    RECEIVED = "received"  # durable in the spool, waiting for its study to be complete
    EDITING = "editing"  # a pixel job (photograph edit and gate) is out; see pixel_jobs
    QUEUED = "queued"  # de-identified copies are in the outbox
    FORWARDED = "forwarded"  # every destination has it; the spool file is gone
    QUARANTINED = "quarantined"  # held in quarantine (rejected or dead-lettered)
    LOST = "lost"  # its spool file vanished before it was processed: nothing left to process


class OutboxState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"  # dead-lettered to quarantine after the configured attempts


_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY,
    spool_path TEXT NOT NULL UNIQUE,
    study_key TEXT NOT NULL,
    association_id TEXT NOT NULL DEFAULT '',
    calling_ae TEXT NOT NULL DEFAULT '',
    called_ae TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL DEFAULT 0,
    received_at REAL NOT NULL,
    state TEXT NOT NULL,
    route TEXT,
    reason TEXT,
    override TEXT,
    updated_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS instances_state_study ON instances(state, study_key);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    instance_id INTEGER NOT NULL REFERENCES instances(id),
    destination TEXT NOT NULL,
    path TEXT NOT NULL UNIQUE,
    study_key TEXT NOT NULL,
    route TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(destination, state, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_instance ON outbox(instance_id);
CREATE TABLE IF NOT EXISTS quarantine (
    id TEXT PRIMARY KEY,
    instance_id INTEGER REFERENCES instances(id),
    reason TEXT NOT NULL,
    route TEXT NOT NULL DEFAULT '',
    destination TEXT NOT NULL DEFAULT '',
    study_key TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pixel_jobs (
    job_id TEXT PRIMARY KEY,
    instance_id INTEGER NOT NULL UNIQUE REFERENCES instances(id),
    route TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at REAL NOT NULL,
    submitted_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS pixel_jobs_due ON pixel_jobs(due_at);
CREATE TABLE IF NOT EXISTS health_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    entry_id TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
"""


@dataclass(frozen=True)
class InstanceRow:
    id: int
    spool_path: str
    study_key: str
    association_id: str
    calling_ae: str
    called_ae: str
    size: int
    received_at: float
    state: str
    route: str | None
    reason: str | None
    override: dict[str, Any]
    #: Times the pipeline began processing it (counted before it starts, so a crash counts too).
    attempts: int = 0


@dataclass(frozen=True)
class OutboxRow:
    id: int
    instance_id: int
    destination: str
    path: str
    study_key: str
    route: str
    state: str
    attempts: int
    next_attempt_at: float
    #: When the copy entered the outbox (for the forward stage's latency).
    created_at: float = 0.0


@dataclass(frozen=True)
class QuarantineRow:
    id: str
    instance_id: int | None
    reason: str
    route: str
    destination: str
    study_key: str
    state: str
    created_at: float


@dataclass(frozen=True)
class PixelJobRow:
    """A photograph's pixel job that has not come back. `attempts` counts submissions the broker
    took; `due_at` is when it is (re)submitted: after the result timeout, or after a delay when
    the broker refused it."""

    job_id: str
    instance_id: int
    route: str
    attempts: int
    due_at: float
    submitted_at: float | None


def _instance(row: sqlite3.Row) -> InstanceRow:
    return InstanceRow(
        id=row["id"],
        spool_path=row["spool_path"],
        study_key=row["study_key"],
        association_id=row["association_id"],
        calling_ae=row["calling_ae"],
        called_ae=row["called_ae"],
        size=row["size"],
        received_at=row["received_at"],
        state=row["state"],
        route=row["route"],
        reason=row["reason"],
        override=json.loads(row["override"]) if row["override"] else {},
        attempts=row["attempts"],
    )


def _outbox(row: sqlite3.Row) -> OutboxRow:
    return OutboxRow(
        id=row["id"],
        instance_id=row["instance_id"],
        destination=row["destination"],
        path=row["path"],
        study_key=row["study_key"],
        route=row["route"],
        state=row["state"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"],
    )


def _pixel_job(row: sqlite3.Row) -> PixelJobRow:
    return PixelJobRow(
        job_id=row["job_id"],
        instance_id=row["instance_id"],
        route=row["route"],
        attempts=row["attempts"],
        due_at=row["due_at"],
        submitted_at=row["submitted_at"],
    )


def _quarantine(row: sqlite3.Row) -> QuarantineRow:
    return QuarantineRow(
        id=row["id"],
        instance_id=row["instance_id"],
        reason=row["reason"],
        route=row["route"],
        destination=row["destination"],
        study_key=row["study_key"],
        state=row["state"],
        created_at=row["created_at"],
    )


class Journal:
    """Thread-safe access to the journal database (one connection, serialised by a lock)."""

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._synchronous = synchronous
        with self.transaction() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            columns = {r[1] for r in db.execute("PRAGMA table_info(instances)")}
            if "attempts" not in columns:  # a journal written before attempts were counted
                db.execute("ALTER TABLE instances ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")
        self._closed = False

    @contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction. `durable=True`: the commit survives a power loss
        (`synchronous=FULL` for this commit: the WAL is fsynced), for commits after which a file
        is deleted."""
        with self._lock:
            if durable:
                self._db.execute("PRAGMA synchronous=FULL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if durable:
                    self._db.execute(f"PRAGMA synchronous={self._synchronous}")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    def close(self) -> None:
        """Checkpoint the WAL into the database and close. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            # another process may hold a read lock; the WAL then stays valid as it is
            with contextlib.suppress(sqlite3.OperationalError):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
            self._closed = True

    def check_writable(self) -> None:
        """Commit one small write (a one-row table), as every stage must be able to; raises
        sqlite3.Error when the journal cannot be written (read-only or full file system, I/O
        error, a lock held elsewhere for longer than the busy timeout)."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO health_probe (id, at) VALUES (1, ?)", (time.time(),))

    # --- instances ---------------------------------------------------------------------------

    def add_received(
        self,
        spool_path: str,
        study_key: str,
        *,
        association_id: str = "",
        calling_ae: str = "",
        called_ae: str = "",
        size: int = 0,
        received_at: float | None = None,
        override: dict[str, Any] | None = None,
    ) -> int:
        now = time.time()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO instances (spool_path, study_key, association_id, calling_ae,"
                " called_ae, size, received_at, state, override, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    spool_path,
                    study_key,
                    association_id,
                    calling_ae,
                    called_ae,
                    size,
                    received_at if received_at is not None else now,
                    InstanceState.RECEIVED.value,
                    json.dumps(override) if override else None,
                    now,
                ),
            )
            return int(cur.lastrowid or 0)

    def known_spool_paths(self) -> set[str]:
        return {r[0] for r in self._query("SELECT spool_path FROM instances")}

    def stable_studies(self, older_than: float, limit: int = 50) -> list[str]:
        """Studies with instances waiting whose newest arrival is older than `older_than`."""
        rows = self._query(
            "SELECT study_key, MAX(received_at) AS newest FROM instances WHERE state=?"
            " GROUP BY study_key HAVING newest <= ? ORDER BY newest LIMIT ?",
            (InstanceState.RECEIVED.value, older_than, limit),
        )
        return [r["study_key"] for r in rows]

    def streaming_studies(self, batch: int, limit: int = 50) -> list[str]:
        """Studies with at least `batch` instances waiting, stable or not (streamed batches)."""
        rows = self._query(
            "SELECT study_key, COUNT(*) AS waiting FROM instances WHERE state=?"
            " GROUP BY study_key HAVING waiting >= ? ORDER BY MIN(id) LIMIT ?",
            (InstanceState.RECEIVED.value, batch, limit),
        )
        return [r["study_key"] for r in rows]

    def received_in_study(self, study_key: str, limit: int | None = None) -> list[InstanceRow]:
        """The study's waiting instances in arrival order (the first `limit` of them)."""
        return [
            _instance(r)
            for r in self._query(
                "SELECT * FROM instances WHERE state=? AND study_key=? ORDER BY id LIMIT ?",
                (InstanceState.RECEIVED.value, study_key, -1 if limit is None else limit),
            )
        ]

    def instance(self, instance_id: int) -> InstanceRow | None:
        rows = self._query("SELECT * FROM instances WHERE id=?", (instance_id,))
        return _instance(rows[0]) if rows else None

    def count_attempts(self, instance_ids: Sequence[int], delta: int = 1) -> None:
        """The pipeline is about to process these instances: count one attempt each, committed
        first, so an instance that crashes the process is also counted (and given up on).
        `delta=-1` takes back an attempt that failed for a reason not the instance's own."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "UPDATE instances SET attempts=MAX(attempts+?, 0), updated_at=? WHERE id=?",
                [(delta, now, i) for i in instance_ids],
            )

    def mark_lost(self, instance_id: int, reason: str) -> None:
        """Nothing is left of the instance to process (its spool file vanished): a final state,
        so it is not looked for again."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE instances SET state=?, reason=?, updated_at=? WHERE id=?",
                (InstanceState.LOST.value, reason, now, instance_id),
            )
            db.execute("DELETE FROM pixel_jobs WHERE instance_id=?", (instance_id,))

    def finished_spool_paths(self) -> set[str]:
        """Spool files of instances in a final state: no stage needs them any more."""
        finished = (
            InstanceState.FORWARDED.value,
            InstanceState.QUARANTINED.value,
            InstanceState.LOST.value,
        )
        return {
            r[0]
            for r in self._query(
                "SELECT spool_path FROM instances WHERE state IN (?,?,?)", finished
            )
        }

    def mark_queued(
        self, instance_id: int, route: str, copies: Sequence[tuple[str, str]], study_key: str
    ) -> list[int]:
        """The instance's de-identified copies are durable in the outbox: one pending row per
        (destination, outbox path)."""
        return self.mark_queued_many([(instance_id, route, copies)], study_key)

    def mark_queued_many(
        self,
        instances: Sequence[tuple[int, str, Sequence[tuple[str, str]]]],
        study_key: str,
    ) -> list[int]:
        """Several instances' copies in one transaction (a whole study at once)."""
        now = time.time()
        ids = []
        with self.transaction() as db:
            for instance_id, route, copies in instances:
                for destination, path in copies:
                    cur = db.execute(
                        "INSERT INTO outbox (instance_id, destination, path, study_key, route,"
                        " state, next_attempt_at, created_at, updated_at)"
                        " VALUES (?,?,?,?,?,?,?,?,?)",
                        (
                            instance_id,
                            destination,
                            path,
                            study_key,
                            route,
                            OutboxState.PENDING.value,
                            now,
                            now,
                            now,
                        ),
                    )
                    ids.append(int(cur.lastrowid or 0))
                db.execute(
                    "UPDATE instances SET state=?, route=?, updated_at=? WHERE id=?",
                    (InstanceState.QUEUED.value, route, now, instance_id),
                )
                db.execute("DELETE FROM pixel_jobs WHERE instance_id=?", (instance_id,))
        return ids

    def mark_quarantined(
        self,
        instance_id: int,
        entry_id: str,
        reason: str,
        route: str,
        study_key: str,
        destination: str = "",
    ) -> None:
        now = time.time()
        # durable: the caller deletes the spool original (or the outbox copy) next
        with self.transaction(durable=True) as db:
            db.execute(
                "INSERT INTO quarantine (id, instance_id, reason, route, destination, study_key,"
                " state, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (entry_id, instance_id, reason, route, destination, study_key, "held", now, now),
            )
            if not destination:
                db.execute(
                    "UPDATE instances SET state=?, route=?, reason=?, updated_at=? WHERE id=?",
                    (InstanceState.QUARANTINED.value, route, reason, now, instance_id),
                )
                db.execute("DELETE FROM pixel_jobs WHERE instance_id=?", (instance_id,))

    def finished_instances(self, instance_ids: Iterable[int]) -> list[InstanceRow]:
        """Instances (among `instance_ids`) in state queued with no pending outbox row left: mark
        them forwarded (every copy sent) or quarantined (a copy dead-lettered) and return them."""
        done: list[InstanceRow] = []
        now = time.time()
        # durable: the caller deletes the finished instances' spool originals next
        with self.transaction(durable=True) as db:
            for iid in set(instance_ids):
                states = [
                    r[0] for r in db.execute("SELECT state FROM outbox WHERE instance_id=?", (iid,))
                ]
                if not states or OutboxState.PENDING.value in states:
                    continue
                row = db.execute(
                    "SELECT * FROM instances WHERE id=? AND state=?",
                    (iid, InstanceState.QUEUED.value),
                ).fetchone()
                if row is None:
                    continue
                final = (
                    InstanceState.FORWARDED
                    if all(s == OutboxState.SENT.value for s in states)
                    else InstanceState.QUARANTINED
                )
                db.execute(
                    "UPDATE instances SET state=?, updated_at=? WHERE id=?",
                    (final.value, now, iid),
                )
                done.append(_instance(row))
        return done

    # --- pixel jobs --------------------------------------------------------------------------
    # A job row lives exactly as long as its instance is `editing`: it is written with that state
    # and deleted in the transaction that moves the instance on (queued or quarantined), so a
    # result that comes twice, or after the instance went on, finds no row and is ignored.

    def add_pixel_job(self, instance_id: int, job_id: str, route: str, due_at: float) -> None:
        """The instance waits for its photograph's pixel job (not submitted yet)."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO pixel_jobs (job_id, instance_id, route, attempts, due_at,"
                " created_at, updated_at) VALUES (?,?,?,0,?,?,?)",
                (job_id, instance_id, route, due_at, now, now),
            )
            db.execute(
                "UPDATE instances SET state=?, route=?, updated_at=? WHERE id=?",
                (InstanceState.EDITING.value, route, now, instance_id),
            )

    def pixel_job_submitted(self, job_id: str, attempts: int, due_at: float) -> None:
        """The broker (or the local executor) took the job; re-submit at `due_at` unless its
        result came first."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE pixel_jobs SET attempts=?, due_at=?, submitted_at=?, updated_at=?"
                " WHERE job_id=?",
                (attempts, due_at, now, now, job_id),
            )

    def pixel_job_deferred(self, job_id: str, due_at: float) -> None:
        """Submission failed (broker away) or must be repeated: try again at `due_at`."""
        with self.transaction() as db:
            db.execute(
                "UPDATE pixel_jobs SET due_at=?, updated_at=? WHERE job_id=?",
                (due_at, time.time(), job_id),
            )

    def pixel_job(self, job_id: str) -> PixelJobRow | None:
        rows = self._query("SELECT * FROM pixel_jobs WHERE job_id=?", (job_id,))
        return _pixel_job(rows[0]) if rows else None

    def pixel_jobs_due(self, now: float, limit: int = 100) -> list[PixelJobRow]:
        return [
            _pixel_job(r)
            for r in self._query(
                "SELECT * FROM pixel_jobs WHERE due_at<=? ORDER BY due_at, created_at LIMIT ?",
                (now, limit),
            )
        ]

    def reschedule_pixel_jobs(self, due_at: float) -> int:
        """Make every open job due at `due_at` (on start with an in-process executor, whose
        queue died with the previous process)."""
        with self.transaction() as db:
            cur = db.execute("UPDATE pixel_jobs SET due_at=?", (due_at,))
            return int(cur.rowcount or 0)

    def pixel_job_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM pixel_jobs")[0][0])

    # --- outbox ------------------------------------------------------------------------------

    def next_batch(self, destination: str, now: float, limit: int) -> list[OutboxRow]:
        """The due rows of the study whose earliest row is due first, up to `limit`."""
        first = self._query(
            "SELECT study_key FROM outbox WHERE destination=? AND state=? AND next_attempt_at<=?"
            " ORDER BY next_attempt_at, id LIMIT 1",
            (destination, OutboxState.PENDING.value, now),
        )
        if not first:
            return []
        return [
            _outbox(r)
            for r in self._query(
                "SELECT * FROM outbox WHERE destination=? AND state=? AND study_key=?"
                " AND next_attempt_at<=? ORDER BY id LIMIT ?",
                (destination, OutboxState.PENDING.value, first[0][0], now, limit),
            )
        ]

    def next_due_at(self, destination: str) -> float | None:
        rows = self._query(
            "SELECT MIN(next_attempt_at) FROM outbox WHERE destination=? AND state=?",
            (destination, OutboxState.PENDING.value),
        )
        value = rows[0][0] if rows else None
        return float(value) if value is not None else None

    def mark_sent(self, outbox_ids: Sequence[int]) -> None:
        now = time.time()
        with self.transaction(durable=True) as db:  # the sent copies are deleted next
            db.executemany(
                "UPDATE outbox SET state=?, updated_at=? WHERE id=?",
                [(OutboxState.SENT.value, now, i) for i in outbox_ids],
            )

    def reschedule(self, outbox_id: int, attempts: int, next_at: float, error: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE outbox SET attempts=?, next_attempt_at=?, last_error=?, updated_at=?"
                " WHERE id=?",
                (attempts, next_at, error, time.time(), outbox_id),
            )

    def mark_dead(self, outbox_id: int, attempts: int, error: str) -> None:
        with self.transaction(durable=True) as db:  # the outbox copy is deleted next
            db.execute(
                "UPDATE outbox SET state=?, attempts=?, last_error=?, updated_at=? WHERE id=?",
                (OutboxState.DEAD.value, attempts, error, time.time(), outbox_id),
            )

    def requeue(self, outbox_id: int, path: str) -> None:
        """A dead-lettered copy released by an operator: pending again, attempts from zero."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE outbox SET state=?, attempts=0, next_attempt_at=?, path=?, updated_at=?"
                " WHERE id=?",
                (OutboxState.PENDING.value, now, path, now, outbox_id),
            )
            db.execute(
                "UPDATE instances SET state=?, updated_at=? WHERE id=(SELECT instance_id FROM"
                " outbox WHERE id=?)",
                (InstanceState.QUEUED.value, now, outbox_id),
            )

    def outbox_row(self, outbox_id: int) -> OutboxRow | None:
        rows = self._query("SELECT * FROM outbox WHERE id=?", (outbox_id,))
        return _outbox(rows[0]) if rows else None

    def dead_row_for(self, instance_id: int, destination: str) -> OutboxRow | None:
        rows = self._query(
            "SELECT * FROM outbox WHERE instance_id=? AND destination=? AND state=?",
            (instance_id, destination, OutboxState.DEAD.value),
        )
        return _outbox(rows[0]) if rows else None

    def live_outbox_paths(self) -> set[str]:
        return {
            r[0]
            for r in self._query(
                "SELECT path FROM outbox WHERE state=?", (OutboxState.PENDING.value,)
            )
        }

    # --- quarantine ----------------------------------------------------------------------------

    def quarantine_entries(self, state: str | None = "held") -> list[QuarantineRow]:
        if state is None:
            rows = self._query("SELECT * FROM quarantine ORDER BY created_at")
        else:
            rows = self._query(
                "SELECT * FROM quarantine WHERE state=? ORDER BY created_at", (state,)
            )
        return [_quarantine(r) for r in rows]

    def quarantine_entry(self, entry_id: str) -> QuarantineRow | None:
        rows = self._query("SELECT * FROM quarantine WHERE id=?", (entry_id,))
        return _quarantine(rows[0]) if rows else None

    def quarantine_states(self) -> dict[str, str]:
        """Every quarantine entry's state, by entry id."""
        return {r[0]: r[1] for r in self._query("SELECT id, state FROM quarantine")}

    def close_quarantine_entry(
        self, entry_id: str, state: str, action: str, detail: dict[str, Any]
    ) -> None:
        """Record an operator decision (release or purge) on a quarantine entry. Durable: a
        release shreds the entry's files next, and this commit also makes the release's own
        earlier commits (the requeued copy, the new arrival) durable."""
        now = time.time()
        with self.transaction(durable=True) as db:
            db.execute(
                "UPDATE quarantine SET state=?, updated_at=? WHERE id=?", (state, now, entry_id)
            )
            db.execute(
                "INSERT INTO decisions (at, entry_id, action, detail) VALUES (?,?,?,?)",
                (now, entry_id, action, json.dumps(detail, sort_keys=True)),
            )

    def decisions(self, entry_id: str) -> list[dict[str, Any]]:
        return [
            {"at": r["at"], "action": r["action"], "detail": json.loads(r["detail"])}
            for r in self._query(
                "SELECT * FROM decisions WHERE entry_id=? ORDER BY id", (entry_id,)
            )
        ]

    # --- backlog -------------------------------------------------------------------------------

    def state_counts(self) -> dict[str, int]:
        counts = {state.value: 0 for state in InstanceState}
        for r in self._query("SELECT state, COUNT(*) FROM instances GROUP BY state"):
            counts[r[0]] = int(r[1])
        return counts

    def outbox_counts(self) -> dict[str, int]:
        return {
            r[0]: int(r[1])
            for r in self._query(
                "SELECT destination, COUNT(*) FROM outbox WHERE state=? GROUP BY destination",
                (OutboxState.PENDING.value,),
            )
        }
