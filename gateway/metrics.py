"""Prometheus metrics of the gateway: an event sink for what happened, a collector for what waits.

`GatewayMetrics` observes the `gateway.events` stream (it is an `EventSink`; `subscribe_to(bus)`
wires it) and turns each state change into counter increments and histogram observations. Queue
depths (journal rows per state, outbox per destination, spool bytes, disk free) are *read* at scrape
time from a `BacklogProbe`, so they are exact whenever Prometheus looks and cost nothing between
scrapes. A dead worker pool is seen through an optional `WorkerPoolProbe` the same way.

Label hygiene is enforced here, not trusted to callers: route and destination labels come only from
the names the operator configured (anything else becomes ``other``; "no route" is ``none``), reasons
and outcomes only from the fixed enums, so no UID, patient name or unconfigured AE title can ever
become a label value, whatever an event carries. Label combinations of configured names are created
at start, so dashboards show zeros rather than "no data" before the first instance arrives.

Every metric is registered on the registry passed in (never the process-global one), which lets
tests and several gateways in one process keep separate registries.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Collection, Iterator, Sequence
from importlib import metadata
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

import gateway
from gateway.events import (
    LOST_REASONS,
    AssociationAccepted,
    AssociationClosed,
    AssociationRejected,
    BacklogProbe,
    EventBus,
    ForwardFailed,
    GatewayEvent,
    GpuWork,
    InstanceForwarded,
    InstanceLost,
    InstanceQuarantined,
    InstanceRefused,
    InstanceRejected,
    InstanceStored,
    LesionGateDecided,
    ModelLoaded,
    Stage,
    StageCompleted,
    StudyRouted,
)
from gateway.labels import NO_ROUTE, OTHER, ClosedSet, Vocabulary
from gateway.logs import get_logger

PREFIX = "dicomgw"

#: Durations from a millisecond (a C-STORE into the spool) to ten minutes (a FlowEdit on a slow GPU
#: or a forward after retries).
DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
#: Seconds of accelerator time per image: tens of milliseconds (tiny test model) to minutes.
GPU_BUCKETS: tuple[float, ...] = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
#: IoU in steps of 0.05, fine enough to see a distribution drift across a 0.6-0.7 threshold.
IOU_BUCKETS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 21))

#: Forward failures that mean the destination itself is unavailable; "status" is one instance
#: refused by a live archive.
DESTINATION_DOWN_REASONS = frozenset({"refused", "unreachable", "aborted", "timeout", "tls"})
#: Journal states that count as finished work; every other state is backlog. The journal (issue 3)
#: may keep finished rows or delete them; either way they are not waiting for anything.
DEFAULT_FINISHED_JOURNAL_STATES = frozenset({"forwarded", "quarantined", "done", "purged"})

_SAFE_STATE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class WorkerPoolProbe(Protocol):
    """What the remote GPU worker pool (issue 7) reports when metrics are scraped."""

    def workers_alive(self) -> int:
        """Workers that answered the most recent heartbeat."""
        ...

    def last_heartbeat(self) -> float | None:
        """Unix time of the most recent heartbeat from any worker; None before the first."""
        ...


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


class GatewayMetrics:
    """All gateway metrics on one registry; an `EventSink` for the gateway's event stream.

    ``routes`` and ``destinations`` are the names in the configuration: the only values those labels
    ever take besides ``other`` and ``none``. ``disk_min_free_bytes`` is the spool's high-water mark
    expressed as free space (below it the SCP refuses instances); it is exported so alerts can warn
    before that point. ``journal_states`` pre-creates the per-state series; an unexpected state that
    does not look like an identifier is reported as ``other``.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        routes: Sequence[str],
        destinations: Sequence[str],
        *,
        backlog: BacklogProbe | None = None,
        workers: WorkerPoolProbe | None = None,
        disk_min_free_bytes: int | None = None,
        journal_states: Sequence[str] = (),
        finished_journal_states: Collection[str] = DEFAULT_FINISHED_JOURNAL_STATES,
        key_fingerprint: str | None = None,
        site: str | None = None,
    ) -> None:
        self.registry = registry
        self.vocabulary = vocab = Vocabulary(routes, destinations)

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, labelnames=labels, registry=registry)

        def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, labelnames=labels, registry=registry)

        def histogram(
            name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]
        ) -> Histogram:
            return Histogram(
                f"{PREFIX}_{name}", doc, labelnames=labels, buckets=buckets, registry=registry
            )

        # Associations.
        self.associations_accepted = counter(
            "associations_accepted_total", "DICOM associations accepted."
        )
        self.associations_rejected = counter(
            "associations_rejected_total", "DICOM associations refused, by reason.", ["reason"]
        )
        self.associations_closed = counter(
            "associations_closed_total",
            "DICOM associations ended, released normally or aborted.",
            ["outcome"],
        )
        self.associations_open = gauge("associations_open", "DICOM associations open now.")
        # Instances through the pipeline.
        self.instances_received = counter(
            "instances_received_total",
            "C-STORE requests answered, stored or refused (outcome).",
            ["outcome"],
        )
        self.instances_stored = counter(
            "instances_stored_total", "Instances made durable in the spool and journal."
        )
        self.received_bytes = counter("received_bytes_total", "Bytes of instances stored.")
        self.instances_refused = counter(
            "instances_refused_total",
            "C-STOREs answered with a failure status (the sender keeps the data), by reason.",
            ["reason"],
        )
        self.studies_routed = counter(
            "studies_routed_total",
            "Study batches routed, by route (a whole study, or one streamed batch of a study "
            "still arriving: storage.stream_batch).",
            ["route"],
        )
        self.instances_routed = counter(
            "instances_routed_total", "Instances routed, by route.", ["route"]
        )
        self.instances_forwarded = counter(
            "instances_forwarded_total",
            "Instances delivered to a destination.",
            ["route", "destination"],
        )
        self.instances_quarantined = counter(
            "instances_quarantined_total",
            "Instances kept in quarantine instead of forwarded, by route and reason.",
            ["route", "reason"],
        )
        self.instances_lost = counter(
            "instances_lost_total",
            "Acknowledged instances whose spool file vanished before processing, by reason.",
            ["reason"],
        )
        self.instances_rejected = counter(
            "instances_rejected_total",
            "Instances rejected by a check such as the lesion gate (also quarantined).",
            ["route", "reason"],
        )
        self.gate_decisions = counter(
            "lesion_gate_decisions_total",
            "Lesion gate decisions, by route and outcome.",
            ["route", "outcome"],
        )
        # Destinations.
        self.forward_failures = counter(
            "forward_failures_total",
            "Failed forwarding attempts, by destination and kind of failure.",
            ["destination", "reason"],
        )
        self.forward_retries = counter(
            "forward_retries_total",
            "Failed forwarding attempts that will be retried.",
            ["destination"],
        )
        self.destination_up = gauge(
            "destination_up",
            "1 when the last contact with the destination succeeded, 0 when it was unreachable.",
            ["destination"],
        )
        # Latencies.
        self.stage_seconds = histogram(
            "stage_duration_seconds",
            "Time one instance spent in a pipeline stage (receive has route 'none').",
            ["stage", "route"],
            DURATION_BUCKETS,
        )
        self.forward_seconds = histogram(
            "forward_duration_seconds",
            "Time to deliver one instance to a destination.",
            ["destination"],
            DURATION_BUCKETS,
        )
        # Photographs.
        self.lesion_iou = histogram(
            "lesion_iou",
            "IoU of the lesion masks before and after the identity edit.",
            ["route"],
            IOU_BUCKETS,
        )
        self.gpu_seconds = histogram(
            "gpu_image_duration_seconds",
            "Accelerator seconds spent per edited image.",
            ["route"],
            GPU_BUCKETS,
        )
        self.model_load_seconds = gauge(
            "model_load_duration_seconds", "How long the route's model took to load.", ["route"]
        )
        self.model_loaded = gauge(
            "model_loaded", "1 once the route's model is loaded and usable.", ["route"]
        )
        # What the gateway is.
        info = Info(
            f"{PREFIX}_build", "Version of the gateway and its main parts.", registry=registry
        )
        build = {
            "version": gateway.__version__,
            "python": platform.python_version(),
            "torch": _package_version("torch"),
            "pydicom": _package_version("pydicom"),
            "pynetdicom": _package_version("pynetdicom"),
        }
        if key_fingerprint is not None:
            # The fingerprint identifies *which* key is loaded (so an operator can see that all
            # sites of a project share one) without revealing anything about the key itself.
            build["key_fingerprint"] = key_fingerprint
        if site is not None:
            build["site"] = site
        info.info(build)
        if disk_min_free_bytes is not None:
            gauge(
                "disk_min_free_bytes",
                "Free space below which the spool refuses new instances (high-water mark).",
            ).set(disk_min_free_bytes)

        self._queue_collector = _QueueCollector(
            backlog,
            workers,
            vocab.destinations,
            tuple(journal_states),
            frozenset(finished_journal_states),
        )
        registry.register(self._queue_collector)
        self._preinitialise()

    def _preinitialise(self) -> None:
        """Create every configured label combination so dashboards read zero, not 'no data'."""
        vocab = self.vocabulary
        routes = vocab.routes.names
        quarantine_routes = (*routes, NO_ROUTE)
        self.instances_received.labels("stored")
        self.instances_received.labels("refused")
        for refusal in vocab.refusals.names:
            self.associations_rejected.labels(refusal)
            self.instances_refused.labels(refusal)
        for outcome in ("released", "aborted"):
            self.associations_closed.labels(outcome)
        for route in routes:
            self.studies_routed.labels(route)
            self.instances_routed.labels(route)
            for destination in vocab.destinations.names:
                self.instances_forwarded.labels(route, destination)
            for outcome in vocab.gate_outcomes.names:
                self.gate_decisions.labels(route, outcome)
            for stage in vocab.stages.names:
                if stage != Stage.RECEIVE:
                    self.stage_seconds.labels(stage, route)
        self.stage_seconds.labels(Stage.RECEIVE.value, NO_ROUTE)
        for route in quarantine_routes:
            for reason in vocab.quarantine_reasons.names:
                self.instances_quarantined.labels(route, reason)
                self.instances_rejected.labels(route, reason)
        for reason in LOST_REASONS:
            self.instances_lost.labels(reason)
        for destination in vocab.destinations.names:
            self.forward_retries.labels(destination)
            self.forward_seconds.labels(destination)
            for reason in vocab.forward_failures.names:
                self.forward_failures.labels(destination, reason)

    def subscribe_to(self, bus: EventBus) -> GatewayMetrics:
        """Observe every event emitted on ``bus`` (returns self so it can be chained)."""
        bus.subscribe(self)
        return self

    def set_destination_up(self, destination: str, up: bool) -> None:
        """Record the result of an out-of-band check (e.g. a C-ECHO from the readiness probe)."""
        self.destination_up.labels(self.vocabulary.destinations(destination)).set(1 if up else 0)

    def emit(self, event: GatewayEvent) -> None:
        """Map one event to metric updates. Unknown event types are ignored (forward-compatible)."""
        # Every free-text field is first mapped into the closed vocabulary ("other" otherwise).
        event = self.vocabulary.clean(event)
        match event:
            case AssociationAccepted():
                self.associations_accepted.inc()
                self.associations_open.inc()
            case AssociationRejected(reason=reason):
                self.associations_rejected.labels(reason).inc()
            case AssociationClosed(aborted=aborted):
                self.associations_closed.labels("aborted" if aborted else "released").inc()
                self.associations_open.dec()
            case InstanceStored(size_bytes=size, seconds=seconds):
                self.instances_received.labels("stored").inc()
                self.instances_stored.inc()
                self.received_bytes.inc(max(size, 0))
                self.stage_seconds.labels(Stage.RECEIVE.value, NO_ROUTE).observe(seconds)
            case InstanceRefused(reason=reason):
                self.instances_received.labels("refused").inc()
                self.instances_refused.labels(reason).inc()
            case StudyRouted(route=route, instances=instances):
                self.studies_routed.labels(_route(route)).inc()
                self.instances_routed.labels(_route(route)).inc(max(instances, 0))
            case StageCompleted(stage=stage, route=route, seconds=seconds):
                # The receive stage is measured by InstanceStored (the SCP knows no route yet);
                # ignoring it here keeps one source per observation, so nothing is counted twice.
                if stage != Stage.RECEIVE:
                    self.stage_seconds.labels(stage, _route(route)).observe(seconds)
            case LesionGateDecided(route=route, outcome=outcome, iou=iou):
                self.gate_decisions.labels(_route(route), outcome).inc()
                if iou is not None:
                    self.lesion_iou.labels(_route(route)).observe(iou)
            case InstanceForwarded(route=route, destination=destination, seconds=seconds):
                self.instances_forwarded.labels(_route(route), destination).inc()
                self.forward_seconds.labels(destination).observe(seconds)
                self.destination_up.labels(destination).set(1)
            case ForwardFailed(destination=destination, reason=reason, will_retry=will_retry):
                self.forward_failures.labels(destination, reason).inc()
                if will_retry:
                    self.forward_retries.labels(destination).inc()
                if reason in DESTINATION_DOWN_REASONS:
                    self.destination_up.labels(destination).set(0)
            case InstanceQuarantined(route=route, reason=reason):
                self.instances_quarantined.labels(_route(route), reason).inc()
            case InstanceRejected(route=route, reason=reason):
                self.instances_rejected.labels(_route(route), reason).inc()
            case InstanceLost(reason=reason):
                self.instances_lost.labels(reason if reason in LOST_REASONS else OTHER).inc()
            case ModelLoaded(route=route, seconds=seconds):
                self.model_load_seconds.labels(_route(route)).set(seconds)
                self.model_loaded.labels(_route(route)).set(1)
            case GpuWork(route=route, seconds_per_image=seconds):
                self.gpu_seconds.labels(_route(route)).observe(seconds)
            case _:
                pass


