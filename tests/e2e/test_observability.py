"""Observability end to end: a real Prometheus scrapes a real `deid-gateway serve` while dcmtk's
storescu sends PHI-planted studies and Orthanc (in a network namespace) archives them.

One run, shared by the tests below (about half a minute):

1. two studies of 20 CT instances (one from a calling AE title the configuration does not name:
   the gateway accepts any caller here so that title travels through journal and pipeline), one
   study with burned-in annotation and one no route matches (both quarantined), one association
   to a called AE title that is not the gateway's (rejected);
2. an archive outage: the namespace's link goes down, /readyz must name the archive while
   /healthz stays 200, a study of 10 arrives meanwhile and waits in the outbox; the link comes
   back and everything is delivered;
3. the journal made unwritable (immutable attribute): /readyz must say so, then recover;
4. SIGTERM.

Then: every dashboard panel query and every alert expression evaluates through Prometheus's HTTP
API; the panels for what happened show it; no planted value (nor an original UID, nor the
unconfigured AE titles) is in the gateway's stderr or /metrics; every log line is JSON, and the
lines for instance state changes carry their context.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from deid_core.keys import ProjectKey
from tests.conftest import REPO
from tests.support.dcmtk import require_dcmtk, storescu
from tests.support.gateway import (
    GATEWAY_AE,
    KEY_TEXT,
    MODALITY_AE,
    config_dict,
    destination,
    make_key_file,
    wait_until,
)
from tests.support.http import get, get_json
from tests.support.immutable import immutable_available, journal_files, unwritable
from tests.support.netns import NetNamespace
from tests.support.orthanc import Orthanc, require_orthanc
from tests.support.phi import (
    CANARY,
    CANARY_CALLED_AE,
    CANARY_CALLING_AE,
    PlantedStudy,
    write_planted_study,
)
from tests.support.prometheus import (
    ALERTS,
    PrometheusServer,
    alert_rules,
    panel_queries,
    require_tool,
)

pytestmark = [pytest.mark.network, pytest.mark.slow]

FORWARDED = 20 + 20 + 10
QUARANTINED = {"burned_in_annotation": 3, "no_route": 2}
RECEIVED = FORWARDED + sum(QUARANTINED.values())
HEX12 = re.compile(r"^[0-9a-f]{12}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")


@dataclass
class Run:
    prometheus: PrometheusServer
    start: float
    #: A moment when Prometheus had seen the archive down and the outbox waiting.
    outage: float
    end: float
    #: /readyz and /healthz answers per phase.
    ready: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    health: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    stderr: str = ""
    stdout: str = ""
    metrics: str = ""
    needles: list[str] = field(default_factory=list)
    exit_code: int | None = None
    #: Why the unwritable-journal phase could not run here, if it could not.
    journal_skipped: str | None = None


def _poll(fn: Callable[[], tuple[int, dict[str, Any]]], want: int, timeout: float) -> Any:
    """Ask until the status is `want` (or time is up); the last answer."""
    deadline = time.monotonic() + timeout
    answer = fn()
    while answer[0] != want and time.monotonic() < deadline:
        time.sleep(0.25)
        answer = fn()
    return answer


def _log_events(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    require_orthanc()
    require_dcmtk()
    require_tool("prometheus")
    tmp = tmp_path_factory.mktemp("observability")
    with ExitStack() as stack:
        ns = NetNamespace.create()
        stack.callback(ns.destroy)
        orthanc = Orthanc(tmp / "orthanc", ns)
        stack.callback(orthanc.stop)
        orthanc.start()

        data = config_dict(
            tmp / "gw",
            make_key_file(tmp),
            destinations={
                "archive": destination(
                    orthanc.host, orthanc.dicom_port, orthanc.ae_title, connect_timeout_s=1
                )
            },
            routes=[
                {
                    "name": "radiology",
                    "match": {"modality": ["CT"]},
                    "pixels": "quarantine_burned_in",
                    "destinations": ["archive"],
                }
            ],
            logging={"level": "debug", "format": "json"},
            site={"id": "SITE01"},
        )
        data["node"]["allow_any_caller"] = True
        journal = tmp / "gw" / "journal" / "journal.sqlite"
        data["storage"]["journal"] = str(journal)
        # a high-water mark the dashboard can show (the test default is "never refuse")
        data["storage"]["min_free_bytes"] = 2**20
        config = tmp / "gateway.yaml"
        config.write_text(yaml.safe_dump(data))

        studies = [
            write_planted_study(tmp / "in", "s1", 20),
            write_planted_study(tmp / "in", "s2", 20),
            write_planted_study(tmp / "in", "s3", 3, burned_in=True),
            write_planted_study(tmp / "in", "s4", 2, modality="OT"),
            write_planted_study(tmp / "in", "s5", 10),
        ]

        stderr_path, stdout_path = tmp / "gateway.stderr", tmp / "gateway.stdout"
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            stdout=stack.enter_context(stdout_path.open("wb")),
            stderr=stack.enter_context(stderr_path.open("wb")),
            env=env,
            cwd=tmp,
        )
        stack.callback(lambda: gateway.poll() is None and gateway.kill())

        def logged(event: str) -> dict[str, Any] | None:
            return next((e for e in _log_events(stderr_path) if e.get("event") == event), None)

        assert wait_until(lambda: logged("gateway_listening") is not None, 60), (
            stderr_path.read_text()[-3000:]
        )
        dicom_port = logged("gateway_listening")["port"]  # type: ignore[index]
        monitoring_port = logged("monitoring_listening")["port"]  # type: ignore[index]
        base = f"http://127.0.0.1:{monitoring_port}"

        def ready() -> tuple[int, dict[str, Any]]:
            return get_json(base + "/readyz")

        def health() -> tuple[int, dict[str, Any]]:
            return get_json(base + "/healthz")

        (tmp / "prometheus").mkdir()
        prometheus = PrometheusServer(
            tmp / "prometheus", [f"127.0.0.1:{monitoring_port}"], [ALERTS]
        )
        stack.callback(prometheus.stop)
        prometheus.start()
        prometheus.wait_for('up{job="deid-gateway"} == 1')
        start = time.time()

        def send(study: PlantedStudy, calling: str = MODALITY_AE, called: str = GATEWAY_AE) -> Any:
            return storescu("127.0.0.1", dicom_port, calling, called, study.files, timeout=60)

        # 1. Traffic: accepted, quarantined, refused.
        for study, calling in zip(studies[:4], (CANARY_CALLING_AE, MODALITY_AE) * 2, strict=True):
            result = send(study, calling)
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert send(studies[0], called=CANARY_CALLED_AE).returncode != 0
        assert orthanc.wait_for_instances(40, timeout=60) == 40
        observed = Run(prometheus, start, 0.0, 0.0)
        observed.ready["before_outage"] = _poll(ready, 200, 10)
        observed.health["before_outage"] = health()

        # 2. The archive goes away; a study arrives meanwhile; the archive comes back.
        ns.link_down()
        try:
            observed.ready["outage"] = _poll(ready, 503, 15)
            observed.health["outage"] = health()
            result = send(studies[4])
            assert result.returncode == 0, result.stdout[-2000:]
            prometheus.wait_for('dicomgw_destination_up{destination="archive"} == 0', 20)
            prometheus.wait_for('dicomgw_outbox_instances{destination="archive"} > 0', 20)
            prometheus.wait_for('dicomgw_forward_failures_total{destination="archive"} > 0', 20)
            time.sleep(1.5)  # the alert expressions' rates need a second scrape of it
            outage = time.time()
        finally:
            ns.link_up()
        assert orthanc.wait_for_instances(FORWARDED, timeout=60) == FORWARDED
        observed.ready["after_outage"] = _poll(ready, 200, 15)

        # 3. The journal cannot be written.
        why = immutable_available(tmp)
        if why is None:
            with unwritable(journal_files(journal)):
                observed.ready["journal_unwritable"] = _poll(ready, 503, 10)
                observed.health["journal_unwritable"] = health()
            observed.ready["journal_restored"] = _poll(ready, 200, 10)
        observed.journal_skipped = why

        # The last state scraped, then the gateway stops.
        prometheus.wait_for(f"sum(dicomgw_instances_forwarded_total) == {FORWARDED}", 20)
        prometheus.wait_for("dicomgw_backlog_instances == 0", 20)
        time.sleep(2.5)  # two more scrapes, so rate() sees the last of the traffic
        end = time.time()
        observed.metrics = get(base + "/metrics")[1].decode()
        gateway.send_signal(signal.SIGTERM)
        observed.exit_code = gateway.wait(30)

        observed.outage, observed.end = outage, end
        observed.stderr = stderr_path.read_text()
        observed.stdout = stdout_path.read_text()
        observed.needles = [n for s in studies for n in s.needles]
        observed.needles += [CANARY_CALLING_AE, CANARY_CALLED_AE]
        yield observed


# ---- Prometheus: panels and alerts ------------------------------------------------------------


def _range_max(run: Run, expr: str) -> dict[str, float]:
    """The largest finite value each series reached during the run, keyed by its labels."""
    out = {}
    for series in run.prometheus.query_range(expr, run.start, run.end, step=1):
        key = ",".join(f"{k}={v}" for k, v in sorted(series["metric"].items()))
        values = [float(v) for _, v in series["values"] if v not in ("NaN", "+Inf", "-Inf")]
        if values:
            out[key] = max(values)
    return out


def _range_min(run: Run, expr: str) -> dict[str, float]:
    out = {}
    for series in run.prometheus.query_range(expr, run.start, run.end, step=1):
        key = ",".join(f"{k}={v}" for k, v in sorted(series["metric"].items()))
        out[key] = min(float(v) for _, v in series["values"])
    return out


def _instant(run: Run, expr: str, at: float) -> list[dict[str, Any]]:
    data = run.prometheus.api("query", query=expr, time=at)
    result: list[dict[str, Any]] = data["result"]
    return result


def test_every_panel_query_and_alert_expression_evaluates(run: Run) -> None:
    queries = list(panel_queries())
    assert len(queries) >= 30
    for q in queries:  # an error in PromQL or a type mismatch raises in api()
        if q.instant:
            _instant(run, q.expr, run.end)
        else:
            run.prometheus.query_range(q.expr, run.start, run.end, step=1)
    rules = alert_rules()
    assert len(rules) >= 10
    for rule in rules:
        for at in (run.outage, run.end):
            _instant(run, rule["expr"], at)
    # Prometheus itself evaluated the shipped rule file all along, without an error.
    evaluated = [r for g in run.prometheus.api("rules")["groups"] for r in g["rules"]]
    assert len(evaluated) == len(rules)
    for rule in evaluated:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))


def test_the_panels_show_the_traffic_that_happened(run: Run) -> None:
    panel = {f"{q.panel}/{q.ref_id}": q.expr for q in panel_queries()}

    def peak(name: str) -> dict[str, float]:
        return _range_max(run, panel[name])

    for single in ("Received/A", "Forwarded/A", "Quarantined/A", "Throughput/B", "Throughput/D"):
        assert peak(single)[""] > 0, single
    assert peak("Throughput/A")["outcome=stored"] > 0
    assert peak("Throughput/C")["destination=archive"] > 0
    assert peak("Associations/A")[""] > 0
    assert peak("Associations/B")["reason=called_ae"] > 0
    assert peak("Quarantine by reason/A")["reason=burned_in_annotation"] > 0
    assert peak("Quarantine by reason/A")["reason=no_route"] > 0
    assert peak("Rejection rate by reason/A")["reason=burned_in_annotation"] > 0
    assert peak("Rejected share by route/A")["route=radiology"] > 0
    # Stage latencies: receive (from InstanceStored), de-identify, the pixel step, forward.
    for name in ("Stage latency p50/A", "Stage latency p95/A"):
        assert set(peak(name)) == {
            "stage=receive",
            "stage=deidentify",
            "stage=edit",
            "stage=forward",
        }
    assert set(peak("Forward latency by destination/B")) == {"destination=archive"}
    # Backlog and the outage: the outbox filled and emptied, the archive went down and up.
    assert peak("Backlog/A")[""] >= 10
    assert peak("Outbox per destination/A")["destination=archive"] >= 10
    assert peak("Journal rows by state/A")["state=forwarded"] == FORWARDED
    assert peak("Journal rows by state/A")["state=quarantined"] == sum(QUARANTINED.values())
    assert peak("Destinations down/A")[""] == 1
    assert _range_min(run, panel["Destination health/A"])["destination=archive"] == 0
    assert peak("Destination health/A")["destination=archive"] == 1
    assert peak("Forward failures/A")["destination=archive,reason=unreachable"] > 0
    assert peak("Forward retries/A")["destination=archive"] > 0
    for disk in ("Spool and disk/A", "Spool and disk/B", "Spool and disk/C"):
        assert peak(disk)[""] > 0, disk
    (build,) = _instant(run, panel["Build/A"], run.end)
    assert build["metric"]["site"] == "SITE01"
    assert build["metric"]["key_fingerprint"] == ProjectKey(KEY_TEXT.encode()).fingerprint()


def test_the_destination_alert_sees_the_outage_and_only_the_outage(run: Run) -> None:
    down = next(r["expr"] for r in alert_rules() if r["alert"] == "DeidGatewayDestinationDown")
    assert [r["metric"]["destination"] for r in _instant(run, down, run.outage)] == ["archive"]
    assert _instant(run, down, run.end) == []


# ---- /readyz and /healthz ---------------------------------------------------------------------


def test_readyz_names_the_unreachable_archive_while_healthz_stays_ok(run: Run) -> None:
    assert run.ready["before_outage"][0] == 200, run.ready["before_outage"]
    status, body = run.ready["outage"]
    assert status == 503
    assert body["failing"] == ["destination_archive"]
    assert body["checks"]["destination_archive"] == "failed"
    assert run.health["outage"][0] == 200
    assert set(run.health["outage"][1]["seconds_since_beat"]) == {
        "dicom_listener",
        "assembler",
        "forwarder_archive",
    }
    assert run.ready["after_outage"][0] == 200, run.ready["after_outage"]


def test_readyz_fails_while_the_journal_cannot_be_written(run: Run) -> None:
    if run.journal_skipped:
        pytest.skip(run.journal_skipped)
    status, body = run.ready["journal_unwritable"]
    assert status == 503 and body["failing"] == ["journal_writable"]
    assert run.health["journal_unwritable"][0] == 200
    assert run.ready["journal_restored"][0] == 200, run.ready["journal_restored"]


# ---- privacy and the logs ---------------------------------------------------------------------


def test_no_planted_value_reaches_the_logs_or_the_metrics(run: Run) -> None:
    assert len(run.needles) > 100
    series = repr(run.prometheus.api("series", **{"match[]": '{__name__=~"dicomgw_.+"}'}))
    for where, text in (("stderr", run.stderr), ("/metrics", run.metrics), ("series", series)):
        assert CANARY.lower() not in text.lower(), f"a planted value in {where}"
        leaked = [n for n in run.needles if n in text]
        assert not leaked, f"planted values in {where}: {leaked[:5]}"


def test_every_log_line_is_json_and_state_changes_carry_their_context(run: Run) -> None:
    assert run.exit_code == 0, run.stderr[-3000:]
    assert run.stdout == ""
    records = []
    for line in run.stderr.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert {"event", "level", "timestamp"} <= set(record), line
        records.append(record)
    by_event: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_event.setdefault(str(record["event"]), []).append(record)

    accepted = {r["association_id"] for r in by_event["association_accepted"]}
    stored = by_event["instance_stored"]
    assert len(stored) == RECEIVED
    for r in stored:
        assert HEX12.match(r["association_id"]) and r["association_id"] in accepted
        assert HEX16.match(r["study_key"])
    study_keys = {r["study_key"] for r in stored}
    assert len(study_keys) == 5

    routed = by_event["study_routed"]
    assert {r["route"] for r in routed} == {"radiology"}
    assert {r["study_key"] for r in routed} <= study_keys

    forwarded = by_event["instance_forwarded"]
    assert len(forwarded) == FORWARDED
    for r in forwarded:
        assert r["route"] == "radiology" and r["destination"] == "archive"
        assert r["study_key"] in study_keys

    quarantined = by_event["instance_quarantined"]
    assert Counter(r["reason"] for r in quarantined) == QUARANTINED
    for r in quarantined:
        assert r["study_key"] in study_keys and r["association_id"] in accepted
        assert r["route"] == ("radiology" if r["reason"] == "burned_in_annotation" else "")
        assert r["level"] == "warning"

    failed = by_event["forward_failed"]
    assert failed and all(r["destination"] == "archive" for r in failed)
    assert all(r["study_key"] in study_keys and r["level"] == "warning" for r in failed)
    assert {r["reason"] for r in failed} <= {"unreachable", "timeout", "aborted"}
    assert by_event["association_rejected"][0]["reason"] == "called_ae"
    assert "shutdown_complete" in by_event
    # Library records (pynetdicom's complaints while the archive was away) came out as JSON too.
    assert any(str(r.get("logger", "")).startswith("pynetdicom") for r in records)
