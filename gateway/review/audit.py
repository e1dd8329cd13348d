"""The audit trail: every view of an original and every decision — who, when, what, why.

Rows live in the journal (table ``review_audit``), beside the quarantine entries and the
`decisions` rows they explain, and are only ever inserted. The station writes one for each login
(and failed login), logout, view of an original image, decision (release, re-run, purge — with
the reviewer's reason and the outcome, including refusals) and audit export; the quarantine
commands of the CLI write theirs too. `audit_csv` exports them for a privacy officer's records.

The reason a reviewer types is free text and may name a person: it is kept here, where only
reviewers and the export can read it, and never written to the logs.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.journal import Journal
from gateway.review.reader import JournalReader

TABLE = "review_audit"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    entry_id TEXT NOT NULL DEFAULT '',
    why TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL DEFAULT 'ok',
    detail TEXT NOT NULL DEFAULT '{{}}'
);
CREATE INDEX IF NOT EXISTS {TABLE}_at ON {TABLE}(at);
CREATE INDEX IF NOT EXISTS {TABLE}_entry ON {TABLE}(entry_id);
"""


class AuditAction(StrEnum):
    LOGIN = "login"
    LOGIN_FAILED = "login_failed"
    LOGOUT = "logout"
    VIEW_ORIGINAL = "view_original"
    RELEASE = "release"
    RERUN = "rerun"
    PURGE = "purge"
    EXPORT = "audit_export"


@dataclass(frozen=True)
class AuditRecord:
    at: float
    actor: str
    role: str
    action: str
    entry_id: str
    why: str
    outcome: str
    detail: Mapping[str, Any]


class AuditTrail:
    """Appends audit rows to the journal (creating the table on first use)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        with journal.transaction() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def record(
        self,
        actor: str,
        role: str,
        action: AuditAction,
        *,
        entry_id: str = "",
        why: str = "",
        outcome: str = "ok",
        detail: Mapping[str, Any] | None = None,
        at: float | None = None,
    ) -> None:
        with self.journal.transaction() as db:
            db.execute(
                f"INSERT INTO {TABLE} (at, actor, role, action, entry_id, why, outcome, detail)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (
                    time.time() if at is None else at,
                    actor,
                    role,
                    action.value,
                    entry_id,
                    why,
                    outcome,
                    json.dumps(dict(detail or {}), sort_keys=True),
                ),
            )


def read_audit(
    reader: JournalReader,
    *,
    since: float | None = None,
    until: float | None = None,
    entry_id: str | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[AuditRecord]:
    where: list[str] = []
    args: list[Any] = []
    if since is not None:
        where.append("at >= ?")
        args.append(since)
    if until is not None:
        where.append("at < ?")
        args.append(until)
    if entry_id:
        where.append("entry_id = ?")
        args.append(entry_id)
    sql = f"SELECT * FROM {TABLE}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC" if newest_first else " ORDER BY id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return [
        AuditRecord(
            at=r["at"],
            actor=r["actor"],
            role=r["role"],
            action=r["action"],
            entry_id=r["entry_id"],
            why=r["why"],
            outcome=r["outcome"],
            detail=json.loads(r["detail"] or "{}"),
        )
        for r in reader.rows(sql, args)
    ]


def utc_text(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


#: First characters that make a spreadsheet treat a cell as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

CSV_COLUMNS = ("time_utc", "actor", "role", "action", "entry", "outcome", "why", "detail")


def _cell(value: str) -> str:
    """Free text (a reviewer's reason) must never run as a formula when the export is opened in a
    spreadsheet: such cells get a leading apostrophe."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def audit_csv(records: Iterable[AuditRecord]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for r in records:
        writer.writerow(
            [
                utc_text(r.at),
                _cell(r.actor),
                r.role,
                r.action,
                r.entry_id,
                _cell(r.outcome),
                _cell(r.why),
                _cell(json.dumps(dict(r.detail), sort_keys=True)) if r.detail else "",
            ]
        )
    return buf.getvalue()
