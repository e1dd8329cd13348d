"""Modality (dcmtk storescu) → gateway → research archive (Orthanc in a network namespace).

Every test gets its own Orthanc (own namespace, own storage), so counts in Orthanc are exact.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dicom_io.scu import StoreTarget, send_files
from gateway.events import ForwardFailed
from gateway.journal import Journal
from tests.conftest import REPO
from tests.support.dcmtk import require_dcmtk, storescu, storescu_popen
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
from tests.support.netns import NetNamespace
from tests.support.orthanc import Orthanc, require_orthanc

pytestmark = [pytest.mark.network, pytest.mark.slow]


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    require_orthanc()
    require_dcmtk()
    ns = NetNamespace.create()
    archive = Orthanc(tmp_path / "orthanc", ns)
    try:
        archive.start()
        yield archive
    finally:
        archive.stop()
        ns.destroy()


def _gateway_config(tmp_path: Path, orthanc: Orthanc, **extra):  # type: ignore[no-untyped-def]
    return config_dict(
        tmp_path / "gw",
        make_key_file(tmp_path),
        destinations={"archive": destination(orthanc.host, orthanc.dicom_port, orthanc.ae_title)},
        **extra,
    )


def _assert_deidentified(orthanc: Orthanc, original_studies: set[str], sample: int = 20) -> None:
    for instance in orthanc.instances()[:sample]:
        tags = orthanc.tags(instance)
        assert tags.get("PatientName") != "TEST^IDENTIFIABLE"
        assert tags.get("PatientID") != "PID-4711"
        assert tags["StudyInstanceUID"] not in original_studies
        assert tags["StudyInstanceUID"].startswith("2.25.")


def test_thousand_instances_from_concurrent_senders_arrive_exactly_once(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    studies = write_instances(tmp_path / "in", studies=10, per_study=100)
    cfg = parse(_gateway_config(tmp_path, orthanc))
    with running_node(cfg) as (node, _):
        host, port = node.address  # type: ignore[misc]
        started = time.monotonic()
        # five modalities at once, two studies each, one association per sender
        senders = []
        groups = list(studies.values())
        for i in range(5):
            files = groups[2 * i] + groups[2 * i + 1]
            senders.append(storescu_popen(host, port, MODALITY_AE, GATEWAY_AE, files))
        for proc in senders:
            output, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, output[-2000:]
            assert "Success" in output
        print(f"ingest done after {time.monotonic() - started:.1f} s")
        assert orthanc.wait_for_instances(1000, timeout=120) == 1000
        print(f"all in the archive after {time.monotonic() - started:.1f} s")
        time.sleep(1.0)  # nothing more may arrive: exactly once
        assert orthanc.count_instances() == 1000
        assert orthanc.count_studies() == 10
        _assert_deidentified(orthanc, set(studies))
        assert wait_until(lambda: node.backlog().journal_states["forwarded"] == 1000, 10)
        # every received original is gone once forwarded; nothing left in the outbox
        assert not list(cfg.storage.spool_dir.glob("incoming/*/*.dcm"))
        assert not list(cfg.storage.outbox_dir.glob("*/*/*.dcm"))


def test_archive_outage_longer_than_several_retries_still_delivers_all(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    studies = write_instances(tmp_path / "in", studies=2, per_study=20)
    cfg = parse(_gateway_config(tmp_path, orthanc))
    orthanc.stop()
    with running_node(cfg) as (node, events):
        host, port = node.address  # type: ignore[misc]
        result = storescu(host, port, MODALITY_AE, GATEWAY_AE, tmp_path / "in")
        assert result.returncode == 0, result.stdout[-2000:]
        # the archive is down: ingest still succeeded, and the forwarder retries
        assert wait_until(lambda: len(events.of(ForwardFailed)) >= 4, 30)
        assert all(e.will_retry for e in events.of(ForwardFailed))
        assert wait_until(lambda: node.backlog().outbox_per_destination == {"archive": 40}, 10)
        orthanc.start()
        assert orthanc.wait_for_instances(40, timeout=60) == 40
        assert orthanc.count_studies() == 2
        _assert_deidentified(orthanc, set(studies))
        assert wait_until(lambda: node.backlog().journal_states["forwarded"] == 40, 10)
        assert not node.storage.quarantine.list()  # type: ignore[union-attr]


def _serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=config.parent,
    )


def test_kill_9_mid_stream_and_restart_delivers_every_acknowledged_instance(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    files = [p for group in write_instances(tmp_path / "in", 3, 100).values() for p in group]
    data = _gateway_config(tmp_path, orthanc, node={"port": 0})
    # a fixed port so the restarted gateway is found again
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data["node"]["port"] = port
    data["logging"] = {"level": "info", "format": "json"}
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(data))
    log = tmp_path / "gateway.log"
    target = StoreTarget(GATEWAY_AE, "127.0.0.1", port, MODALITY_AE)

    gateway = _serve(config, log)
    try:
        assert wait_until(lambda: b"gateway_listening" in log.read_bytes(), 30), log.read_text()
        acknowledged: list[Path] = []
        statuses: list[int | None] = []

        def modality() -> None:
            statuses.extend(send_files(target, files))

        sender = threading.Thread(target=modality)
        sender.start()
        journal = Journal(Path(data["storage"]["journal"]))
        # let about a third arrive, then kill -9 the gateway in the middle of the stream
        assert wait_until(lambda: sum(journal.state_counts().values()) >= 100, 60)
        os.kill(gateway.pid, signal.SIGKILL)
        gateway.wait(10)
        sender.join(120)
        journal.close()
        acknowledged = [f for f, s in zip(files, statuses, strict=False) if s == 0]
        assert 100 <= len(acknowledged) < len(files), "the kill must land mid-stream"

        gateway = _serve(config, log)
        assert wait_until(lambda: log.read_bytes().count(b"gateway_listening") == 2, 30)
        # the modality resends what it never got a success for
        rest = [f for f in files if f not in set(acknowledged)]
        assert all(s == 0 for s in send_files(target, rest))
        assert orthanc.wait_for_instances(len(files), timeout=120) == len(files)
        time.sleep(1.0)
        assert orthanc.count_instances() == len(files)
        assert orthanc.count_studies() == 3
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(30)
        except subprocess.TimeoutExpired:
            gateway.kill()
    assert gateway.returncode == 0, log.read_text()[-3000:]
    assert b"shutdown_complete" in log.read_bytes()
