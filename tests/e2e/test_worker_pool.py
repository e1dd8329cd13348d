"""The GPU worker pool for real: RabbitMQ, `deid-gateway worker` processes with the tiny model, a
gateway with `executor: celery`, and Orthanc as the archive.

100 photographs go through with a worker SIGKILLed mid-run, and 100 more with the broker
restarted mid-run (photographs keep arriving while it is down): every photograph ends exactly
once in the archive (as its keyed derived instance) or in quarantine with a reason; none is lost
or duplicated, nothing stays in flight.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from deid_core.models import build_tiny_model
from dicom_io.scu import StoreTarget, send_files
from gateway.events import QuarantineReason
from gateway.node import GatewayNode
from tests.support.gateway import (
    GATEWAY_AE,
    MODALITY_AE,
    config_dict,
    destination,
    make_key_file,
    parse,
    running_node,
    wait_until,
)
from tests.support.netns import NetNamespace
from tests.support.orthanc import Orthanc, require_orthanc
from tests.support.photos import Photo, keep_and_edit_routes, write_photos
from tests.support.workerpool import (
    BROKER_URL,
    WorkerPool,
    broker_stopped,
    delete_broker_objects,
    require_rabbitmq,
    unique_queue,
)

pytestmark = [pytest.mark.network, pytest.mark.slow]

PHOTOS = 100
GATE_REASONS = {
    QuarantineReason.LESION_VANISHED.value,
    QuarantineReason.LESION_IOU_BELOW_THRESHOLD.value,
    QuarantineReason.LESION_MASK_UNRELIABLE.value,
}


def _executor(queue: str, result_queue: str) -> dict[str, Any]:
    return {
        "kind": "celery",
        "broker_url": BROKER_URL,
        "queue": queue,
        "result_queue": result_queue,
        "result_timeout_s": 90,
        "max_attempts": 5,
        "heartbeat_interval_s": 1.0,
        "retry_delay_s": 0.5,
    }


class Run:
    """What every test shares: the tiny model, the jobs queue and two workers on it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.model = build_tiny_model(folder / "tiny-sd3")
        self.queue = unique_queue()
        self.result_queues: list[str] = []
        worker_config = {
            "project": {"key": {"env": "UNUSED_BY_WORKERS"}},
            "destinations": {"archive": {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": 1}},
            "routes": keep_and_edit_routes(self.model, ["archive"]),
            "executor": _executor(self.queue, self.queue + ".unused"),
            "logging": {"level": "info"},
        }
        self.pool = WorkerPool(folder / "workers", worker_config)

    def gateway_config(self, tmp_path: Path, orthanc: Orthanc) -> Any:
        result_queue = f"{self.queue}.results.{len(self.result_queues)}"
        self.result_queues.append(result_queue)
        data = config_dict(
            tmp_path / "gw",
            make_key_file(tmp_path),
            destinations={
                "archive": destination(orthanc.host, orthanc.dicom_port, orthanc.ae_title)
            },
            routes=keep_and_edit_routes(self.model, ["archive"]),
            executor=_executor(self.queue, result_queue),
        )
        return parse(data)

    def close(self) -> None:
        self.pool.close()
        delete_broker_objects(
            [self.queue, *self.result_queues],
            [self.queue, f"{self.queue}.heartbeats"],
        )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    require_rabbitmq()
    require_orthanc()
    shared = Run(tmp_path_factory.mktemp("pool"))
    try:
        shared.pool.spawn()
        shared.pool.spawn()
        yield shared
    finally:
        shared.close()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    ns = NetNamespace.create()
    archive = Orthanc(tmp_path / "orthanc", ns)
    try:
        archive.start()
        yield archive
    finally:
        archive.stop()
        ns.destroy()


def _finished(node: GatewayNode) -> int:
    states = node.backlog().journal_states
    return states["forwarded"] + states["quarantined"]


def _wait_for_workers(node: GatewayNode, run: Run, count: int) -> None:
    probe = node.workers
    assert probe is not None
    ok = wait_until(lambda: probe.workers_alive() >= count, 240, interval=0.5)
    logs = "\n".join(run.pool.log(n)[-1500:] for n in run.pool.procs)
    assert ok, f"workers did not announce themselves:\n{logs}"
    # ... and the gateway's /metrics says so
    assert node.monitoring is not None and node.monitoring.server is not None
    url = f"http://127.0.0.1:{node.monitoring.server.port}/metrics"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        text = response.read().decode()
    [line] = [x for x in text.splitlines() if x.startswith("dicomgw_workers_up ")]
    assert float(line.split()[1]) >= count
    assert "dicomgw_workers_last_heartbeat_timestamp_seconds " in text


def _send(node: GatewayNode, photos: list[Photo]) -> None:
    target = StoreTarget(GATEWAY_AE, *node.address, MODALITY_AE)  # type: ignore[misc]
    assert send_files(target, [p.path for p in photos]) == [0] * len(photos)


def _account_for_every_photograph(
    node: GatewayNode, orthanc: Orthanc, photos: list[Photo]
) -> dict[str, int]:
    """Exactly once: each photograph is either in the archive as its keyed derived instance, or in
    quarantine with a gate reason; nothing else is in the archive, nothing is left in flight."""
    storage = node.storage
    pipeline = node.pipeline
    assert storage is not None and pipeline is not None
    states = node.backlog().journal_states
    assert states["received"] == 0 and states["editing"] == 0 and states["queued"] == 0
    assert storage.journal.pixel_job_count() == 0
    quarantined_originals: dict[str, str] = {}
    for row in storage.quarantine.list():
        entry = storage.quarantine.show(row.id)
        assert row.reason in GATE_REASONS, (row.reason, dict(entry.details))
        assert "panel.png" in entry.artifacts
        original = pydicom.dcmread(entry.folder / "instance.dcm", stop_before_pixels=True)
        assert original.SOPInstanceUID not in quarantined_originals  # quarantined once
        quarantined_originals[original.SOPInstanceUID] = row.reason
    sent = {p.sop_instance_uid for p in photos}
    # route "edit" (secondary captures, the tiny model) is always rejected, route "keep" never
    assert set(quarantined_originals) == {p.sop_instance_uid for p in photos if p.secondary_capture}
    expected = {pipeline.derived_uid(uid, "flowedit") for uid in sent - set(quarantined_originals)}
    in_archive = {
        orthanc.tags(i)["SOPInstanceUID"] for i in orthanc.instances()
    }  # Orthanc keeps one instance per SOP Instance UID
    assert in_archive == expected
    assert orthanc.count_instances() == len(expected)
    assert len(expected) + len(quarantined_originals) == len(photos)
    assert states["forwarded"] == len(expected)
    assert states["quarantined"] == len(quarantined_originals)
    assert not list(node.cfg.storage.spool_dir.glob("incoming/*/*.dcm"))
    return {"forwarded": len(expected), "quarantined": len(quarantined_originals)}


def test_worker_killed_mid_run_loses_nothing(run: Run, tmp_path: Path, orthanc: Orthanc) -> None:
    photos = write_photos(tmp_path / "in", PHOTOS, per_study=10, seed=1)
    cfg = run.gateway_config(tmp_path, orthanc)
    started = time.monotonic()
    with running_node(cfg) as (node, _):
        _wait_for_workers(node, run, 2)
        ready = time.monotonic()
        _send(node, photos)
        assert wait_until(lambda: _finished(node) >= 15, 180, interval=0.2)
        victim = run.pool.alive()[0]
        run.pool.kill(victim)  # SIGKILL: its job in hand is never acknowledged
        killed_at = _finished(node)
        # a replacement joins (as an orchestrator would start one); the survivor goes on
        threading.Thread(target=run.pool.spawn, daemon=True).start()
        assert wait_until(lambda: _finished(node) == PHOTOS, 240, interval=0.5), (
            node.backlog().journal_states
        )
        time.sleep(2.0)  # a late duplicate result or a re-sent copy would show up now
        counts = _account_for_every_photograph(node, orthanc, photos)
    assert "pixel_job_done" in run.pool.log(victim)  # it was working when killed
    assert counts["forwarded"] > 0 and counts["quarantined"] > 0
    print(
        f"worker killed after {killed_at} of {PHOTOS}; {counts}; workers ready after "
        f"{ready - started:.1f} s, run {time.monotonic() - ready:.1f} s"
    )


def test_broker_restarted_mid_run_loses_nothing(run: Run, tmp_path: Path, orthanc: Orthanc) -> None:
    photos = write_photos(tmp_path / "in", PHOTOS, per_study=10, seed=2)
    cfg = run.gateway_config(tmp_path, orthanc)
    with running_node(cfg) as (node, _):
        _wait_for_workers(node, run, 2)
        _send(node, photos[:50])
        assert wait_until(lambda: _finished(node) >= 10, 180, interval=0.2)
        with broker_stopped():
            # the gateway keeps accepting while the broker is away
            _send(node, photos[50:])
            time.sleep(2.0)
            during = node.backlog().journal_states
        assert wait_until(lambda: _finished(node) == PHOTOS, 300, interval=0.5), (
            node.backlog().journal_states
        )
        time.sleep(2.0)
        counts = _account_for_every_photograph(node, orthanc, photos)
    assert during["received"] + during["editing"] > 0  # work was waiting on the broker
    assert counts["forwarded"] > 0 and counts["quarantined"] > 0
    print(f"broker restarted; during the outage {during}; {counts}")
