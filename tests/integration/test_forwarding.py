"""Forwarding and quarantine against a real storage SCP on loopback: an archive that refuses us,
dead letters, routes that quarantine, and the operator's quarantine commands."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
import yaml

from dicom_io.scp import AccessPolicy, StoreRefused
from dicom_io.scu import StoreTarget, send_files
from gateway.demo import FolderArchive
from gateway.events import ForwardFailed, InstanceQuarantined, QuarantineReason
from tests.conftest import run_cli
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


class _RefusingArchive(FolderArchive):
    """Answers every C-STORE with 0xA700 until told to accept."""

    accept = False

    def store(self, instance):  # type: ignore[no-untyped-def]
        if not self.accept:
            raise StoreRefused(0xA700, "disk_full")
        super().store(instance)


def test_archive_refusing_dead_letters_then_release_delivers(tmp_path: Path) -> None:
    archive = _RefusingArchive(tmp_path / "archive")
    host, port = archive.start()
    data = config_dict(
        tmp_path / "gw",
        make_key_file(tmp_path),
        destinations={"archive": destination(host, port, "ARCHIVE", retry={"max_attempts": 3})},
    )
    cfg = parse(data)
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(data))
    files = next(iter(write_instances(tmp_path / "in", 1, 3).values()))
    try:
        with running_node(cfg) as (node, events):
            target = StoreTarget(GATEWAY_AE, *node.address, MODALITY_AE)  # type: ignore[misc]
            assert send_files(target, files) == [0, 0, 0]
            assert wait_until(lambda: len(node.storage.quarantine.list()) == 3, 30)  # type: ignore[union-attr]
            failures = events.of(ForwardFailed)
            assert {f.reason for f in failures} == {"status"}
            assert failures[-1].will_retry is False
            reasons = {e.reason for e in events.of(InstanceQuarantined)}
            assert reasons == {QuarantineReason.DEAD_LETTER}
            assert archive.received == 0
        # the operator looks, then releases once the archive accepts again
        listing = run_cli(["quarantine", "list", "--config", str(config_file)], cwd=tmp_path)
        assert listing.returncode == 0, listing.stderr
        assert "dead_letter" in listing.stdout and "3 entries" in listing.stdout
        assert "TEST" not in listing.stdout and "4711" not in listing.stdout
        entry_ids = [
            line.split()[0] for line in listing.stdout.splitlines() if line.startswith("q-")
        ]
        shown = run_cli(["quarantine", "show", entry_ids[0], "--config", str(config_file)])
        assert "attempts = 3" in shown.stdout and "status 0xA700" in shown.stdout
        archive.accept = True
        for entry in entry_ids:
            released = run_cli(["quarantine", "release", entry, "--config", str(config_file)])
            assert released.returncode == 0, released.stderr
            assert "requeued" in released.stdout
        with running_node(cfg) as (node, _):
            assert wait_until(lambda: archive.received == 3, 30)
            assert wait_until(lambda: node.backlog().journal_states["forwarded"] == 3, 10)
        again = run_cli(["quarantine", "release", entry_ids[0], "--config", str(config_file)])
        assert again.returncode == 2 and "already released" in again.stderr
        for path in archive.instances():
            ds = pydicom.dcmread(path)
            assert str(ds.PatientName) != "TEST^IDENTIFIABLE"
    finally:
        archive.stop()


def test_burned_in_and_unrouted_instances_are_quarantined_and_can_be_released(
    tmp_path: Path,
) -> None:
    archive = FolderArchive(tmp_path / "archive")
    host, port = archive.start()
    data = config_dict(
        tmp_path / "gw",
        make_key_file(tmp_path),
        destinations={"archive": destination(host, port, "ARCHIVE")},
        routes=[
            {
                "name": "ct",
                "match": {"modality": ["CT"], "attributes": {"ImageType": {"regex": ".*AXIAL"}}},
                "pixels": "quarantine_burned_in",
                "destinations": ["archive"],
            }
        ],
    )
    cfg = parse(data)
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(data))
    burned = next(
        iter(write_instances(tmp_path / "a", 1, 2, changes={"BurnedInAnnotation": "YES"}).values())
    )
    plain = next(iter(write_instances(tmp_path / "b", 1, 2).values()))
    unrouted = next(iter(write_instances(tmp_path / "c", 1, 1, source="MR_small.dcm").values()))
    try:
        with running_node(cfg) as (node, events):
            target = StoreTarget(GATEWAY_AE, *node.address, MODALITY_AE)  # type: ignore[misc]
            assert send_files(target, burned + plain + unrouted) == [0] * 5
            assert wait_until(lambda: archive.received == 2, 30)
            assert wait_until(lambda: len(node.storage.quarantine.list()) == 3, 10)  # type: ignore[union-attr]
            reasons = sorted(e.reason.value for e in events.of(InstanceQuarantined))
            assert reasons == ["burned_in_annotation", "burned_in_annotation", "no_route"]
        listing = run_cli(["quarantine", "list", "--config", str(config_file)])
        rows = [line.split() for line in listing.stdout.splitlines() if line.startswith("q-")]
        burned_ids = [r[0] for r in rows if "burned_in_annotation" in r]
        unrouted_id = next(r[0] for r in rows if "no_route" in r)
        # a person checked the pixels of one: release it; purge the other; route the MR by hand
        ok = run_cli(
            [
                "quarantine",
                "release",
                burned_ids[0],
                "--accept-pixels",
                "--note",
                "checked",
                "--config",
                str(config_file),
            ]
        )
        assert ok.returncode == 0, ok.stderr
        purged = run_cli(["quarantine", "purge", burned_ids[1], "--config", str(config_file)])
        assert purged.returncode == 0 and not (cfg.storage.quarantine_dir / burned_ids[1]).exists()
        routed = run_cli(
            ["quarantine", "release", unrouted_id, "--route", "ct", "--config", str(config_file)]
        )
        assert routed.returncode == 0, routed.stderr
        with running_node(cfg):
            assert wait_until(lambda: archive.received == 4, 30)
        shown = run_cli(["quarantine", "show", burned_ids[0], "--config", str(config_file)])
        assert "release" in shown.stdout and "checked" in shown.stdout
        everything = run_cli(["quarantine", "list", "--all", "--config", str(config_file)])
        assert "(purged)" in everything.stdout and "(released)" in everything.stdout
    finally:
        archive.stop()


def test_default_route_can_forward_instead_of_quarantine(tmp_path: Path) -> None:
    archive = FolderArchive(tmp_path / "archive", ae_title="ARCHIVE")
    host, port = archive.start()
    cfg = parse(
        config_dict(
            tmp_path / "gw",
            make_key_file(tmp_path),
            destinations={"archive": destination(host, port, "ARCHIVE")},
            routes=[],
            default_route={"profile": "default", "destinations": ["archive"]},
        )
    )
    files = next(iter(write_instances(tmp_path / "in", 1, 2, source="MR_small.dcm").values()))
    try:
        with running_node(cfg) as (node, _):
            target = StoreTarget(GATEWAY_AE, *node.address, MODALITY_AE)  # type: ignore[misc]
            assert send_files(target, files) == [0, 0]
            assert wait_until(lambda: archive.received == 2, 30)
    finally:
        archive.stop()


def test_policy_type_is_exported() -> None:
    assert AccessPolicy(ae_title="X").refusal("A", "X", "127.0.0.1") == "unknown_caller"
