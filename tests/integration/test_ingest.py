"""The DICOM listener against real peers (dcmtk, pynetdicom, raw sockets) on loopback: who may
associate, durability before success, and every ingest fault with its defined answer."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path

import pydicom
import pytest

from dicom_io.header import read_file_meta
from dicom_io.scu import StoreTarget, send_files
from gateway.events import (
    AssociationClosed,
    AssociationRejected,
    InstanceRefused,
    InstanceStored,
    RefusalReason,
)
from gateway.journal import Journal
from tests.support.dcmtk import echoscu, require_dcmtk, storescu
from tests.support.gateway import (
    GATEWAY_AE,
    MODALITY_AE,
    config_dict,
    make_key_file,
    parse,
    running_node,
    wait_until,
    write_instances,
)

pytestmark = pytest.mark.network


@pytest.fixture
def cfg(tmp_path: Path):  # type: ignore[no-untyped-def]
    # A long stable age: instances stay in the spool where the tests can look at them.
    return parse(
        config_dict(
            tmp_path,
            make_key_file(tmp_path),
            storage={"study_stable_seconds": 3600},
            node={
                "allowed_callers": [
                    {"ae_title": MODALITY_AE, "host": "127.0.0.1"},
                    {"ae_title": "ELSEWHERE", "host": "10.99.0.0/16"},
                ]
            },
        )
    )


def _echo_ok(port: int) -> bool:
    return echoscu("127.0.0.1", port, MODALITY_AE, GATEWAY_AE).returncode == 0


def test_echo_and_callers_are_checked_at_association(cfg) -> None:  # type: ignore[no-untyped-def]
    require_dcmtk()
    with running_node(cfg) as (node, events):
        _, port = node.address  # type: ignore[misc]
        assert _echo_ok(port)
        # unknown calling AE title
        assert echoscu("127.0.0.1", port, "STRANGER", GATEWAY_AE).returncode != 0
        # a known AE title, but allowed only from another network
        assert echoscu("127.0.0.1", port, "ELSEWHERE", GATEWAY_AE).returncode != 0
        # wrong called AE title
        assert echoscu("127.0.0.1", port, MODALITY_AE, "NOTUS").returncode != 0
        assert _echo_ok(port), "the gateway keeps serving after refusals"
        reasons = [e.reason for e in events.of(AssociationRejected)]
        assert reasons == [
            RefusalReason.UNKNOWN_CALLER,
            RefusalReason.UNKNOWN_CALLER,
            RefusalReason.CALLED_AE,
        ]


def test_instances_are_durable_before_storescu_hears_success(cfg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    require_dcmtk()
    studies = write_instances(tmp_path / "in", studies=2, per_study=5)
    with running_node(cfg) as (node, events):
        _, port = node.address  # type: ignore[misc]
        result = storescu("127.0.0.1", port, MODALITY_AE, GATEWAY_AE, tmp_path / "in")
        assert result.returncode == 0, result.stdout + result.stderr
        # storescu has returned: every instance must already be journaled and on disk.
        journal = Journal(cfg.storage.journal)
        assert journal.state_counts()["received"] == 10
        spooled = sorted(cfg.storage.spool_dir.glob("incoming/*/*.dcm"))
        assert len(spooled) == 10
        assert not list(cfg.storage.spool_dir.glob("incoming/*/*.part"))
        journal.close()
        # the spooled files are the sender's instances (as encoded on the wire), with file meta
        # that records who sent them to whom
        originals = {}
        for files in studies.values():
            for p in files:
                ds = pydicom.dcmread(p)
                originals[ds.SOPInstanceUID] = ds.PixelData
        for path in spooled:
            data = path.read_bytes()
            meta = read_file_meta(data)
            assert meta.values["SendingApplicationEntityTitle"] == MODALITY_AE
            assert meta.values["ReceivingApplicationEntityTitle"] == GATEWAY_AE
            ds = pydicom.dcmread(path)
            assert originals.pop(ds.SOPInstanceUID) == ds.PixelData
        assert not originals
        # no PHI in file names
        assert all(p.stem.isalnum() and len(p.stem) == 32 for p in spooled)
        stored = events.of(InstanceStored)
        assert len(stored) == 10
        assert len({e.study_key for e in stored}) == 2


def test_truncated_dataset_is_refused_and_the_gateway_keeps_serving(  # type: ignore[no-untyped-def]
    cfg, tmp_path: Path
) -> None:
    files = write_instances(tmp_path / "in", studies=1, per_study=2)
    good, bad = next(iter(files.values()))
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) - 5000])  # the pixel data is cut short
    with running_node(cfg) as (node, events):
        host, port = node.address  # type: ignore[misc]
        statuses = send_files(StoreTarget(GATEWAY_AE, host, port, MODALITY_AE), [bad, good])
        assert statuses == [0xC000, 0x0000]
        refused = events.of(InstanceRefused)
        assert [(e.reason, e.status) for e in refused] == [(RefusalReason.MALFORMED, 0xC000)]
        assert len(events.of(InstanceStored)) == 1


def test_random_bytes_on_the_port_do_not_disturb_the_gateway(cfg) -> None:  # type: ignore[no-untyped-def]
    require_dcmtk()
    with running_node(cfg) as (node, events):
        host, port = node.address  # type: ignore[misc]
        rng = __import__("random").Random(7)
        for size in (1, 10, 6, 1000, 70000):
            with socket.create_connection((host, port), timeout=5) as sock:
                try:
                    sock.sendall(bytes(rng.randrange(256) for _ in range(size)))
                    sock.shutdown(socket.SHUT_WR)
                    sock.settimeout(5)
                    while sock.recv(100):  # an A-ABORT perhaps, then the gateway closes
                        pass
                except OSError:
                    pass
        # a PDU header announcing a huge association request, then nothing
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"\x01\x00\xff\xff\xff\xff")
        assert _echo_ok(port)
        assert not events.of(InstanceStored)


class _CuttingProxy:
    """Relays one connection to the gateway and cuts it after `limit` bytes from the client:
    an association that dies in the middle of a C-STORE."""

    def __init__(self, target: tuple[str, int], limit: int) -> None:
        self.target = target
        self.limit = limit
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(self.target)

        def back() -> None:
            try:
                while chunk := upstream.recv(65536):
                    client.sendall(chunk)
            except OSError:
                pass

        threading.Thread(target=back, daemon=True).start()
        sent = 0
        try:
            while sent < self.limit:
                chunk = client.recv(min(65536, self.limit - sent))
                if not chunk:
                    break
                upstream.sendall(chunk)
                sent += len(chunk)
        finally:
            # shutdown() sends FIN at once (close() alone waits for the relay thread's recv)
            for sock in (upstream, client):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self.listener.close()


def test_association_aborted_mid_transfer_keeps_only_complete_instances(  # type: ignore[no-untyped-def]
    cfg, tmp_path: Path
) -> None:
    files = next(iter(write_instances(tmp_path / "in", studies=1, per_study=3).values()))
    size = files[0].stat().st_size
    with running_node(cfg) as (node, events):
        host, port = node.address  # type: ignore[misc]
        # association set-up (~0.5 KB) + the first instance + half of the second
        proxy = _CuttingProxy((host, port), limit=600 + size + size // 2)
        statuses = send_files(StoreTarget(GATEWAY_AE, "127.0.0.1", proxy.port, MODALITY_AE), files)
        assert statuses[0] == 0x0000
        assert statuses[1] is None and statuses[2] is None
        assert wait_until(lambda: bool(events.of(AssociationClosed)), 10)
        closed = events.of(AssociationClosed)
        assert closed[0].aborted and closed[0].instances == 1
        journal = Journal(cfg.storage.journal)
        assert journal.state_counts()["received"] == 1
        journal.close()
        assert len(list(cfg.storage.spool_dir.glob("incoming/*/*"))) == 1
        assert _echo_ok(port)


def test_disk_past_high_water_mark_answers_out_of_resources(tmp_path: Path) -> None:
    require_dcmtk()
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    cfg = parse(
        config_dict(
            tmp_path,
            make_key_file(tmp_path),
            storage={"study_stable_seconds": 3600, "min_free_bytes": free * 2},
        )
    )
    files = next(iter(write_instances(tmp_path / "in", studies=1, per_study=2).values()))
    with running_node(cfg) as (node, events):
        host, port = node.address  # type: ignore[misc]
        statuses = send_files(StoreTarget(GATEWAY_AE, host, port, MODALITY_AE), files)
        assert statuses == [0xA700, 0xA700]
        result = storescu(host, port, MODALITY_AE, GATEWAY_AE, files)
        assert "out of resources" in (result.stdout + result.stderr).lower().replace(
            "outofresources", "out of resources"
        )
        assert {e.reason for e in events.of(InstanceRefused)} == {RefusalReason.DISK_FULL}
        assert not list(cfg.storage.spool_dir.glob("incoming/*/*"))
        assert _echo_ok(port)


def test_association_limit_refuses_the_extra_caller(tmp_path: Path) -> None:
    cfg = parse(
        config_dict(
            tmp_path,
            make_key_file(tmp_path),
            storage={"study_stable_seconds": 3600},
            node={"max_associations": 1},
        )
    )
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    with running_node(cfg) as (node, events):
        host, port = node.address  # type: ignore[misc]
        ae = AE(ae_title=MODALITY_AE)
        ae.add_requested_context(Verification)
        first = ae.associate(host, port, ae_title=GATEWAY_AE)
        assert first.is_established
        second = ae.associate(host, port, ae_title=GATEWAY_AE)
        assert second.is_rejected
        first.release()
        assert wait_until(lambda: node.scp is not None and node.scp.active_associations() == 0, 5)
        third = ae.associate(host, port, ae_title=GATEWAY_AE)
        assert third.is_established
        third.release()
        assert [e.reason for e in events.of(AssociationRejected)] == [
            RefusalReason.ASSOCIATION_LIMIT
        ]
