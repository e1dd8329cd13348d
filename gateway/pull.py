"""Pulling studies from a PACS: a list of accession numbers (or study UIDs) → C-FIND → C-MOVE to
the gateway's listener, or C-GET into the gateway's spool → a report per row.

Each row of the list is one request. It is queried at STUDY level with exact keys only (a row
with an empty value or a wildcard is refused: on a PACS an empty key matches every study), each
study found is retrieved, and the row ends as:

- ``retrieved``: every study found came over completely;
- ``partial``: some instances failed (the PACS counts failed sub-operations);
- ``missing``: the PACS has no study for the row;
- ``failed``: the query or a retrieve could not be done (PACS down, refused, unknown move
  destination);
- ``invalid``: the row cannot be queried safely.

Retrieved instances are durable in the spool and the journal before the PACS hears success, and
then take the normal routes. Rows are named in logs by line number and a keyed hash of the
identifier (`row_key`); only the report file, which is the operator's, holds the identifiers they
gave.

The source's limits protect a clinical PACS: every request (C-FIND, C-MOVE, C-GET) waits for the
rate limiter, at most `max_concurrent_retrieves` rows are worked on at once, and each retrieve is
followed by `pause_between_studies_s`.
"""

from __future__ import annotations

import csv
import io
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from deid_core.errors import ConfigError, InvalidInputError
from deid_core.keys import ProjectKey
from dicom_io.qr import (
    QueryFailed,
    QueryTarget,
    RetrieveOutcome,
    StudyMatch,
    find_studies,
    get_study,
    move_study,
)
from dicom_io.scp import ReceiveSink
from dicom_io.tls import client_context
from gateway.config import GatewayConfig, SourceConfig
from gateway.logs import get_logger

LOG = get_logger("gateway.pull")

#: Column names (compared case-insensitively, ignoring spaces and underscores) that hold the
#: accession number, and optionally the patient ID that narrows the match.
ACCESSION_COLUMNS = frozenset({"accessionnumber", "accession", "accessionno", "acc"})
PATIENT_ID_COLUMNS = frozenset({"patientid", "pid", "mrn"})


class RowStatus(StrEnum):
    RETRIEVED = "retrieved"
    PARTIAL = "partial"
    MISSING = "missing"
    FAILED = "failed"
    INVALID = "invalid"


@dataclass(frozen=True)
class PullRow:
    """One request: where it came from, and the exact keys to query with."""

    #: Line in the list file (1 = the first line), or position among the --study-uid options.
    line: int
    keys: Mapping[str, str]
    #: Why the row cannot be queried ("" when it can).
    problem: str = ""

    @property
    def identifier(self) -> str:
        """The value the operator gave (accession number or study UID): for the report file."""
        return self.keys.get("AccessionNumber") or self.keys.get("StudyInstanceUID", "")


@dataclass
class RowResult:
    row: PullRow
    #: Keyed hash of the identifier, for logs and the screen (no accession number there).
    row_key: str
    status: RowStatus = RowStatus.MISSING
    studies: int = 0
    #: Sum of Number of Study Related Instances of the studies found, when the PACS gave it.
    expected: int | None = None
    retrieved: int = 0
    failed: int = 0
    warnings: int = 0
    detail: str = ""
    #: The studies' UIDs (identifying: never logged, never in the report).
    study_uids: list[str] = field(default_factory=list, repr=False)


def _normal(name: str) -> str:
    return name.strip().lower().replace(" ", "").replace("_", "")


