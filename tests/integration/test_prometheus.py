"""A real Prometheus scrapes the gateway's /metrics while a realistic event stream flows; every
dashboard query and alert expression must evaluate, the panels must show the traffic, and exactly
the alerts whose conditions were staged must go pending. promtool checks the shipped files.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.events import EventBus, InstanceLost, Stage
from gateway.http import MonitoringServer
from gateway.metrics import GatewayMetrics
from tests.support.ops import (
    DESTINATIONS,
    PLANTED_PHI,
    ROUTES,
    SettableBacklog,
    SettableWorkerPool,
    realistic_stream,
)
from tests.support.prometheus import (
    ALERTS,
    DEPLOY,
    PrometheusServer,
    alert_rules,
    panel_queries,
    require_tool,
    variable_queries,
)

pytestmark = [pytest.mark.network, pytest.mark.slow]

MIB = 2**20
#: Alerts whose conditions the scenario below stages (their `for` keeps them pending).
STAGED = {
    "DeidGatewayRejectionRateSpike",  # the lesion gate rejects about half the photographs
    "DeidGatewayBacklogGrowing",  # backlog above 100 and rising
    "DeidGatewayOutboxGrowing",  # the backup destination's outbox rises
    "DeidGatewayDestinationDown",  # backup unreachable
    "DeidGatewayDestinationFailing",  # backup: failures, no success
    "DeidGatewayDiskNearHighWater",  # 120 MiB free, refusing below 100 MiB
    "DeidGatewayRefusingInstances",  # one C-STORE refused for disk_full
    "DeidGatewayInstanceLost",  # one spool file vanished before processing
    "DeidGatewayWorkerPoolDown",  # no worker answers
    "DeidGatewayWorkerHeartbeatStale",  # last heartbeat ten minutes ago
}
#: Panels that show what the scenario does not produce by design; none today.
NO_DATA_EXPECTED: set[str] = set()


@dataclass
class Scrape:
    prometheus: PrometheusServer
    registry: CollectorRegistry
    start: float
    end: float


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrape]:
    require_tool("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    registry = CollectorRegistry()
    backlog = SettableBacklog(
        journal_states={"received": 150, "deidentified": 0, "forwarded": 0, "quarantined": 0},
        outbox_per_destination={"archive": 0, "backup": 20},
        spool_bytes=0,
        disk_free_bytes=120 * MIB,
    )
    workers = SettableWorkerPool(alive=0, heartbeat=time.time() - 600)
    metrics = GatewayMetrics(
        registry,
        ROUTES,
        DESTINATIONS,
        backlog=backlog,
        workers=workers,
        disk_min_free_bytes=100 * MIB,
        journal_states=("received", "deidentified", "forwarded", "quarantined"),
        key_fingerprint="5e3c0a1b",
        site="SITE01",
    )
    bus = EventBus()
    metrics.subscribe_to(bus)
    events = realistic_stream(seed=7, studies=12)
    slices = 8
    with (
        MonitoringServer(registry, "127.0.0.1", 0) as server,
        PrometheusServer(workdir, [f"127.0.0.1:{server.port}"], [ALERTS]) as prometheus,
    ):
        # First scrape before any traffic: the pre-initialised zeros give rate() its baseline.
        prometheus.wait_for('up{job="deid-gateway"} == 1')
        start = time.time()
        for i in range(slices):
            for event in events[i::slices]:
                bus.emit(event)
            if i == slices // 2:
                bus.emit(InstanceLost("spool_file_missing", study_key="s"))
            backlog.update(
                journal_states={
                    "received": 150 + 25 * i,
                    "deidentified": 3 * i,
                    "forwarded": 40 * i,
                    "quarantined": 2 * i,
                },
                outbox_per_destination={"archive": 0, "backup": 20 + 6 * i},
                spool_bytes=(5 + i) * MIB,
                disk_free_bytes=(120 - i) * MIB,
            )
            time.sleep(0.7)
        stored = registry.get_sample_value("dicomgw_instances_stored_total")
        prometheus.wait_for(f"dicomgw_instances_stored_total == {stored}")
        prometheus.wait_for(f"dicomgw_outbox_instances{{destination='backup'}} == {20 + 6 * 7}")
        time.sleep(1.5)  # one more scrape, so rate() sees the last slice on both sides
        yield Scrape(prometheus, registry, start - 2, time.time())


def test_prometheus_scrapes_the_gateway(scrape: Scrape) -> None:
    targets = scrape.prometheus.api("targets")["activeTargets"]
    assert [t["health"] for t in targets] == ["up"]
    routed = scrape.prometheus.query('sum(dicomgw_instances_routed_total{route="photos"})')
    assert float(routed[0]["value"][1]) == scrape.registry.get_sample_value(
        "dicomgw_instances_routed_total", {"route": "photos"}
    )


def test_every_panel_query_evaluates_and_shows_the_traffic(scrape: Scrape) -> None:
    prometheus = scrape.prometheus
    empty = []
    queries = list(panel_queries())
    assert len(queries) >= 30
    for q in queries:
        if q.instant:
            result = prometheus.query(q.expr)
        else:
            result = prometheus.query_range(q.expr, scrape.start, scrape.end, step=1)
        if not result:
            empty.append(f"{q.panel} [{q.ref_id}]: {q.expr}")
    assert {e.split(" [")[0] for e in empty} == NO_DATA_EXPECTED, "\n".join(empty)


def _max(prometheus: PrometheusServer, expr: str, start: float, end: float) -> dict[str, float]:
    """The largest value each series of a range query reached, keyed by its legend labels."""
    out = {}
    for series in prometheus.query_range(expr, start, end, step=1):
        key = ",".join(f"{k}={v}" for k, v in sorted(series["metric"].items()))
        values = [float(v) for _, v in series["values"] if v not in ("NaN", "+Inf", "-Inf")]
        out[key] = max(values) if values else float("nan")
    return out


def test_panels_show_what_happened(scrape: Scrape) -> None:
    """Not just 'some data': the values that the staged traffic must have produced."""
    p, s, e = scrape.prometheus, scrape.start, scrape.end
    queries = {f"{q.panel}/{q.ref_id}": q.expr for q in panel_queries()}
    throughput = _max(p, queries["Throughput/A"], s, e)
    assert throughput["outcome=stored"] > 0 and throughput["outcome=refused"] > 0
    assert _max(p, queries["Throughput/C"], s, e)["destination=archive"] > 0
    rejection = _max(p, queries["Rejection rate by reason/A"], s, e)
    assert rejection["reason=lesion_iou_below_threshold"] > 0
    assert rejection["reason=burned_in_annotation"] == 0
    stages = _max(p, queries["Stage latency p95/A"], s, e)
    assert set(stages) == {f"stage={stage.value}" for stage in Stage}
    # The edit stage is seconds long, the receive stage milliseconds: the quantiles tell them apart.
    assert stages["stage=edit"] > 0.5 > 0.1 > stages["stage=receive"]
    iou = _max(p, queries["Lesion IoU quantiles/A"], s, e)
    assert 0.35 <= iou[""] <= 0.95
    heatmap = _max(p, queries["Lesion IoU distribution/A"], s, e)
    assert heatmap["le=+Inf"] > 0 and heatmap["le=0.3"] == 0
    health = p.query(queries["Destination health/A"])
    assert {r["metric"]["destination"]: r["value"][1] for r in health} == {
        "archive": "1",
        "backup": "0",
        "other": "1",
    }
    outbox = _max(p, queries["Outbox per destination/A"], s, e)
    assert outbox["destination=backup"] == 62
    assert _max(p, queries["GPU workers/A"], s, e)[""] == 0
    build = p.query(queries["Build/A"])
    assert build[0]["metric"]["key_fingerprint"] == "5e3c0a1b"


def test_dashboard_variables_list_the_configured_names(scrape: Scrape) -> None:
    values = {}
    for name, promql in variable_queries():
        values[name] = {next(iter(r["metric"].values())) for r in scrape.prometheus.query(promql)}
    assert values["instance"] and len(values["instance"]) == 1
    # Configured routes, plus "other" for the planted, unconfigured names.
    assert values["route"] == {*ROUTES, "other"}
    assert values["destination"] == {*DESTINATIONS}


def test_alert_expressions_evaluate_and_fire_exactly_when_staged(scrape: Scrape) -> None:
    rules = alert_rules()
    firing = set()
    for rule in rules:
        if scrape.prometheus.query(rule["expr"]):
            firing.add(rule["alert"])
    assert firing == STAGED
    down = scrape.prometheus.query(
        next(r["expr"] for r in rules if r["alert"] == "DeidGatewayDestinationDown")
    )
    assert [r["metric"]["destination"] for r in down] == ["backup"]


def test_prometheus_evaluates_the_rule_file_without_errors(scrape: Scrape) -> None:
    prometheus = scrape.prometheus
    deadline = time.monotonic() + 15
    while True:
        groups = prometheus.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        pending = {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]}
        if pending >= STAGED or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(rules) == len(alert_rules())
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        assert not rule.get("lastError")
    assert pending == STAGED


def test_no_planted_value_reaches_prometheus(scrape: Scrape) -> None:
    series = scrape.prometheus.api("series", **{"match[]": '{__name__=~"dicomgw_.+"}'})
    text = repr(series)
    assert len(series) > 100
    for planted in PLANTED_PHI:
        assert planted not in text


def test_promtool_checks_the_shipped_rules_and_configuration(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    prometheus_dir = DEPLOY / "prometheus"
    for args in (
        ["check", "rules", "alerts.yml"],
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "alerts_test.yml"],
    ):
        result = subprocess.run(
            [promtool, *args], cwd=prometheus_dir, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    # The test configuration written by PrometheusServer is itself valid.
    config = PrometheusServer(tmp_path, ["127.0.0.1:1"], [ALERTS]).config_path
    result = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_rule_is_caught_by_promtool(tmp_path: Path) -> None:
    """The promtool check can fail: a rule with a PromQL error is rejected."""
    promtool = require_tool("promtool")
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "groups:\n- name: x\n  rules:\n  - alert: Broken\n    expr: rate(dicomgw_x_total[5m]\n"
    )
    result = subprocess.run(
        [promtool, "check", "rules", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
