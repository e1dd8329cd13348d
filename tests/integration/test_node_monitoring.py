"""The running node's monitoring endpoint, on loopback: metrics from real traffic, /healthz beaten
by the node's own loops, /readyz from real checks (a live and a dead archive, an unwritable
journal, a pixel step's model).

The archives are the demo's folder archive (a pynetdicom storage SCP on loopback); a dead archive
is a port nobody listens on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset

from dicom_io.scu import StoreTarget, send_files
from gateway import pixels
from gateway.config import GatewayConfig
from gateway.demo import FolderArchive
from gateway.events import ForwardFailed, InstanceForwarded
from gateway.node import GatewayNode
from gateway.pixels import PixelAccepted, PixelContext, PixelOutcome
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
from tests.support.http import get, get_json, samples, value
from tests.support.immutable import journal_files, unwritable
from tests.support.prometheus import free_port

pytestmark = pytest.mark.network


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[tuple[FolderArchive, int]]:
    folder_archive = FolderArchive(tmp_path / "archive")
    _, port = folder_archive.start()
    try:
        yield folder_archive, port
    finally:
        folder_archive.stop()


def _url(node: GatewayNode, path: str) -> str:
    assert node.monitoring is not None and node.monitoring.server is not None
    return node.monitoring.server.url + path


def _config(tmp_path: Path, destinations: dict[str, Any], **extra: Any) -> GatewayConfig:
    data = config_dict(tmp_path / "gw", make_key_file(tmp_path), destinations, **extra)
    # the journal alone in its folder, so that folder can be made unwritable
    data["storage"]["journal"] = str(tmp_path / "gw" / "journal" / "journal.sqlite")
    return parse(data)


def test_metrics_health_and_readiness_of_a_running_node(
    tmp_path: Path, archive: tuple[FolderArchive, int]
) -> None:
    folder_archive, port = archive
    dead_port = free_port()
    cfg = _config(
        tmp_path,
        {
            "archive": destination("127.0.0.1", port, "ARCHIVE"),
            "backup": destination("127.0.0.1", dead_port, "BACKUP", connect_timeout_s=1),
        },
        site={"id": "SITE07"},
    )
    files = [f for group in write_instances(tmp_path / "in", 2, 5).values() for f in group]
    with running_node(cfg) as (node, events):
        host, dicom_port = node.address  # type: ignore[misc]
        statuses = send_files(StoreTarget(GATEWAY_AE, host, dicom_port, MODALITY_AE), files)
        assert statuses == [0] * len(files)
        assert wait_until(lambda: folder_archive.received == len(files), 30)
        assert wait_until(lambda: len(events.of(ForwardFailed)) >= 1, 30)

        # /readyz: the dead archive is named, everything else passes.
        status, body = get_json(_url(node, "/readyz"))
        assert status == 503
        assert body["failing"] == ["destination_backup"]
        assert body["checks"] == {
            "destination_archive": "ok",
            "destination_backup": "failed",
            "dicom_listener": "ok",
            "journal_writable": "ok",
            "spool_writable": "ok",
        }
        # /healthz: every loop of the node registered and beating (not merely registered: after
        # a second and a half of quiet, none has been silent for more than a second).
        time.sleep(1.5)
        status, health = get_json(_url(node, "/healthz"))
        assert status == 200, health
        beats = health["seconds_since_beat"]
        assert set(beats) == {
            "dicom_listener",
            "assembler",
            "forwarder_archive",
            "forwarder_backup",
        }
        assert max(beats.values()) < 1.0, beats

        status, raw = get(_url(node, "/metrics"))
        assert status == 200
        text = raw.decode()

        def metric(name: str, **labels: str) -> float | None:
            return value(text, name, **labels)

        n = float(len(files))
        assert metric("dicomgw_instances_stored_total") == n
        # receive latency comes from InstanceStored.seconds: one observation per stored instance
        assert metric("dicomgw_stage_duration_seconds_count", stage="receive", route="none") == n
        assert metric("dicomgw_stage_duration_seconds_count", stage="deidentify", route="all") == n
        assert metric("dicomgw_instances_routed_total", route="all") == n
        assert metric("dicomgw_studies_routed_total", route="all") == 2
        forwarded = metric("dicomgw_instances_forwarded_total", route="all", destination="archive")
        assert forwarded == n == float(len(events.of(InstanceForwarded)))
        assert metric("dicomgw_stage_duration_seconds_count", stage="forward", route="all") == n
        assert metric("dicomgw_associations_accepted_total") == 1
        assert metric("dicomgw_associations_closed_total", outcome="released") == 1
        assert metric("dicomgw_associations_open") == 0
        failures = metric(
            "dicomgw_forward_failures_total", destination="backup", reason="unreachable"
        )
        assert failures is not None and failures >= 1
        # up/down from the forwarder and from the readiness probe's C-ECHO
        assert metric("dicomgw_destination_up", destination="archive") == 1
        assert metric("dicomgw_destination_up", destination="backup") == 0
        # the backlog, read from the journal at scrape time: every copy for the backup waits
        assert metric("dicomgw_outbox_instances", destination="backup") == n
        assert metric("dicomgw_outbox_instances", destination="archive") == 0
        assert metric("dicomgw_journal_rows", state="queued") == n
        assert metric("dicomgw_backlog_instances") == n
        assert metric("dicomgw_backlog_probe_success") == 1
        spool = node.storage.spool  # type: ignore[union-attr]
        assert metric("dicomgw_disk_min_free_bytes") == spool.refusal_free_bytes()
        (build,) = [labels for name, labels in samples(text) if name == "dicomgw_build_info"]
        labels = dict(build)
        assert labels["site"] == "SITE07"
        assert labels["key_fingerprint"] == node.key.fingerprint()
        monitoring_url = _url(node, "/healthz")
    # After shutdown the endpoint is gone.
    with pytest.raises(OSError):
        get(monitoring_url, timeout=2)


def test_readiness_fails_while_the_journal_cannot_be_written(
    tmp_path: Path, archive: tuple[FolderArchive, int]
) -> None:
    _, port = archive
    cfg = _config(tmp_path, {"archive": destination("127.0.0.1", port, "ARCHIVE")})
    with running_node(cfg) as (node, _):
        assert get_json(_url(node, "/readyz"))[0] == 200
        with unwritable(journal_files(cfg.storage.journal)):
            status, body = get_json(_url(node, "/readyz"))
            assert status == 503
            assert body["failing"] == ["journal_writable"]
            assert body["checks"]["journal_writable"].startswith("error: ")
            assert get_json(_url(node, "/healthz"))[0] == 200
        status, body = get_json(_url(node, "/readyz"))
        assert status == 200, body


def test_readiness_follows_the_listener_and_a_full_spool(
    tmp_path: Path, archive: tuple[FolderArchive, int]
) -> None:
    _, port = archive
    cfg = _config(tmp_path, {"archive": destination("127.0.0.1", port, "ARCHIVE")})
    with running_node(cfg) as (node, _):
        assert get_json(_url(node, "/readyz"))[0] == 200
        spool = node.storage.spool  # type: ignore[union-attr]
        spool.high_water_percent = 0.0001  # every real disk is fuller than that
        status, body = get_json(_url(node, "/readyz"))
        assert status == 503 and body["failing"] == ["spool_writable"]
        spool.high_water_percent = 100.0
        node.scp.stop_accepting()  # type: ignore[union-attr]
        status, body = get_json(_url(node, "/readyz"))
        assert status == 503 and body["failing"] == ["dicom_listener"]


class _ModelStep:
    """A pixel step standing in for FlowEdit: a model that becomes ready when the test says."""

    name = "flowedit"

    def __init__(self, offers_check: bool) -> None:
        self.ready = False
        self.offers_check = offers_check

    def process(
        self, original: Dataset, deidentified: Dataset, context: PixelContext
    ) -> PixelOutcome:
        return PixelAccepted(deidentified)

    def readiness_checks(self) -> dict[str, Any]:
        return {"model_loaded": lambda: self.ready} if self.offers_check else {}


@pytest.mark.parametrize("offers_check", [True, False])
def test_a_route_with_a_model_adds_model_loaded(
    tmp_path: Path,
    archive: tuple[FolderArchive, int],
    monkeypatch: pytest.MonkeyPatch,
    offers_check: bool,
) -> None:
    _, port = archive
    step = _ModelStep(offers_check)
    # The registry of pixel steps is process-wide: set "flowedit" for this test only.
    monkeypatch.setitem(pixels._FACTORIES, "flowedit", lambda cfg: step)
    cfg = _config(
        tmp_path,
        {"archive": destination("127.0.0.1", port, "ARCHIVE")},
        routes=[
            {
                "name": "photos",
                "pixels": "flowedit",
                "destinations": ["archive"],
                # settings the real step needs; the stand-in step ignores them
                "flowedit": {"model": "unused", "source_prompt": "a", "target_prompt": "b"},
            }
        ],
    )
    with running_node(cfg) as (node, _):
        status, body = get_json(_url(node, "/readyz"))
        assert "model_loaded" in body["checks"]
        if offers_check:
            # the step's own check replaced the placeholder: not ready until the model is
            assert (status, body["failing"]) == (503, ["model_loaded"])
            step.ready = True
            assert get_json(_url(node, "/readyz"))[0] == 200
        else:
            # the placeholder passes once the pipeline (and so the step) is built
            assert status == 200, body
        text = get(_url(node, "/metrics"))[1].decode()
        assert value(text, "dicomgw_model_loaded", route="photos") == 1
        load = value(text, "dicomgw_model_load_duration_seconds", route="photos")
        assert load is not None and load >= 0


def test_a_route_without_a_model_has_no_model_check(
    tmp_path: Path, archive: tuple[FolderArchive, int]
) -> None:
    _, port = archive
    cfg = _config(tmp_path, {"archive": destination("127.0.0.1", port, "ARCHIVE")})
    with running_node(cfg) as (node, _):
        node.add_readiness_check("broker", lambda: False)
        status, body = get_json(_url(node, "/readyz"))
        assert "model_loaded" not in body["checks"]
        assert (status, body["failing"]) == (503, ["broker"])


def test_metrics_disabled_serves_nothing_but_the_node_runs(
    tmp_path: Path, archive: tuple[FolderArchive, int]
) -> None:
    _, port = archive
    cfg = _config(
        tmp_path,
        {"archive": destination("127.0.0.1", port, "ARCHIVE")},
        metrics={"enabled": False},
    )
    with running_node(cfg) as (node, _):
        assert node.monitoring is not None and node.monitoring.server is None
        files = write_instances(tmp_path / "in", 1, 2)
        host, dicom_port = node.address  # type: ignore[misc]
        target = StoreTarget(GATEWAY_AE, host, dicom_port, MODALITY_AE)
        assert send_files(target, next(iter(files.values()))) == [0, 0]
        assert node.monitoring.registry.get_sample_value("dicomgw_instances_stored_total") == 2
