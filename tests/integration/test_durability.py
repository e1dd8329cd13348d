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
from gateway.config import GatewayConfig
from gateway.demo import FolderArchive
from gateway.events import QuarantineReason
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