def read_accession_list(path: Path) -> list[PullRow]:
    """Rows of a CSV accession list. With a header row, the column named AccessionNumber (or
    Accession, Accession_Number, ACC) is used, and PatientID (or PID, MRN) narrows each match;
    without one, the first column is the accession number. Blank lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"--accession-list: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"--accession-list: {path} cannot be read ({reason})") from None
    sample = text[:4096]
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    records = list(csv.reader(io.StringIO(text), dialect))
    acc_col, pid_col, first = 0, None, 0
    if records:
        header = [_normal(c) for c in records[0]]
        named = [i for i, c in enumerate(header) if c in ACCESSION_COLUMNS]
        if named:
            acc_col, first = named[0], 1
            pids = [i for i, c in enumerate(header) if c in PATIENT_ID_COLUMNS]
            pid_col = pids[0] if pids else None
        elif any(c in PATIENT_ID_COLUMNS for c in header):
            raise ConfigError(
                f"--accession-list: {path} has a header but no AccessionNumber column"
            )
    rows: list[PullRow] = []
    for index, record in enumerate(records[first:], start=first + 1):
        if not any(cell.strip() for cell in record):
            continue
        accession = record[acc_col].strip() if acc_col < len(record) else ""
        keys = {"AccessionNumber": accession}
        if pid_col is not None and pid_col < len(record) and record[pid_col].strip():
            keys["PatientID"] = record[pid_col].strip()
        rows.append(PullRow(index, keys, _problem(keys)))
    if not rows:
        raise ConfigError(f"--accession-list: {path} lists no accession numbers")
    return rows


def study_uid_rows(uids: Sequence[str]) -> list[PullRow]:
    rows = []
    for i, uid in enumerate(uids, start=1):
        keys = {"StudyInstanceUID": uid.strip()}
        problem = _problem(keys)
        if not problem and not all(part.isdigit() for part in uid.strip().split(".")):
            problem = "not a UID (digits and dots)"
        rows.append(PullRow(i, keys, problem))
    return rows


def _problem(keys: Mapping[str, str]) -> str:
    for keyword, value in keys.items():
        if not value.strip():
            return f"empty {keyword} (it would match every study)"
        if any(c in value for c in "*?\\"):
            return f"{keyword} contains a wildcard or list separator (* ? \\)"
        if len(value) > 64:
            return f"{keyword} is longer than 64 characters"
    return ""


class RateLimiter:
    """Spaces requests at least 1/rate seconds apart, across threads."""

    def __init__(
        self,
        per_second: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / per_second
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = 0.0

    def acquire(self) -> None:
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)


def query_target(name: str, source: SourceConfig, cfg: GatewayConfig) -> QueryTarget:
    ctx = None
    if source.tls is not None:
        ctx = client_context(
            source.tls.ca_file,
            source.tls.cert_file,
            source.tls.key_file,
            source.tls.check_hostname,
            where=f"sources.{name}.tls",
        )
    return QueryTarget(
        ae_title=source.ae_title,
        host=source.host,
        port=source.port,
        calling_ae_title=source.calling_ae_title or cfg.node.ae_title,
        ssl_context=ctx,
        connect_timeout=source.connect_timeout_s,
        dimse_timeout=source.dimse_timeout_s,
    )


def row_key(key: ProjectKey, row: PullRow) -> str:
    text = "\x1f".join(f"{k}={v}" for k, v in sorted(row.keys.items()))
    return key.hmac("pull-row", text.encode("utf-8")).hex()[:12]


Finder = Callable[[QueryTarget, Mapping[str, str]], list[StudyMatch]]
Mover = Callable[[QueryTarget, str, str], RetrieveOutcome]
Getter = Callable[[QueryTarget, str, ReceiveSink], RetrieveOutcome]


class Puller:
    """Works through the rows of one pull against one source."""

    def __init__(
        self,
        source_name: str,
        cfg: GatewayConfig,
        key: ProjectKey,
        *,
        sink: ReceiveSink | None = None,
        finder: Finder = find_studies,
        mover: Mover = move_study,
        getter: Getter = get_study,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        source = cfg.sources.get(source_name)
        if source is None:
            known = ", ".join(sorted(cfg.sources)) or "none configured"
            raise ConfigError(f"--source: no source named {source_name!r} ({known})")
        if source.retrieve == "get" and sink is None:
            raise ConfigError("a C-GET pull needs the gateway's storage to receive into")
        self.name = source_name
        self.source = source
        self.key = key
        self.target = query_target(source_name, source, cfg)
        self.move_destination = source.move_destination or cfg.node.ae_title
        self.sink = sink
        self.limiter = RateLimiter(source.max_queries_per_s, sleep=sleep)
        self._finder = finder
        self._mover = mover
        self._getter = getter
        self._sleep = sleep
        self._seen: dict[str, tuple[int, RetrieveOutcome]] = {}
        self._seen_lock = threading.Lock()

    def pull(
        self, rows: Iterable[PullRow], on_done: Callable[[RowResult], None] | None = None
    ) -> list[RowResult]:
        """Work through `rows` (at most `max_concurrent_retrieves` at once); results in row
        order. `on_done` hears each finished row (from worker threads)."""
        rows = list(rows)
        results: list[RowResult | None] = [None] * len(rows)

        def work(index: int) -> None:
            result = self._pull_row(rows[index])
            results[index] = result
            LOG.info(
                "pull_row_done",
                source=self.name,
                line=result.row.line,
                row_key=result.row_key,
                status=result.status.value,
                studies=result.studies,
                retrieved=result.retrieved,
                failed=result.failed,
            )
            if on_done is not None:
                on_done(result)

        with ThreadPoolExecutor(
            max_workers=self.source.max_concurrent_retrieves, thread_name_prefix="pull"
        ) as pool:
            for future in [pool.submit(work, i) for i in range(len(rows))]:
                future.result()
        return [r for r in results if r is not None]

    def _pull_row(self, row: PullRow) -> RowResult:
        result = RowResult(row, row_key(self.key, row))
        if row.problem:
            result.status, result.detail = RowStatus.INVALID, row.problem
            return result
        try:
            self.limiter.acquire()
            matches = self._finder(self.target, row.keys)
        except (QueryFailed, InvalidInputError) as exc:
            result.status, result.detail = RowStatus.FAILED, f"query: {exc}"
            return result
        result.studies = len(matches)
        result.study_uids = [m.study_instance_uid for m in matches]
        if not matches:
            result.status, result.detail = RowStatus.MISSING, "no study found on the PACS"
            return result
        counts = [m.instances for m in matches]
        result.expected = sum(c for c in counts if c is not None) if None not in counts else None
        errors: list[str] = []  # retrieves that could not be done at all
        notes: list[str] = []
        for match in matches:
            outcome, earlier = self._retrieve_once(match.study_instance_uid, row.line)
            if isinstance(outcome, str):
                errors.append(outcome)
                continue
            if earlier is not None:  # counted again: this row's study did come over
                notes.append(f"same study as line {earlier}")
            result.retrieved += outcome.completed
            result.failed += outcome.failed
            result.warnings += outcome.warning
            if not outcome.ok and earlier is None:
                notes.append(outcome.describe())
        short = result.expected is not None and result.retrieved < result.expected
        if errors and result.retrieved == 0 and not notes:
            result.status = RowStatus.FAILED
        elif errors or result.failed or short or any(not n.startswith("same study") for n in notes):
            result.status = RowStatus.PARTIAL if result.retrieved else RowStatus.FAILED
        else:
            result.status = RowStatus.RETRIEVED
        result.detail = "; ".join(dict.fromkeys([*errors, *notes]))
        return result

    def _retrieve_once(self, study_uid: str, line: int) -> tuple[RetrieveOutcome | str, int | None]:
        """Retrieve a study unless this pull already did (two rows naming one study)."""
        with self._seen_lock:
            seen = self._seen.get(study_uid)
        if seen is not None:
            return seen[1], seen[0]
        try:
            self.limiter.acquire()
            if self.source.retrieve == "get":
                assert self.sink is not None
                outcome = self._getter(self.target, study_uid, self.sink)
            else:
                outcome = self._mover(self.target, study_uid, self.move_destination)
        except (QueryFailed, InvalidInputError) as exc:
            return f"retrieve: {exc}", None
        finally:
            if self.source.pause_between_studies_s:
                self._sleep(self.source.pause_between_studies_s)
        with self._seen_lock:
            self._seen.setdefault(study_uid, (line, outcome))
        return outcome, None


# --- the report --------------------------------------------------------------------------------

REPORT_COLUMNS = (
    "line",
    "row_key",
    "identifier",
    "patient_id",
    "status",
    "studies_found",
    "instances_expected",
    "instances_retrieved",
    "instances_failed",
    "detail",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: str) -> str:
    """An identifier must never run as a formula when the report is opened in a spreadsheet."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def write_report(path: Path, results: Sequence[RowResult]) -> None:
    """The operator's report: one row per request, with the identifiers they gave. Mode 0600 (it
    holds accession numbers), written whole to a temporary name and renamed."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(REPORT_COLUMNS)
    for r in results:
        writer.writerow(
            [
                r.row.line,
                r.row_key,
                _cell(r.row.identifier),
                _cell(r.row.keys.get("PatientID", "")),
                r.status.value,
                r.studies,
                "" if r.expected is None else r.expected,
                r.retrieved,
                r.failed,
                _cell(r.detail),
            ]
        )
    path = path.resolve()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, buf.getvalue().encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def summary(results: Sequence[RowResult]) -> dict[str, int]:
    counts = {s.value: 0 for s in RowStatus}
    for r in results:
        counts[r.status.value] += 1
    return counts
