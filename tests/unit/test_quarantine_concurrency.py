"""Two decisions on one quarantine entry at the same moment (the review station and the CLI, two
processes with their own journal connection; here two threads with two `Storage`s): exactly one
wins, the other is refused, and the journal and the spool show one decision's effects only."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.events import QuarantineReason
from gateway.node import Storage
from gateway.quarantine import QuarantineError
from gateway.spool import SpooledFile
from tests.support.gateway import config_dict, destination, make_key_file, parse
from tests.support.review import burned_in_ct

#: Long enough for the other thread to get in its way; the test passes without ever waiting this
#: long when the claim works (the loser is refused before it reaches the spool).
OVERLAP_S = 2.0


class _Rendezvous:
    """Holds a release inside `spool.write` (after its checks, before its journal rows) until the
    other decision has been tried: where an unguarded check-then-act lets both through."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=OVERLAP_S)
        self.inside = threading.Event()

    def hook(self, storage: Storage) -> None:
        spool = storage.spool
        write = spool.write

        def held_write(parts: Sequence[bytes]) -> SpooledFile:
            self.inside.set()
            # broken: the other decision never got this far, it was refused
            with contextlib.suppress(threading.BrokenBarrierError):
                self.barrier.wait()
            return write(parts)

        spool.write = held_write  # type: ignore[method-assign]


def _storages(tmp_path: Path) -> tuple[Any, Storage, Storage, str]:
    cfg = parse(
        config_dict(
            tmp_path / "gw",
            make_key_file(tmp_path),
            destinations={"archive": destination("127.0.0.1", 4242, "ARCHIVE")},
            routes=[
                {
                    "name": "radiology",
                    "match": {"modality": ["CT"]},
                    "pixels": "quarantine_burned_in",
                    "destinations": ["archive"],
                }
            ],
        )
    )
    station, cli = Storage.open(cfg), Storage.open(cfg)
    entry = station.quarantine.put(
        instance_id=station.journal.add_received("a/1.dcm", "c" * 64),
        data=burned_in_ct(tmp_path / "ct.dcm"),
        reason=QuarantineReason.BURNED_IN_ANNOTATION,
        route="radiology",
        study_key="c" * 64,
    )
    return cfg, station, cli, entry


def _release(storage: Storage, entry: str) -> str:
    return storage.quarantine.release(
        entry, spool=storage.spool, outbox=storage.outbox, accept_pixels=True, operator_note="ok"
    )


def _run(*calls: Any) -> list[object]:
    outcomes: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            outcomes[i] = calls[i]()
        except QuarantineError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_two_concurrent_releases_of_one_entry_let_exactly_one_through(tmp_path: Path) -> None:
    _, station, cli, entry = _storages(tmp_path)
    meet = _Rendezvous(2)
    meet.hook(station)
    meet.hook(cli)
    try:
        outcomes = _run(lambda: _release(station, entry), lambda: _release(cli, entry))
        won = [o for o in outcomes if isinstance(o, str)]
        refused = [o for o in outcomes if isinstance(o, QuarantineError)]
        assert len(won) == 1 and len(refused) == 1, outcomes
        assert "already" in str(refused[0])
        assert station.journal.quarantine_entry(entry).state == "released"  # type: ignore[union-attr]
        assert [d["action"] for d in station.journal.decisions(entry)] == ["release"]
        assert station.journal.state_counts()["received"] == 1  # sent back once, not twice
        assert len(list(station.spool.root.rglob("*.dcm"))) == 1
    finally:
        station.close()
        cli.close()


def test_release_and_purge_at_once_do_not_both_happen(tmp_path: Path) -> None:
    _, station, cli, entry = _storages(tmp_path)
    meet = _Rendezvous(2)  # the purge never reaches the spool: the release waits, then goes on
    meet.hook(station)

    def purge_while_released() -> None:
        assert meet.inside.wait(OVERLAP_S)
        try:
            cli.quarantine.purge(entry, operator_note="reject")
        finally:
            with contextlib.suppress(threading.BrokenBarrierError):
                meet.barrier.wait()

    try:
        release, purge = _run(lambda: _release(station, entry), purge_while_released)
        assert isinstance(release, str), release
        assert isinstance(purge, QuarantineError) and "being released" in str(purge)
        assert station.journal.quarantine_entry(entry).state == "released"  # type: ignore[union-attr]
        assert [d["action"] for d in station.journal.decisions(entry)] == ["release"]
        assert station.journal.state_counts()["received"] == 1
    finally:
        station.close()
        cli.close()


def test_a_failed_release_gives_the_entry_back(tmp_path: Path) -> None:
    _, station, cli, entry = _storages(tmp_path)

    def broken(parts: Sequence[bytes]) -> SpooledFile:
        raise OSError("disk full")

    station.spool.write = broken  # type: ignore[method-assign]
    try:
        with pytest.raises(OSError, match="disk full"):
            _release(station, entry)
        assert station.journal.quarantine_entry(entry).state == "held"  # type: ignore[union-attr]
        _release(cli, entry)
        assert cli.journal.quarantine_entry(entry).state == "released"  # type: ignore[union-attr]
    finally:
        station.close()
        cli.close()


def test_an_interrupted_release_is_held_again_at_start(tmp_path: Path) -> None:
    _, station, cli, entry = _storages(tmp_path)
    try:
        with station.journal.transaction() as db:  # what a crash after the claim leaves
            db.execute("UPDATE quarantine SET state='releasing' WHERE id=?", (entry,))
        with pytest.raises(QuarantineError, match="already being released"):
            _release(cli, entry)
        assert station.quarantine.recover_interrupted_releases() == 1
        assert station.journal.quarantine_entry(entry).state == "held"  # type: ignore[union-attr]
        _release(cli, entry)
    finally:
        station.close()
        cli.close()
