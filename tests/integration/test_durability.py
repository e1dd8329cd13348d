"""Durability end to end: storescu sends to a running node that forwards to a real storage SCP
on loopback. A poisoned instance must not block the rest; files the journal no longer needs are
cleaned up on start, and files it needs never are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset

from deid_core.keys import ProjectKey
from dicom_io.scp import ReceivedInstance, StoreRefused
from gateway.config import GatewayConfig
from gateway.demo import FolderArchive
from gateway.events import ForwardFailed, QuarantineReason
from gateway.journal import Journal
from gateway.pipeline import default_deidentifier_factory
from tests.support.dcmtk import require_dcmtk, storescu
from tests.support.gateway import (
    GATEWAY_AE,
    MODALITY_AE,
    config_dict,
    destination,
    make_key_file,
    parse,
    running_node,
    wait_until,
    write_instances,
)

pytestmark = pytest.mark.network


class _PoisonedProfile:
    """The real profile, except that one SOP Instance UID raises a KeyError (what pydicom raises
    on some hostile files): not a PermanentError, and its message carries a value."""

    def __init__(self, inner: Any, poisoned_uid: str) -> None:
        self.inner = inner
        self.poisoned_uid = poisoned_uid
        self.poisoned_calls = 0
        self.pseudonymizer = getattr(inner, "pseudonymizer", None)

    def deidentify(self, ds: Dataset) -> Dataset:
        if str(ds.SOPInstanceUID) == self.poisoned_uid:
            self.poisoned_calls += 1
            raise KeyError(str(ds.PatientID))
        result: Dataset = self.inner.deidentify(ds)
        return result


def _config(tmp_path: Path, archive_port: int, **storage: Any) -> GatewayConfig:
    return parse(
        config_dict(
            tmp_path / "gw",
            make_key_file(tmp_path),
            destinations={"archive": destination("127.0.0.1", archive_port, "ARCHIVE")},
            storage={"study_stable_seconds": 0.3, **storage},
        )
    )


def test_a_poisoned_instance_is_quarantined_and_every_other_instance_is_delivered(
    tmp_path: Path,
) -> None:
    require_dcmtk()
    archive = FolderArchive(tmp_path / "archive")
    _, archive_port = archive.start()
    cfg = _config(tmp_path, archive_port)
    studies = write_instances(tmp_path / "in", studies=3, per_study=3)
    first_study = next(iter(studies.values()))
    poisoned_uid = str(pydicom.dcmread(first_study[0]).SOPInstanceUID)
    profiles: list[_PoisonedProfile] = []

    def factory(c: GatewayConfig, name: str, key: ProjectKey) -> _PoisonedProfile:
        real = default_deidentifier_factory()(c, name, key)
        profiles.append(_PoisonedProfile(real, poisoned_uid))
        return profiles[-1]

    try:
        with running_node(cfg, deidentifier_factory=factory) as (node, _events):
            host, port = node.address  # type: ignore[misc]
            files = [f for study in studies.values() for f in study]
            sent = storescu(host, port, MODALITY_AE, GATEWAY_AE, files)
            assert sent.returncode == 0, sent.stderr
            assert wait_until(lambda: archive.received == 8, 30), archive.received
            quarantine = node.storage.quarantine  # type: ignore[union-attr]
            assert wait_until(lambda: len(quarantine.list()) == 1, 30)
            assert wait_until(lambda: node.backlog().journal_states["forwarded"] == 8, 10)
            states = node.backlog().journal_states
            assert states["received"] == 0 and states["quarantined"] == 1
            entry = quarantine.list()[0]
            assert entry.reason == QuarantineReason.PROCESSING_ERROR.value
            record = json.loads((quarantine.root / entry.id / "entry.json").read_text())
        assert sum(p.poisoned_calls for p in profiles) == cfg.storage.max_processing_attempts
        assert record["details"]["error"].startswith("KeyError at ")
        assert "4711" not in json.dumps(record)
        delivered = {str(pydicom.dcmread(p).PatientID) for p in archive.instances()}
        assert "PID-4711" not in delivered
    finally:
        archive.stop()


def test_restart_removes_leftovers_and_keeps_every_file_a_row_needs(tmp_path: Path) -> None:
    """Files no journal row needs (outbox copies and quarantine folders written just before a
    crash, spool originals of finished instances whose deletion the crash interrupted) are
    removed on start; spool files of unfinished rows, and of no row at all, stay."""
    require_dcmtk()
    archive = FolderArchive(tmp_path / "archive")
    _, archive_port = archive.start()
    # the archive is stopped: copies stay pending in the outbox
    archive.stop()
    cfg = _config(tmp_path, archive_port, study_stable_seconds=0.3)
    studies = write_instances(tmp_path / "in", studies=2, per_study=2)
    files = [f for study in studies.values() for f in study]
    with running_node(cfg) as (node, _):
        host, port = node.address  # type: ignore[misc]
        assert storescu(host, port, MODALITY_AE, GATEWAY_AE, files).returncode == 0
        assert wait_until(lambda: node.backlog().journal_states["queued"] == 4, 30)
    s = cfg.storage
    journal = Journal(s.journal)
    pending = journal.live_outbox_paths()
    received_before = set(journal.known_spool_paths())
    # a quarantined instance whose spool original survived a crash between commit and unlink
    done = journal.add_received("incoming/20000101/finished.dcm", "study-done")
    journal.mark_quarantined(done, "q-1111111111111111", "no_route", "", "study-done")
    journal.close()
    (s.spool_dir / "incoming/20000101").mkdir(parents=True)
    finished_original = s.spool_dir / "incoming/20000101/finished.dcm"
    finished_original.write_bytes(files[0].read_bytes())
    # an outbox copy and a quarantine folder written just before a crash, with no row
    orphan_copy = s.outbox_dir / "archive" / "0123456789abcdef" / "orphan.dcm"
    orphan_copy.parent.mkdir(parents=True)
    orphan_copy.write_bytes(b"copy")
    orphan_entry = s.quarantine_dir / "q-0000000000000000"
    orphan_entry.mkdir()
    (orphan_entry / "instance.dcm").write_bytes(b"held")

    with running_node(cfg) as (node, _):
        assert not orphan_copy.exists()
        assert not orphan_entry.exists()
        assert not finished_original.exists()
        for relative in pending:
            assert (s.outbox_dir / relative).is_file(), relative
        for relative in received_before:
            assert (s.spool_dir / relative).is_file(), relative
        assert node.backlog().journal_states["queued"] == 4


class _Archive(FolderArchive):
    """A storage SCP that answers 0xA700 (out of resources, retried) while `accept` is False and
    refuses the instances in `refuse` (their SOP Instance UIDs, or the first one it sees when
    `refuse_first`) with `refusal_status` for ever."""

    def __init__(self, folder: Path, accept: bool = True, refuse_first: bool = False) -> None:
        super().__init__(folder)
        self.accept = accept
        self.refuse_first = refuse_first
        self.refuse: set[str] = set()
        self.refusal_status = 0xA900
        self.refusals = 0

    def store(self, instance: ReceivedInstance) -> None:
        if not self.accept:
            raise StoreRefused(0xA700, "disk_full")
        if self.refuse_first and not self.refuse:
            self.refuse.add(instance.sop_instance_uid)
        if instance.sop_instance_uid in self.refuse:
            self.refusals += 1
            raise StoreRefused(self.refusal_status, "malformed")
        super().store(instance)


def test_a_vanished_or_garbled_outbox_copy_ends_alone_and_the_batch_is_delivered(
    tmp_path: Path,
) -> None:
    require_dcmtk()
    archive = _Archive(tmp_path / "archive", accept=False)
    _, archive_port = archive.start()
    cfg = _config(tmp_path, archive_port)
    files = next(iter(write_instances(tmp_path / "in", studies=1, per_study=4).values()))
    originals = {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
    try:
        with running_node(cfg) as (node, events):
            host, port = node.address  # type: ignore[misc]
            assert storescu(host, port, MODALITY_AE, GATEWAY_AE, files).returncode == 0
            assert wait_until(lambda: bool(events.of(ForwardFailed)), 30)
        copies = sorted(cfg.storage.outbox_dir.glob("archive/*/*.dcm"))
        assert len(copies) == 4
        copies[0].unlink()  # vanished
        copies[1].write_bytes(b"not a DICOM file")  # garbled
        archive.accept = True
        with running_node(cfg) as (node, _):
            quarantine = node.storage.quarantine  # type: ignore[union-attr]
            assert wait_until(lambda: archive.received == 2, 30), archive.received
            assert wait_until(lambda: len(quarantine.list()) == 2, 10)
            assert wait_until(lambda: node.backlog().journal_states["forwarded"] == 2, 10)
            states = node.backlog().journal_states
            assert states["quarantined"] == 2 and states["queued"] == 0
            entries = {e.reason: e for e in quarantine.list()}
            assert set(entries) == {
                QuarantineReason.OUTBOX_FILE_MISSING.value,
                QuarantineReason.DEAD_LETTER.value,
            }
            missing = quarantine.show(entries["outbox_file_missing"].id)
            assert missing.details["last_error"] == "outbox_file_missing"
            assert missing.details["original_kept"] is True
            # the received original is kept: a release processes the instance again
            kept = pydicom.dcmread(missing.folder / "instance.dcm")
            assert str(kept.SOPInstanceUID) in originals
            assert entries["dead_letter"].destination == "archive"
        assert not list(cfg.storage.outbox_dir.glob("archive/*/*.dcm"))
        assert not list(cfg.storage.spool_dir.glob("incoming/*/*.dcm"))
    finally:
        archive.stop()


def test_a_permanently_refused_instance_is_dead_lettered_alone_with_its_copy(
    tmp_path: Path,
) -> None:
    require_dcmtk()
    archive = _Archive(tmp_path / "archive", refuse_first=True)
    _, archive_port = archive.start()
    cfg = _config(tmp_path, archive_port)
    files = next(iter(write_instances(tmp_path / "in", studies=1, per_study=3).values()))
    try:
        with running_node(cfg) as (node, events):
            host, port = node.address  # type: ignore[misc]
            assert storescu(host, port, MODALITY_AE, GATEWAY_AE, files).returncode == 0
            quarantine = node.storage.quarantine  # type: ignore[union-attr]
            assert wait_until(lambda: len(quarantine.list()) == 1, 30)
            assert wait_until(lambda: node.backlog().journal_states["forwarded"] == 2, 30)
            states = node.backlog().journal_states
            assert states["quarantined"] == 1 and states["queued"] == 0
            entry = quarantine.show(quarantine.list()[0].id)
        assert archive.received == 2
        assert archive.refusals == 1  # refused for good: not retried 50 times
        assert entry.row.reason == QuarantineReason.DEAD_LETTER.value
        assert entry.details["attempts"] == 1
        assert "0xA900" in entry.details["last_error"]
        assert entry.folder.name.startswith("q-") and len(entry.folder.name) == 18
        copy = pydicom.dcmread(entry.folder / "instance.dcm")
        assert str(copy.SOPInstanceUID) in archive.refuse  # the de-identified copy
        assert str(copy.PatientID) != "PID-4711"
        assert {f.reason for f in events.of(ForwardFailed)} == {"status"}
        assert not list(cfg.storage.outbox_dir.glob("archive/*/*.dcm"))
    finally:
        archive.stop()


def test_an_instance_over_the_size_limit_is_refused_and_the_association_goes_on(
    tmp_path: Path,
) -> None:
    """storage.max_instance_bytes: a larger instance gets 0xA700 (the sender keeps it), is not
    written, and the next, smaller instance on the same association is stored."""
    from dicom_io.scu import StoreTarget, send_files
    from gateway.events import InstanceRefused, RefusalReason

    require_dcmtk()
    small, big = next(iter(write_instances(tmp_path / "in", 1, 2).values()))
    limit = 1 << 20
    padded = pydicom.dcmread(big)
    padded.add_new(0x00091010, "OB", b"\0" * limit)  # a private element: past the limit
    padded.save_as(big, enforce_file_format=True)
    assert big.stat().st_size > limit > small.stat().st_size
    cfg = parse(
        config_dict(
            tmp_path / "gw",
            make_key_file(tmp_path),
            storage={"study_stable_seconds": 3600, "max_instance_bytes": limit},
        )
    )
    files = [small, big]
    with running_node(cfg) as (node, events):
        host, port = node.address  # type: ignore[misc]
        target = StoreTarget(GATEWAY_AE, host, port, MODALITY_AE)
        assert send_files(target, [files[1], files[0]]) == [0xA700, 0x0000]
        result = storescu(host, port, MODALITY_AE, GATEWAY_AE, [files[1]])
        assert "out of resources" in (result.stdout + result.stderr).lower().replace(
            "outofresources", "out of resources"
        )
        assert {e.reason for e in events.of(InstanceRefused)} == {RefusalReason.TOO_LARGE}
        assert node.backlog().journal_states["received"] == 1
        assert len(list(cfg.storage.spool_dir.glob("incoming/*/*.dcm"))) == 1


@pytest.mark.parametrize(("drain_timeout_s", "count"), [(30.0, 120), (0.2, 600)])
def test_sigterm_mid_transfer_keeps_every_acknowledged_instance(
    tmp_path: Path, drain_timeout_s: float, count: int
) -> None:
    """SIGTERM to `deid-gateway serve` while storescu sends: the listener stops taking new
    associations, the open one is drained (to its end, or aborted after node.drain_timeout_s),
    the process exits 0, and after a restart every instance storescu saw acknowledged is in the
    journal and the spool."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    import yaml

    from tests.conftest import REPO
    from tests.support.dcmtk import storescu_popen

    require_dcmtk()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = config_dict(
        tmp_path / "gw",
        make_key_file(tmp_path),
        storage={"study_stable_seconds": 3600, "stream_batch": 0},  # all stays in the spool
        node={"port": port, "drain_timeout_s": drain_timeout_s},
        logging={"level": "info", "format": "json"},
    )
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(data))
    files = [f for g in write_instances(tmp_path / "in", 2, count // 2).values() for f in g]
    log = tmp_path / "gateway.log"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert wait_until(lambda: b"gateway_listening" in log.read_bytes(), 60), log.read_text()
        sender = storescu_popen("127.0.0.1", port, MODALITY_AE, GATEWAY_AE, files)
        journal = Journal(Path(data["storage"]["journal"]))
        assert wait_until(lambda: sum(journal.state_counts().values()) >= 10, 60)
        journal.close()
        gateway.send_signal(signal.SIGTERM)
        out, _ = sender.communicate(timeout=120)
        gateway.wait(60)
    finally:
        if gateway.poll() is None:
            gateway.kill()
    assert gateway.returncode == 0, log.read_text()[-3000:]
    assert b"shutdown_complete" in log.read_bytes()
    # storescu -v: "Sending file: PATH" ... "Received Store Response (Success)"
    acknowledged: list[str] = []
    current = ""
    for line in out.splitlines():
        if "Sending file:" in line:
            current = line.split("Sending file:", 1)[1].strip()
        elif "Received Store Response" in line and "Success" in line:
            acknowledged.append(current)
    assert acknowledged, out[-2000:]
    if drain_timeout_s < 1.0:
        assert len(acknowledged) < len(files), "the drain must end mid-transfer"
    else:  # the open association was drained to its end
        assert len(acknowledged) == len(files)
    wanted = {str(pydicom.dcmread(p).SOPInstanceUID) for p in acknowledged}

    cfg = parse({**data, "node": {**data["node"], "port": 0}})
    with running_node(cfg) as (node, _):
        spool = node.storage.spool  # type: ignore[union-attr]
        spooled = {str(pydicom.dcmread(p).SOPInstanceUID) for p in spool.files()}
        rows = node.storage.journal.known_spool_paths()  # type: ignore[union-attr]
        assert {str(p.relative_to(spool.root)) for p in spool.files()} <= rows
    assert wanted <= spooled, f"{len(wanted - spooled)} acknowledged instances missing"


def test_a_batch_that_does_not_fit_one_association_is_split_not_dead_lettered(
    tmp_path: Path,
) -> None:
    """`send_files` refuses a batch needing more presentation contexts than one association
    offers (InvalidInputError, before connecting). The forwarder halves the batch until it fits;
    nothing is dead-lettered. The transport here allows two files per association."""
    import random

    from deid_core.errors import InvalidInputError
    from dicom_io.scu import StoreTarget
    from gateway.events import EventBus
    from gateway.forwarder import DestinationWorker, DimseTransport
    from gateway.node import Storage

    class _TwoContexts(DimseTransport):
        def __init__(self, target: StoreTarget) -> None:
            super().__init__(target)
            self.batches: list[int] = []

        def send(self, files, progress):  # type: ignore[no-untyped-def]
            self.batches.append(len(files))
            if len(files) > 2:
                raise InvalidInputError("a batch needs 5 presentation contexts; at most 2 fit")
            return super().send(files, progress)

    archive = FolderArchive(tmp_path / "archive")
    _, archive_port = archive.start()
    cfg = _config(tmp_path, archive_port)
    storage = Storage.open(cfg)
    files = next(iter(write_instances(tmp_path / "in", 1, 5).values()))
    for f in files:
        iid = storage.journal.add_received(f"incoming/x/{f.name}", "study")
        copy = storage.outbox.put("archive", "study", f.read_bytes())
        storage.journal.mark_queued(iid, "all", [("archive", copy)], "study")
    target = StoreTarget("ARCHIVE", "127.0.0.1", archive_port, GATEWAY_AE)
    transport = _TwoContexts(target)
    worker = DestinationWorker(
        "archive",
        cfg.destinations["archive"],  # type: ignore[arg-type]
        transport,
        storage.journal,
        storage.outbox,
        storage.spool,
        storage.quarantine,
        EventBus(),
        random.Random(1),
    )
    try:
        for _ in range(10):
            if not worker.run_once():
                break
        assert archive.received == 5
        assert storage.quarantine.list() == []
        assert storage.journal.state_counts()["forwarded"] == 5
        assert transport.batches == [5, 2, 2, 1]  # 5 did not fit: halved to 2 for this study
    finally:
        archive.stop()
        storage.close()
