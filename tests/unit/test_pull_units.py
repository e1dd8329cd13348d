"""Pull logic without a PACS: the accession list, row checks, rate limits, row outcomes, the
report file. The finder and retrievers are stand-ins recording what the PACS would be asked."""

from __future__ import annotations

import csv
import stat
import threading
from collections.abc import Mapping
from pathlib import Path

import pytest

from deid_core.errors import ConfigError
from deid_core.keys import ProjectKey
from dicom_io.qr import QueryFailed, QueryTarget, RetrieveOutcome, StudyMatch
from gateway.pull import (
    Puller,
    PullRow,
    RateLimiter,
    RowStatus,
    read_accession_list,
    study_uid_rows,
    write_report,
)
from tests.support.gateway import KEY_TEXT, config_dict, make_key_file, parse

KEY = ProjectKey(KEY_TEXT.encode())


def _cfg(tmp_path: Path, **source: object):  # type: ignore[no-untyped-def]
    data = config_dict(tmp_path / "gw", make_key_file(tmp_path))
    data["node"]["allowed_callers"].append({"ae_title": "PACS"})
    data["sources"] = {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104, **source}}
    return parse(data)


def test_accession_list_with_header_uses_named_columns(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("Patient ID;Accession_Number;note\nP1;A100;x\n\n;A200;\nP3;;empty\n")
    rows = read_accession_list(path)
    assert [r.line for r in rows] == [2, 4, 5]
    assert rows[0].keys == {"AccessionNumber": "A100", "PatientID": "P1"}
    assert rows[1].keys == {"AccessionNumber": "A200"}
    assert rows[2].problem.startswith("empty AccessionNumber")


def test_accession_list_without_header_is_one_per_line(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("A1\nA2*\nB\\C\n")
    rows = read_accession_list(path)
    assert [r.keys["AccessionNumber"] for r in rows] == ["A1", "A2*", "B\\C"]
    assert rows[0].problem == ""
    assert "wildcard" in rows[1].problem and "wildcard" in rows[2].problem


def test_accession_list_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_accession_list(tmp_path / "nope.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("AccessionNumber\n\n")
    with pytest.raises(ConfigError, match="lists no accession numbers"):
        read_accession_list(empty)
    no_column = tmp_path / "pid.csv"
    no_column.write_text("PatientID,Other\nP1,x\n")
    with pytest.raises(ConfigError, match="no AccessionNumber column"):
        read_accession_list(no_column)


def test_study_uid_rows_refuse_non_uids() -> None:
    rows = study_uid_rows(["1.2.3", "1.2.x", ""])
    assert rows[0].problem == ""
    assert rows[1].problem == "not a UID (digits and dots)"
    assert rows[2].problem.startswith("empty")


def test_rate_limiter_spaces_requests_across_threads() -> None:
    now = [0.0]
    slept: list[float] = []
    lock = threading.Lock()

    def sleep(seconds: float) -> None:
        with lock:
            slept.append(seconds)

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    threads = [threading.Thread(target=limiter.acquire) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # five requests at the same instant: 0, .25, .5, .75, 1.0 s
    assert sorted(slept) == pytest.approx([0.25, 0.5, 0.75, 1.0])


class FakePacs:
    """Answers like a PACS: studies by accession number, with instance counts."""

    def __init__(self, studies: Mapping[str, list[tuple[str, int]]]) -> None:
        self.studies = studies
        self.queries: list[dict[str, str]] = []
        self.moves: list[tuple[str, str]] = []
        self.fail_move: set[str] = set()
        self.short: dict[str, int] = {}
        self.lock = threading.Lock()

    def find(self, target: QueryTarget, keys: Mapping[str, str]) -> list[StudyMatch]:
        with self.lock:
            self.queries.append(dict(keys))
        if keys.get("AccessionNumber") == "DOWN":
            raise QueryFailed("unreachable", "cannot connect to PACS@127.0.0.1:104")
        return [StudyMatch(uid, n) for uid, n in self.studies.get(keys["AccessionNumber"], [])]

    def move(self, target: QueryTarget, uid: str, destination: str) -> RetrieveOutcome:
        with self.lock:
            self.moves.append((uid, destination))
        if uid in self.fail_move:
            return RetrieveOutcome(0xA801, 0, 0, 0)
        total = dict(v for vs in self.studies.values() for v in vs)[uid]
        failed = self.short.get(uid, 0)
        status = 0xB000 if failed else 0
        return RetrieveOutcome(status, total - failed, failed, 0)


def _rows(*accessions: str) -> list[PullRow]:
    return [PullRow(i + 2, {"AccessionNumber": a}) for i, a in enumerate(accessions)]


def test_rows_end_retrieved_partial_missing_failed_invalid(tmp_path: Path) -> None:
    pacs = FakePacs(
        {
            "A1": [("1.1", 3)],
            "A2": [("2.1", 2), ("2.2", 4)],
            "A3": [("3.1", 5)],
            "A4": [("4.1", 1)],
            "A5": [("1.1", 3)],  # the same study as A1
        }
    )
    pacs.short["3.1"] = 2
    pacs.fail_move.add("4.1")
    sleeps: list[float] = []
    puller = Puller(
        "pacs",
        _cfg(tmp_path, pause_between_studies_s=0.5, max_queries_per_s=100),
        KEY,
        finder=pacs.find,
        mover=pacs.move,
        sleep=sleeps.append,
    )
    rows = [
        *_rows("A1", "A2", "A3", "A4", "NOPE", "DOWN", "A5"),
        PullRow(9, {"AccessionNumber": ""}, "empty AccessionNumber"),
    ]
    results = puller.pull(rows)
    status = {r.row.keys["AccessionNumber"]: r.status for r in results}
    assert status == {
        "A1": RowStatus.RETRIEVED,
        "A2": RowStatus.RETRIEVED,
        "A3": RowStatus.PARTIAL,
        "A4": RowStatus.FAILED,
        "NOPE": RowStatus.MISSING,
        "DOWN": RowStatus.FAILED,
        "A5": RowStatus.RETRIEVED,
        "": RowStatus.INVALID,
    }
    by = {r.row.keys["AccessionNumber"]: r for r in results}
    assert (by["A2"].studies, by["A2"].expected, by["A2"].retrieved) == (2, 6, 6)
    assert (by["A3"].retrieved, by["A3"].failed) == (3, 2)
    assert "does not know the move destination" in by["A4"].detail
    assert "cannot connect" in by["DOWN"].detail
    assert by["A5"].detail == "same study as line 2"
    # the invalid row never reached the PACS; the duplicate study moved once; all to our AE
    assert {"AccessionNumber": ""} not in pacs.queries
    assert sorted(uid for uid, _ in pacs.moves) == ["1.1", "2.1", "2.2", "3.1", "4.1"]
    assert {dest for _, dest in pacs.moves} == {"DEIDGW"}
    assert sleeps.count(0.5) == 5  # a pause after each retrieve
    # row keys: keyed, stable, distinct, and not the accession number
    assert len({r.row_key for r in results}) == len(results)
    assert all("A1" not in r.row_key for r in results)


def test_concurrent_retrieves_respect_the_limit(tmp_path: Path) -> None:
    active = [0]
    peak = [0]
    lock = threading.Lock()
    gate = threading.Barrier(2, timeout=5)

    def move(target: QueryTarget, uid: str, destination: str) -> RetrieveOutcome:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            gate.wait()  # two must run together, or this times out
        finally:
            with lock:
                active[0] -= 1
        return RetrieveOutcome(0, 1, 0, 0)

    pacs = FakePacs({f"A{i}": [(f"{i}.1", 1)] for i in range(6)})
    puller = Puller(
        "pacs",
        _cfg(tmp_path, max_concurrent_retrieves=2, max_queries_per_s=100),
        KEY,
        finder=pacs.find,
        mover=move,
    )
    results = puller.pull(_rows(*(f"A{i}" for i in range(6))))
    assert all(r.status is RowStatus.RETRIEVED for r in results)
    assert peak[0] == 2


def test_get_needs_storage_and_unknown_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="C-GET pull needs"):
        Puller("pacs", _cfg(tmp_path, retrieve="get"), KEY)
    with pytest.raises(ConfigError, match="no source named 'other'"):
        Puller("other", _cfg(tmp_path), KEY)


def test_report_is_private_and_guards_formulas(tmp_path: Path) -> None:
    pacs = FakePacs({"=HYPERLINK(1)": [("1.1", 1)]})
    puller = Puller(
        "pacs", _cfg(tmp_path, max_queries_per_s=100), KEY, finder=pacs.find, mover=pacs.move
    )
    results = puller.pull(_rows("=HYPERLINK(1)", "NOPE"))
    report = tmp_path / "report.csv"
    report.write_text("old")
    report.chmod(0o644)
    write_report(report, results)
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    lines = list(csv.DictReader(report.open()))
    assert lines[0]["identifier"] == "'=HYPERLINK(1)"
    assert lines[0]["status"] == "retrieved"
    assert lines[1]["identifier"] == "NOPE" and lines[1]["status"] == "missing"
    assert lines[0]["row_key"] == results[0].row_key
