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