def _route(route: str) -> str:
    """Cleaned events keep "" for "no route matched"; as a label it reads ``none``."""
    return NO_ROUTE if route == "" else route


class _QueueCollector(Collector):
    """Reads queue depths at scrape time; a failing probe reports itself and spoils no scrape."""

    def __init__(
        self,
        backlog: BacklogProbe | None,
        workers: WorkerPoolProbe | None,
        destination: ClosedSet,
        journal_states: tuple[str, ...],
        finished_states: frozenset[str],
    ) -> None:
        self._backlog = backlog
        self._workers = workers
        self._destination = destination
        self._journal_states = journal_states
        self._finished = finished_states
        self._log = get_logger("gateway.metrics")

    def describe(self) -> Iterator[Metric]:
        # Names only, so registering does not call the probes.
        yield from self._families()

    def _families(self) -> list[GaugeMetricFamily]:
        families: list[GaugeMetricFamily] = []
        if self._backlog is not None:
            families += [
                GaugeMetricFamily(
                    f"{PREFIX}_backlog_probe_success",
                    "1 when the queue depths below could be read at this scrape.",
                ),
                GaugeMetricFamily(
                    f"{PREFIX}_journal_rows", "Journal rows per instance state.", labels=["state"]
                ),
                GaugeMetricFamily(
                    f"{PREFIX}_backlog_instances",
                    "Instances received but not yet forwarded or quarantined.",
                ),
                GaugeMetricFamily(
                    f"{PREFIX}_outbox_instances",
                    "Instances waiting in a destination's outbox.",
                    labels=["destination"],
                ),
                GaugeMetricFamily(f"{PREFIX}_spool_bytes", "Bytes held in the spool."),
                GaugeMetricFamily(
                    f"{PREFIX}_disk_free_bytes", "Free bytes on the spool's file system."
                ),
            ]
        if self._workers is not None:
            families += [
                GaugeMetricFamily(
                    f"{PREFIX}_workers_up", "Remote GPU workers that answered the last heartbeat."
                ),
                GaugeMetricFamily(
                    f"{PREFIX}_workers_last_heartbeat_timestamp_seconds",
                    "Unix time of the last heartbeat from any remote worker.",
                ),
            ]
        return families

    def collect(self) -> Iterator[Metric]:
        families = {f.name: f for f in self._families()}
        if self._backlog is not None:
            yield from self._collect_backlog(families)
        if self._workers is not None:
            yield from self._collect_workers(families)

    def _collect_backlog(self, families: dict[str, GaugeMetricFamily]) -> Iterator[Metric]:
        success = families[f"{PREFIX}_backlog_probe_success"]
        assert self._backlog is not None
        try:
            snapshot = self._backlog.backlog()
        except Exception as exc:  # a scrape must never fail because the journal is busy
            self._log.warning("backlog_probe_failed", error_type=type(exc).__name__)
            success.add_metric([], 0)
            yield success
            return
        success.add_metric([], 1)
        yield success

        rows: dict[str, float] = dict.fromkeys(self._journal_states, 0.0)
        backlog = 0
        for state, count in snapshot.journal_states.items():
            label = state if _SAFE_STATE.match(state) else OTHER
            rows[label] = rows.get(label, 0.0) + count
            if state not in self._finished:
                backlog += count
        journal = families[f"{PREFIX}_journal_rows"]
        for state, rows_in_state in sorted(rows.items()):
            journal.add_metric([state], rows_in_state)
        yield journal
        total = families[f"{PREFIX}_backlog_instances"]
        total.add_metric([], backlog)
        yield total

        outbox_by_dest: dict[str, float] = dict.fromkeys(self._destination.names, 0.0)
        for destination, count in snapshot.outbox_per_destination.items():
            label = self._destination(destination)
            outbox_by_dest[label] = outbox_by_dest.get(label, 0.0) + count
        outbox = families[f"{PREFIX}_outbox_instances"]
        for destination, waiting in outbox_by_dest.items():
            outbox.add_metric([destination], waiting)
        yield outbox
        spool = families[f"{PREFIX}_spool_bytes"]
        spool.add_metric([], snapshot.spool_bytes)
        yield spool
        disk = families[f"{PREFIX}_disk_free_bytes"]
        disk.add_metric([], snapshot.disk_free_bytes)
        yield disk

    def _collect_workers(self, families: dict[str, GaugeMetricFamily]) -> Iterator[Metric]:
        assert self._workers is not None
        try:
            alive = self._workers.workers_alive()
            last = self._workers.last_heartbeat()
        except Exception as exc:  # a broker that does not answer means no worker is known alive
            self._log.warning("worker_probe_failed", error_type=type(exc).__name__)
            alive, last = 0, None
        up = families[f"{PREFIX}_workers_up"]
        up.add_metric([], alive)
        yield up
        if last is not None:
            heartbeat = families[f"{PREFIX}_workers_last_heartbeat_timestamp_seconds"]
            heartbeat.add_metric([], last)
            yield heartbeat
