"""A study still arriving is processed in whole batches of `storage.stream_batch` instances (the
rest once the study is stable); and our associations pause pynetdicom's reactor without the race
that let it steal a C-STORE response."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from deid_core.keys import ProjectKey
from dicom_io.net import ReactorCheckpoint
from gateway.events import EventBus
from gateway.ingest import study_key
from gateway.journal import InstanceState
from gateway.node import Storage
from gateway.pipeline import Pipeline
from tests.support.gateway import KEY_TEXT, config_dict, make_key_file, parse, write_instances

KEY = ProjectKey(KEY_TEXT.encode())


def _pipeline(tmp_path: Path, stream_batch: int, count: int) -> tuple[Pipeline, Storage]:
    data = config_dict(
        tmp_path / "gw",
        make_key_file(tmp_path),
        destinations={"archive": {"ae_title": "A", "host": "127.0.0.1", "port": 104}},
    )
    data["storage"]["study_stable_seconds"] = 3600  # the study never becomes stable here
    data["storage"]["stream_batch"] = stream_batch
    cfg = parse(data)
    storage = Storage.open(cfg)
    studies = write_instances(tmp_path / "in", 1, count)
    (uid, paths) = next(iter(studies.items()))
    for path in paths:
        spooled = storage.spool.write((path.read_bytes(),))
        storage.journal.add_received(spooled.relative_path, study_key(KEY, uid))
    s = storage
    pipeline = Pipeline(cfg, KEY, s.journal, s.spool, s.outbox, s.quarantine, EventBus())
    pipeline.start()
    return pipeline, storage


@pytest.mark.parametrize(("batch", "queued", "waiting"), [(2, 4, 1), (5, 5, 0), (6, 0, 5)])
def test_a_study_still_arriving_goes_on_in_whole_batches(
    tmp_path: Path, batch: int, queued: int, waiting: int
) -> None:
    pipeline, storage = _pipeline(tmp_path, batch, 5)
    # one batch per study and call (studies take turns); the node calls again while work remains
    handled = 0
    while step := pipeline.process_ready():
        assert step == batch
        handled += step
    counts = storage.journal.state_counts()
    assert handled == queued
    assert counts.get(InstanceState.QUEUED.value, 0) == queued
    assert counts.get(InstanceState.RECEIVED.value, 0) == waiting
    # what was queued is in the outbox, one copy per instance, oldest arrivals first
    assert len(list(storage.outbox.root.rglob("*.dcm"))) == queued
    pipeline.stop()
    storage.close()


def test_without_streaming_a_study_waits_until_it_is_stable(tmp_path: Path) -> None:
    pipeline, storage = _pipeline(tmp_path, 0, 5)
    assert pipeline.process_ready() == 0
    assert storage.journal.state_counts()[InstanceState.RECEIVED.value] == 5
    # once stable, the whole study goes
    assert pipeline.process_ready(now=time.time() + 3601) == 5
    pipeline.stop()
    storage.close()


def test_the_checkpoint_reports_paused_only_while_the_reactor_is_blocked() -> None:
    """pynetdicom's own flag said "paused" from just before the reactor's wait until just after
    it; a sender clearing the event in that window went on while the reactor was running."""
    checkpoint = ReactorCheckpoint()
    assert checkpoint.wait() is True  # open: passes straight through, never "blocked"
    assert checkpoint.reactor_blocked is False
    checkpoint.clear()
    assert checkpoint.reactor_blocked is False  # cleared, but the reactor is not inside wait()
    passed = threading.Event()

    def reactor() -> None:
        checkpoint.wait()
        passed.set()

    thread = threading.Thread(target=reactor)
    thread.start()
    deadline = time.monotonic() + 10
    while not checkpoint.reactor_blocked and time.monotonic() < deadline:
        time.sleep(0.001)
    assert checkpoint.reactor_blocked
    assert not passed.is_set()
    checkpoint.set()
    thread.join(10)
    assert passed.is_set()
    assert checkpoint.reactor_blocked is False


def test_our_associations_get_the_safe_pause_and_still_work() -> None:
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from dicom_io.net import nodelay_on_open

    server_ae = AE(ae_title="SCP")
    server_ae.add_supported_context(Verification)
    server = server_ae.start_server(("127.0.0.1", 0), block=False)
    try:
        port = server.server_address[1]
        client = AE(ae_title="SCU")
        client.add_requested_context(Verification)
        assoc = client.associate(
            "127.0.0.1", port, ae_title="SCP", evt_handlers=[(evt.EVT_CONN_OPEN, nodelay_on_open)]
        )
        assert assoc.is_established
        assert type(assoc).__name__ == "_SafelyPausedAssociation"
        assert isinstance(assoc._reactor_checkpoint, ReactorCheckpoint)
        statuses = [int(assoc.send_c_echo().Status) for _ in range(50)]
        assert statuses == [0] * 50
        assoc.release()
        assert not assoc.is_established
    finally:
        server.shutdown()
