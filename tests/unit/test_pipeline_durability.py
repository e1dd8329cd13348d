"""The pipeline's defined ends for bad input, against the real journal, spool, outbox and
quarantine on disk: an instance whose processing raises an unexpected error (or kills the
process) is quarantined after a bounded number of attempts while the rest goes on, and an
instance whose spool file vanished ends `lost` instead of being looked for forever."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset

from deid_core.keys import ProjectKey
from gateway.config import GatewayConfig
from gateway.events import EventBus, InstanceLost, QuarantineReason
from gateway.journal import InstanceState
from gateway.node import Storage
from gateway.pipeline import Pipeline, default_deidentifier_factory
from tests.support.gateway import (
    KEY_TEXT,
    EventRecorder,
    config_dict,
    destination,
    make_key_file,
    parse,
    write_instances,
)

STUDY = "study-under-test"


class _Crash(BaseException):
    """Stands for the process dying in the middle of an instance (a segfault in a codec, the
    OOM killer): nothing in the process gets to handle it."""


class _Poisoned:
    """The real profile, except for one SOP Instance UID, on which it raises what pydicom
    raises on a hostile file: an error that is not a PermanentError, whose message carries a
    value from the data set."""

    def __init__(self, inner: Any, poisoned_uid: str, error: type[BaseException]) -> None:
        self.inner = inner
        self.poisoned_uid = poisoned_uid
        self.error = error
        self.calls: Counter[str] = Counter()
        self.pseudonymizer = getattr(inner, "pseudonymizer", None)

    def deidentify(self, ds: Dataset) -> Dataset:
        uid = str(ds.SOPInstanceUID)
        self.calls[uid] += 1
        if uid == self.poisoned_uid:
            raise self.error(str(ds.PatientName))
        result: Dataset = self.inner.deidentify(ds)
        return result


@pytest.fixture
def cfg(tmp_path: Path) -> GatewayConfig:
    return parse(
        config_dict(
            tmp_path,
            make_key_file(tmp_path),
            destinations={"archive": destination("127.0.0.1", 9, "ARCHIVE")},
        )
    )


def _spool_study(storage: Storage, folder: Path, count: int) -> list[str]:
    """Received instances of one study, as the listener leaves them; returns their UIDs."""
    files = next(iter(write_instances(folder, studies=1, per_study=count).values()))
    uids = []
    for path in files:
        spooled = storage.spool.write((path.read_bytes(),))
        storage.journal.add_received(spooled.relative_path, STUDY, size=spooled.size)
        uids.append(str(pydicom.dcmread(path).SOPInstanceUID))
    return uids


def _pipeline(
    cfg: GatewayConfig, storage: Storage, poisoned: _Poisoned, recorder: EventRecorder
) -> Pipeline:
    bus = EventBus()
    bus.subscribe(recorder)
    return Pipeline(
        cfg,
        ProjectKey(KEY_TEXT.encode()),
        storage.journal,
        storage.spool,
        storage.outbox,
        storage.quarantine,
        bus,
        lambda c, name, key: poisoned,
    )


def _poisoned_factory(cfg: GatewayConfig, uid: str, error: type[BaseException]) -> _Poisoned:
    real = default_deidentifier_factory()(cfg, "default", ProjectKey(KEY_TEXT.encode()))
    return _Poisoned(real, uid, error)


def _entry(storage: Storage) -> dict[str, Any]:
    entries = storage.quarantine.list()
    assert len(entries) == 1
    record: dict[str, Any] = json.loads(
        (storage.quarantine.root / entries[0].id / "entry.json").read_text()
    )
    return record


def test_an_unexpected_error_quarantines_that_instance_after_bounded_attempts(
    cfg: GatewayConfig, tmp_path: Path
) -> None:
    storage = Storage.open(cfg)
    uids = _spool_study(storage, tmp_path / "in", 3)
    poisoned = _poisoned_factory(cfg, uids[0], KeyError)
    recorder = EventRecorder()
    pipeline = _pipeline(cfg, storage, poisoned, recorder)

    first = pipeline.process_study(STUDY)
    # the instances behind the poisoned one went on at once
    assert first.queued == 2 and first.quarantined == 0
    assert storage.journal.state_counts()[InstanceState.RECEIVED.value] == 1
    limit = cfg.storage.max_processing_attempts
    for _ in range(limit + 2):  # the assembler's next turns
        pipeline.process_study(STUDY)

    assert poisoned.calls[uids[0]] == limit  # bounded, and not one more once it gave up
    assert all(poisoned.calls[uid] == 1 for uid in uids[1:])
    counts = storage.journal.state_counts()
    assert counts[InstanceState.RECEIVED.value] == 0
    assert counts[InstanceState.QUEUED.value] == 2
    assert counts[InstanceState.QUARANTINED.value] == 1
    record = _entry(storage)
    assert record["reason"] == QuarantineReason.PROCESSING_ERROR.value
    assert record["details"]["attempts"] == limit
    error = record["details"]["error"]
    assert error.startswith("KeyError at ") and "test_pipeline_durability.py" in error
    assert "IDENTIFIABLE" not in json.dumps(record)  # the exception's message is not kept
    # the received original is what the operator finds, and the spool no longer holds it
    kept = pydicom.dcmread(storage.quarantine.root / record["id"] / "instance.dcm")
    assert str(kept.SOPInstanceUID) == uids[0]
    assert len(list(storage.spool.files())) == 2
    storage.close()


@pytest.mark.parametrize("error", [ValueError, TypeError, RecursionError])
def test_other_unexpected_errors_end_the_same_way(
    cfg: GatewayConfig, tmp_path: Path, error: type[Exception]
) -> None:
    storage = Storage.open(cfg)
    uids = _spool_study(storage, tmp_path / "in", 2)
    poisoned = _poisoned_factory(cfg, uids[1], error)
    pipeline = _pipeline(cfg, storage, poisoned, EventRecorder())
    for _ in range(cfg.storage.max_processing_attempts):
        pipeline.process_study(STUDY)
    assert _entry(storage)["details"]["error"].startswith(f"{error.__name__} at ")
    assert storage.journal.state_counts()[InstanceState.QUEUED.value] == 1
    storage.close()


def test_a_crash_loop_across_restarts_ends_with_only_the_poisoned_instance_quarantined(
    cfg: GatewayConfig, tmp_path: Path
) -> None:
    storage = Storage.open(cfg)
    uids = _spool_study(storage, tmp_path / "in", 4)
    storage.close()
    poisoned_uid = uids[2]  # two instances before it, one behind it
    limit = cfg.storage.max_processing_attempts
    crashes = 0
    for _restart in range(limit + 2):
        storage = Storage.open(cfg)
        poisoned = _poisoned_factory(cfg, poisoned_uid, _Crash)
        pipeline = _pipeline(cfg, storage, poisoned, EventRecorder())
        try:
            pipeline.process_study(STUDY)
        except _Crash:
            crashes += 1
        storage.close()
    assert crashes == limit  # then it was given up on without being touched again

    storage = Storage.open(cfg)
    counts = storage.journal.state_counts()
    assert counts[InstanceState.QUEUED.value] == 3, counts
    assert counts[InstanceState.QUARANTINED.value] == 1
    record = _entry(storage)
    assert record["reason"] == QuarantineReason.PROCESSING_ERROR.value
    assert record["details"] == {"error": "the process ended", "attempts": limit}
    kept = pydicom.dcmread(storage.quarantine.root / record["id"] / "instance.dcm")
    assert str(kept.SOPInstanceUID) == poisoned_uid
    storage.close()


def test_a_missing_spool_file_ends_lost_and_the_rest_goes_on(
    cfg: GatewayConfig, tmp_path: Path
) -> None:
    storage = Storage.open(cfg)
    _spool_study(storage, tmp_path / "in", 3)
    rows = storage.journal.received_in_study(STUDY)
    storage.spool.path(rows[0].spool_path).unlink()  # deleted behind the gateway's back
    recorder = EventRecorder()
    pipeline = _pipeline(cfg, storage, _poisoned_factory(cfg, "", KeyError), recorder)

    result = pipeline.process_study(STUDY)
    assert result.queued == 2
    row = storage.journal.instance(rows[0].id)
    assert row is not None and row.state == InstanceState.LOST.value
    assert row.reason == "spool_file_missing"
    lost = recorder.of(InstanceLost)
    assert [(e.reason, e.study_key) for e in lost] == [("spool_file_missing", STUDY)]
    assert storage.journal.stable_studies(float("inf")) == []  # nothing left to look for
    pipeline.process_study(STUDY)
    assert len(recorder.of(InstanceLost)) == 1
    storage.close()


def test_a_full_disk_does_not_count_against_the_instance(
    cfg: GatewayConfig, tmp_path: Path
) -> None:
    """ENOSPC while writing the outbox copy is the gateway's fault, not the instance's: the study
    waits (the error reaches the assembler, which tries again later) and nothing is quarantined,
    however many turns the disk stays full."""
    import errno

    storage = Storage.open(cfg)
    _spool_study(storage, tmp_path / "in", 2)
    pipeline = _pipeline(cfg, storage, _poisoned_factory(cfg, "", KeyError), EventRecorder())
    real_put = storage.outbox.put

    def full(destination: str, study_key: str, data: bytes) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    storage.outbox.put = full  # type: ignore[method-assign]
    for _ in range(cfg.storage.max_processing_attempts + 2):
        with pytest.raises(OSError):
            pipeline.process_study(STUDY)
    assert storage.quarantine.list() == []
    assert storage.journal.state_counts()[InstanceState.RECEIVED.value] == 2
    storage.outbox.put = real_put  # type: ignore[method-assign]
    assert pipeline.process_study(STUDY).queued == 2
    storage.close()


def test_outbox_orphans_older_than_the_start_go_and_referenced_copies_stay(
    tmp_path: Path,
) -> None:
    import os

    from gateway.outbox import Outbox

    outbox = Outbox(tmp_path / "outbox")
    old_orphan = outbox.put("archive", "s1", b"orphan")
    pending = outbox.put("archive", "s1", b"pending")
    committed_meanwhile = outbox.put("archive", "s2", b"row committed during the scan")
    being_written = outbox.put("archive", "s3", b"a release writing it now")
    start = 1_000_000.0
    for relative in (old_orphan, pending, committed_meanwhile):
        os.utime(outbox.path(relative), (start - 60, start - 60))
    os.utime(outbox.path(being_written), (start + 1, start + 1))
    answers = iter([{pending}, {pending, committed_meanwhile}])

    assert outbox.remove_orphans(lambda: next(answers), older_than=start) == 1
    assert not outbox.path(old_orphan).exists()
    for kept in (pending, committed_meanwhile, being_written):
        assert outbox.path(kept).read_bytes(), kept


def test_commits_before_a_file_is_deleted_are_synced_and_others_are_not(tmp_path: Path) -> None:
    """A commit after which a file is deleted fsyncs the WAL (synchronous=FULL, 2) so a power
    loss cannot roll the row back to a state that needs the deleted file; ordinary commits stay
    NORMAL (1)."""
    from gateway.journal import Journal

    journal = Journal(tmp_path / "journal.sqlite")
    seen: list[int] = []
    with journal.transaction() as db:
        seen.append(db.execute("PRAGMA synchronous").fetchone()[0])
    with journal.transaction(durable=True) as db:
        seen.append(db.execute("PRAGMA synchronous").fetchone()[0])
    with journal.transaction() as db:
        seen.append(db.execute("PRAGMA synchronous").fetchone()[0])
    assert seen == [1, 2, 1]
    # the commits that precede a deletion are the durable kind
    iid = journal.add_received("incoming/x/a.dcm", "s")
    [oid] = journal.mark_queued(iid, "all", [("archive", "archive/s/a.dcm")], "s")
    synced: list[str] = []
    journal._db.set_trace_callback(lambda sql: synced.append(sql))
    journal.mark_sent([oid])
    assert journal.finished_instances([iid])
    journal.close_quarantine_entry("q-1", "released", "release", {})  # files shredded next
    journal._db.set_trace_callback(None)
    assert synced.count("PRAGMA synchronous=FULL") == 3
    journal.close()


def test_a_large_instance_is_held_about_once_while_it_is_processed(
    cfg: GatewayConfig, tmp_path: Path
) -> None:
    """Read from the spool file (not from a copy of its bytes) and written to the outbox from
    the encoder's parts (not from one joined copy): the peak of new memory stays near one
    instance (it was three before)."""
    import tracemalloc

    from dicom_io.files import encode_dataset, encode_dataset_parts

    storage = Storage.open(cfg)
    path = next(iter(write_instances(tmp_path / "in", 1, 1).values()))[0]
    ds = pydicom.dcmread(path)
    ds.PixelData = b"\1" * (16 << 20)
    ds.Rows, ds.Columns = 2048, 4096
    ds.save_as(path, enforce_file_format=True)
    size = path.stat().st_size
    spooled = storage.spool.write((path.read_bytes(),))
    storage.journal.add_received(spooled.relative_path, STUDY, size=spooled.size)
    pipeline = _pipeline(cfg, storage, _poisoned_factory(cfg, "", KeyError), EventRecorder())
    tracemalloc.start()
    try:
        assert pipeline.process_study(STUDY).queued == 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * size, f"peak {peak / size:.2f}x the instance"
    # the parts make exactly the file the joined encoding makes
    [copy] = storage.outbox.root.glob("archive/*/*.dcm")
    written = pydicom.dcmread(copy)
    assert b"".join(encode_dataset_parts(written)) == encode_dataset(written)
    storage.close()
