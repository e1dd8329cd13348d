"""The monitoring endpoint over real HTTP on loopback: /metrics, /healthz, /readyz."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from deid_core.errors import ConfigError
from gateway.config import parse_config
from gateway.events import EventBus, StudyRouted
from gateway.http import Liveness, MonitoringServer
from gateway.metrics import GatewayMetrics
from gateway.monitoring import Monitoring
from tests.support.ops import DESTINATIONS, PLANTED_PHI, ROUTES, planted_phi_events

pytestmark = pytest.mark.network


def get(url: str, accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    status, headers, body = get(url)
    assert headers["Content-Type"] == "application/json"
    return status, json.loads(body)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_metrics_are_served_in_both_exposition_formats() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, ROUTES, DESTINATIONS)
    metrics.emit(StudyRouted(study_key="s", route="ct", instances=4))
    for event in planted_phi_events():
        metrics.emit(event)
    with MonitoringServer(registry, "127.0.0.1", 0) as server:
        status, headers, body = get(f"{server.url}/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = body.decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        routed = families["dicomgw_instances_routed"]
        assert {s.labels["route"]: s.value for s in routed.samples if s.name.endswith("_total")}[
            "ct"
        ] == 4
        for planted in PLANTED_PHI:
            assert planted not in text
        status, headers, body = get(
            f"{server.url}/metrics", accept="application/openmetrics-text; version=1.0.0"
        )
        assert status == 200
        assert headers["Content-Type"].startswith("application/openmetrics-text")
        assert body.rstrip().endswith(b"# EOF")


def test_healthz_names_a_stuck_loop() -> None:
    clock = FakeClock()
    liveness = Liveness(clock=clock)
    liveness.register("scp_accept", max_silence_s=30)
    liveness.register("forwarder", max_silence_s=60)
    with MonitoringServer(CollectorRegistry(), "127.0.0.1", 0, liveness=liveness) as server:
        status, body = get_json(f"{server.url}/healthz")
        assert status == 200 and body["status"] == "ok"
        clock.now += 45
        liveness.beat("scp_accept")
        status, body = get_json(f"{server.url}/healthz")
        assert status == 200
        clock.now += 20  # forwarder silent for 65 s > 60 s
        status, body = get_json(f"{server.url}/healthz")
        assert status == 503
        assert body["stale_loops"] == ["forwarder"]
        liveness.beat("forwarder")
        assert get_json(f"{server.url}/healthz")[0] == 200


def test_readyz_reports_each_failing_check_by_name(tmp_path: Path) -> None:
    journal_dir = tmp_path / "journal"
    journal_dir.mkdir()
    model_loaded = threading.Event()

    def journal_writable() -> bool:
        probe = journal_dir / ".probe"
        probe.write_bytes(b"x")
        probe.unlink()
        return True

    def model() -> bool:
        return model_loaded.is_set()

    def archive() -> None:
        raise ConnectionRefusedError("[Errno 111] 10.0.0.7:104 DOE^JOHN")

    checks = {"journal_writable": journal_writable, "model_loaded": model, "archive_echo": archive}
    with MonitoringServer(CollectorRegistry(), "127.0.0.1", 0, checks=checks) as server:
        status, _, raw = get(f"{server.url}/readyz")
        assert status == 503
        body = json.loads(raw)
        assert body["failing"] == ["archive_echo", "model_loaded"]
        assert body["checks"] == {
            "archive_echo": "error: ConnectionRefusedError",
            "journal_writable": "ok",
            "model_loaded": "failed",
        }
        # Only the check name and the exception type leave the process, not its message.
        assert b"DOE^JOHN" not in raw and b"10.0.0.7" not in raw
        model_loaded.set()
        checks_ok = dict(checks, archive_echo=lambda: None)
    with MonitoringServer(CollectorRegistry(), "127.0.0.1", 0, checks=checks_ok) as server:
        status, body = get_json(f"{server.url}/readyz")
        assert status == 200 and body["status"] == "ok" and body["failing"] == []
        # The check really runs each time: a journal directory that vanished (volume unmounted)
        # fails it on the next request.
        journal_dir.rmdir()
        status, body = get_json(f"{server.url}/readyz")
        assert status == 503
        assert body["checks"]["journal_writable"] == "error: FileNotFoundError"


def test_a_hung_check_times_out_and_does_not_pile_up_threads() -> None:
    release = threading.Event()
    calls = []

    def hangs() -> bool:
        calls.append(1)
        release.wait(10)
        return True

    server = MonitoringServer(
        CollectorRegistry(), "127.0.0.1", 0, checks={"destination_echo": hangs}, check_timeout_s=0.2
    )
    with server:
        status, body = get_json(f"{server.url}/readyz")
        assert status == 503 and body["checks"]["destination_echo"] == "timeout"
        status, body = get_json(f"{server.url}/readyz")
        assert status == 503 and body["checks"]["destination_echo"] == "still running"
        assert len(calls) == 1
        release.set()


def test_unknown_paths_are_404_and_stop_is_idempotent() -> None:
    server = MonitoringServer(CollectorRegistry(), "127.0.0.1", 0).start()
    assert get_json(f"{server.url}/nope") == (404, {"error": "not found"})
    port = server.port
    server.stop()
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_bad_check_names_are_refused() -> None:
    with pytest.raises(ConfigError):
        MonitoringServer(CollectorRegistry(), "127.0.0.1", 0, checks={"Patient Name": lambda: True})


def test_metrics_section_of_the_configuration(key_file: Path) -> None:
    base = {"version": 1, "project": {"key": {"file": str(key_file)}}}
    cfg = parse_config(base)
    assert (cfg.metrics.enabled, cfg.metrics.address, cfg.metrics.port) == (True, "127.0.0.1", 9477)
    cfg = parse_config({**base, "metrics": {"address": "::", "port": 0, "enabled": False}})
    assert cfg.metrics.address == "::" and cfg.metrics.port == 0 and not cfg.metrics.enabled
    with pytest.raises(ConfigError, match=r"metrics\.port"):
        parse_config({**base, "metrics": {"port": 70000}})
    with pytest.raises(ConfigError, match=r"metrics\.address"):
        parse_config({**base, "metrics": {"address": "not an address!"}})
    with pytest.raises(ConfigError, match=r"metrics\.colour: unknown key"):
        parse_config({**base, "metrics": {"colour": "red"}})


def test_monitoring_wires_bus_metrics_logs_and_endpoint(key_file: Path) -> None:
    cfg = parse_config(
        {"project": {"key": {"file": str(key_file)}}, "metrics": {"port": 0}}
    ).metrics
    bus = EventBus()
    seen_ready = []
    monitoring = Monitoring.start(
        cfg,
        bus,
        ROUTES,
        DESTINATIONS,
        checks={"model_loaded": lambda: bool(seen_ready)},
        log_events=False,
    )
    try:
        assert monitoring.server is not None
        bus.emit(StudyRouted(study_key="s", route="photos", instances=3))
        _, _, body = get(f"{monitoring.server.url}/metrics")
        assert b'dicomgw_instances_routed_total{route="photos"} 3.0' in body
        assert get_json(f"{monitoring.server.url}/readyz")[0] == 503
        seen_ready.append(True)
        assert get_json(f"{monitoring.server.url}/readyz")[0] == 200
        monitoring.liveness.register("scp_accept", 30)
        assert get_json(f"{monitoring.server.url}/healthz")[1]["status"] == "ok"
    finally:
        monitoring.stop()
        monitoring.stop()
    disabled = parse_config(
        {"project": {"key": {"file": str(key_file)}}, "metrics": {"enabled": False}}
    ).metrics
    off = Monitoring.start(disabled, EventBus(), ROUTES, DESTINATIONS, log_events=False)
    assert off.server is None
    off.stop()


def test_a_taken_port_is_a_clear_configuration_error(key_file: Path) -> None:
    first = Monitoring.start(
        parse_config({"project": {"key": {"file": str(key_file)}}, "metrics": {"port": 0}}).metrics,
        EventBus(),
        ROUTES,
        DESTINATIONS,
        log_events=False,
    )
    try:
        assert first.server is not None
        taken = parse_config(
            {"project": {"key": {"file": str(key_file)}}, "metrics": {"port": first.server.port}}
        ).metrics
        with pytest.raises(
            ConfigError, match=rf"metrics: cannot listen on 127\.0\.0\.1:{first.server.port}"
        ):
            Monitoring.start(taken, EventBus(), ROUTES, DESTINATIONS, log_events=False)
    finally:
        first.stop()
