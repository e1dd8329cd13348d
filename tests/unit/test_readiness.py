"""Readiness checks of the node without sockets: the cached C-ECHO probe, check names, the
journal and spool checks on a real file system."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from dicom_io.scu import AssociationFailed, StoreTarget
from gateway.journal import Journal
from gateway.readiness import DestinationProbe, identifiers, journal_writable, spool_writable
from gateway.spool import Spool, SpoolFull

TARGET = StoreTarget("ARCHIVE", "192.0.2.1", 104, "DEIDGW", connect_timeout=10.0)


class FakeEcho:
    """Stands in for the network: answers as told, counts calls, can take its time."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.up = True
        self.delay = 0.0

    def __call__(self, target: StoreTarget, timeout: float) -> None:
        self.calls.append(timeout)
        time.sleep(self.delay)
        if not self.up:
            raise AssociationFailed("unreachable", "no route to host")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_answer_is_reused_for_the_ttl_then_asked_again() -> None:
    echo, clock = FakeEcho(), Clock()
    results: list[tuple[str, bool]] = []
    probe = DestinationProbe(
        "archive",
        TARGET,
        on_result=lambda d, up: results.append((d, up)),
        ttl_s=5.0,
        echo_fn=echo,
        clock=clock,
    )
    assert probe() is True
    clock.now += 4.9
    assert probe() is True
    assert len(echo.calls) == 1, "a cached answer within the TTL"
    echo.up = False
    clock.now += 0.2
    assert probe() is False
    assert len(echo.calls) == 2
    assert results == [("archive", True), ("archive", False)]


def test_the_echo_timeout_is_short_and_never_longer_than_the_destinations() -> None:
    echo = FakeEcho()
    DestinationProbe("a", TARGET, echo_fn=echo, timeout_s=1.0)()
    slow_connect = StoreTarget("A", "192.0.2.1", 104, "GW", connect_timeout=0.3)
    DestinationProbe("b", slow_connect, echo_fn=echo, timeout_s=1.0)()
    assert echo.calls == [1.0, 0.3]


def test_concurrent_probes_share_one_echo() -> None:
    echo = FakeEcho()
    echo.delay = 0.3
    probe = DestinationProbe("archive", TARGET, echo_fn=echo)
    answers: list[bool] = []
    threads = [threading.Thread(target=lambda: answers.append(probe())) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [True] * 6
    assert len(echo.calls) == 1


def test_an_unexpected_error_is_not_cached_as_an_answer() -> None:
    calls = []

    def broken(target: StoreTarget, timeout: float) -> None:
        calls.append(1)
        raise RuntimeError("bug")

    probe = DestinationProbe("archive", TARGET, echo_fn=broken)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            probe()
    assert len(calls) == 2


def test_identifiers_are_check_names_and_distinct() -> None:
    names = identifiers("destination", ["archive", "Archive", "pacs-2.site:a", "x" * 70])
    assert names["archive"] == "destination_archive"
    assert names["Archive"] == "destination_archive_2"
    assert names["pacs-2.site:a"] == "destination_pacs_2_site_a"
    assert len(set(names.values())) == 4
    assert all(len(n) <= 64 and n.isascii() and n == n.lower() for n in names.values())


def test_journal_check_commits_a_write_and_fails_on_a_closed_journal(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j" / "journal.sqlite")
    check = journal_writable(journal)
    check()
    check()  # repeatable: one row, replaced
    assert not list((tmp_path / "j").glob(".probe-*")), "the probe file is removed"
    journal.close()
    with pytest.raises(sqlite3.ProgrammingError):
        check()


def test_journal_check_fails_when_its_folder_is_gone(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j" / "journal.sqlite")
    try:
        # the open database still takes writes, but no new file can be made beside it
        (tmp_path / "j").rename(tmp_path / "moved")
        with pytest.raises(FileNotFoundError):
            journal_writable(journal)()
    finally:
        journal.close()


def test_spool_check_fails_past_the_high_water_mark(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", high_water_percent=100.0)
    spool_writable(spool)()
    spool.high_water_percent = 0.0001
    with pytest.raises(SpoolFull):
        spool_writable(spool)()


def test_refusal_free_bytes_is_where_the_spool_starts_refusing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", high_water_percent=100.0, min_free_bytes=0)
    assert spool.refusal_free_bytes() == 0
    free = spool.free_bytes()
    spool.min_free_bytes = free + 10**9
    assert spool.refusal_free_bytes() == free + 10**9
    with pytest.raises(SpoolFull):
        spool.check_space()
    spool.min_free_bytes = 0
    spool.high_water_percent = 75.0
    total = shutil.disk_usage(spool.root).total
    assert spool.refusal_free_bytes() == int(total * 0.25)
