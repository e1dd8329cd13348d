from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import gateway
from deid_core.errors import ConfigError
from gateway.events import (
    LOST_REASONS,
    AssociationAccepted,
    AssociationClosed,
    AssociationRejected,
    EventBus,
    ForwardFailed,
    GpuWork,
    InstanceForwarded,
    InstanceLost,
    InstanceQuarantined,
    InstanceRefused,
    InstanceRejected,
    InstanceStored,
    LesionGateDecided,
    ModelLoaded,
    QuarantineReason,
    RefusalReason,
    Stage,
    StageCompleted,
    StudyRouted,
)
from gateway.labels import Vocabulary
from gateway.metrics import GatewayMetrics
from tests.support.ops import (
    DESTINATIONS,
    PLANTED_PHI,
    ROUTES,
    SettableBacklog,
    SettableWorkerPool,
    planted_phi_events,
    realistic_stream,
)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> GatewayMetrics:
    return GatewayMetrics(registry, ROUTES, DESTINATIONS)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    sample = registry.get_sample_value(name, labels)
    assert sample is not None, f"no sample {name}{labels}"
    return sample


def test_associations_are_counted_and_open_ones_tracked(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    for i in range(3):
        metrics.emit(AssociationAccepted(association_id=f"a{i}"))
    metrics.emit(AssociationClosed(association_id="a0", instances=4, aborted=False))
    metrics.emit(AssociationClosed(association_id="a1", instances=1, aborted=True))
    metrics.emit(AssociationRejected(reason=RefusalReason.UNKNOWN_CALLER))
    assert value(registry, "dicomgw_associations_accepted_total") == 3
    assert value(registry, "dicomgw_associations_open") == 1
    assert value(registry, "dicomgw_associations_closed_total", outcome="released") == 1
    assert value(registry, "dicomgw_associations_closed_total", outcome="aborted") == 1
    assert value(registry, "dicomgw_associations_rejected_total", reason="unknown_caller") == 1
    assert value(registry, "dicomgw_associations_rejected_total", reason="called_ae") == 0


def test_received_instances_split_into_stored_and_refused(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    metrics.emit(InstanceStored("a", "s", size_bytes=1000, seconds=0.004))
    metrics.emit(InstanceStored("a", "s", size_bytes=500, seconds=0.2))
    metrics.emit(InstanceRefused("a", RefusalReason.DISK_FULL, status=0xA700))
    assert value(registry, "dicomgw_instances_received_total", outcome="stored") == 2
    assert value(registry, "dicomgw_instances_received_total", outcome="refused") == 1
    assert value(registry, "dicomgw_instances_stored_total") == 2
    assert value(registry, "dicomgw_received_bytes_total") == 1500
    assert value(registry, "dicomgw_instances_refused_total", reason="disk_full") == 1
    # The receive stage is measured by InstanceStored, before any route is known.
    labels = {"stage": "receive", "route": "none"}
    assert value(registry, "dicomgw_stage_duration_seconds_count", **labels) == 2
    assert value(registry, "dicomgw_stage_duration_seconds_sum", **labels) == pytest.approx(0.204)
    assert value(registry, "dicomgw_stage_duration_seconds_bucket", le="0.005", **labels) == 1


def test_receive_is_not_counted_twice_when_the_node_also_reports_the_stage(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    metrics.emit(InstanceStored("a", "s", size_bytes=1, seconds=0.01))
    metrics.emit(StageCompleted(Stage.RECEIVE, "photos", 0.01))
    count = "dicomgw_stage_duration_seconds_count"
    assert value(registry, count, stage="receive", route="none") == 1
    assert registry.get_sample_value(count, {"stage": "receive", "route": "photos"}) is None


def test_routing_stages_and_gate(registry: CollectorRegistry, metrics: GatewayMetrics) -> None:
    metrics.emit(StudyRouted(study_key="s", route="photos", instances=3))
    metrics.emit(StageCompleted(Stage.EDIT, "photos", 2.0))
    metrics.emit(StageCompleted(Stage.EDIT, "photos", 40.0))
    metrics.emit(LesionGateDecided("photos", "accepted", 0.81))
    metrics.emit(LesionGateDecided("photos", QuarantineReason.LESION_IOU_BELOW_THRESHOLD, 0.3))
    metrics.emit(LesionGateDecided("photos", "no_lesion_found", None))
    metrics.emit(InstanceRejected("photos", QuarantineReason.LESION_IOU_BELOW_THRESHOLD))
    assert value(registry, "dicomgw_studies_routed_total", route="photos") == 1
    assert value(registry, "dicomgw_instances_routed_total", route="photos") == 3
    assert value(registry, "dicomgw_instances_routed_total", route="ct") == 0
    edit = {"stage": "edit", "route": "photos"}
    assert value(registry, "dicomgw_stage_duration_seconds_count", **edit) == 2
    assert value(registry, "dicomgw_stage_duration_seconds_bucket", le="2.5", **edit) == 1
    assert value(registry, "dicomgw_stage_duration_seconds_bucket", le="60.0", **edit) == 2
    gate = "dicomgw_lesion_gate_decisions_total"
    assert value(registry, gate, route="photos", outcome="accepted") == 1
    assert value(registry, gate, route="photos", outcome="lesion_iou_below_threshold") == 1
    assert value(registry, gate, route="photos", outcome="no_lesion_found") == 1
    # Only decisions that measured an IoU enter the IoU histogram.
    assert value(registry, "dicomgw_lesion_iou_count", route="photos") == 2
    assert value(registry, "dicomgw_lesion_iou_bucket", route="photos", le="0.3") == 1
    assert value(registry, "dicomgw_lesion_iou_bucket", route="photos", le="0.8") == 1
    assert value(registry, "dicomgw_lesion_iou_bucket", route="photos", le="0.85") == 2
    rejected = "dicomgw_instances_rejected_total"
    assert value(registry, rejected, route="photos", reason="lesion_iou_below_threshold") == 1


def test_forwarding_marks_destinations_up_and_down(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    metrics.emit(InstanceForwarded("ct", "archive", 0.05))
    assert value(registry, "dicomgw_instances_forwarded_total", route="ct", destination="archive")
    assert value(registry, "dicomgw_destination_up", destination="archive") == 1
    assert value(registry, "dicomgw_forward_duration_seconds_count", destination="archive") == 1
    metrics.emit(ForwardFailed("archive", "unreachable", will_retry=True))
    assert value(registry, "dicomgw_destination_up", destination="archive") == 0
    assert value(registry, "dicomgw_forward_retries_total", destination="archive") == 1
    failures = "dicomgw_forward_failures_total"
    assert value(registry, failures, destination="archive", reason="unreachable") == 1
    # A failure status for one instance comes from a live archive: not "down".
    metrics.emit(InstanceForwarded("ct", "archive", 0.05))
    metrics.emit(ForwardFailed("archive", "status", will_retry=False))
    assert value(registry, "dicomgw_destination_up", destination="archive") == 1
    assert value(registry, "dicomgw_forward_retries_total", destination="archive") == 1
    assert value(registry, failures, destination="archive", reason="status") == 1
    # Never contacted yet: unknown, not down.
    assert registry.get_sample_value("dicomgw_destination_up", {"destination": "backup"}) is None
    metrics.set_destination_up("backup", False)
    assert value(registry, "dicomgw_destination_up", destination="backup") == 0


def test_quarantine_without_route_and_model_and_gpu(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    metrics.emit(InstanceQuarantined("", QuarantineReason.NO_ROUTE))
    metrics.emit(InstanceQuarantined("ct", QuarantineReason.BURNED_IN_ANNOTATION))
    metrics.emit(ModelLoaded("photos", 31.5))
    metrics.emit(GpuWork("photos", 1.7))
    quarantined = "dicomgw_instances_quarantined_total"
    assert value(registry, quarantined, route="none", reason="no_route") == 1
    assert value(registry, quarantined, route="ct", reason="burned_in_annotation") == 1
    assert value(registry, "dicomgw_model_load_duration_seconds", route="photos") == 31.5
    assert value(registry, "dicomgw_model_loaded", route="photos") == 1
    assert value(registry, "dicomgw_gpu_image_duration_seconds_sum", route="photos") == 1.7


def test_configured_label_combinations_read_zero_before_any_event(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    for route in ROUTES:
        assert value(registry, "dicomgw_instances_routed_total", route=route) == 0
        for reason in QuarantineReason:
            assert (
                value(registry, "dicomgw_instances_rejected_total", route=route, reason=reason) == 0
            )
        for dest in DESTINATIONS:
            forwarded = "dicomgw_instances_forwarded_total"
            assert value(registry, forwarded, route=route, destination=dest) == 0
        assert (
            value(registry, "dicomgw_stage_duration_seconds_count", stage="edit", route=route) == 0
        )
    for dest in DESTINATIONS:
        assert (
            value(registry, "dicomgw_forward_failures_total", destination=dest, reason="tls") == 0
        )
    assert (
        value(registry, "dicomgw_instances_quarantined_total", route="none", reason="no_route") == 0
    )


def test_subscribed_to_the_bus_it_counts_what_the_bus_carries(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    bus = EventBus()
    assert metrics.subscribe_to(bus) is metrics
    bus.emit(StudyRouted(study_key="s", route="ct", instances=7))
    assert value(registry, "dicomgw_instances_routed_total", route="ct") == 7


def test_unconfigured_and_phi_looking_values_appear_only_as_other(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    for event in planted_phi_events():
        metrics.emit(event)
    text = generate_latest(registry).decode()
    for planted in PLANTED_PHI:
        assert planted not in text
    n = len(PLANTED_PHI)
    assert value(registry, "dicomgw_instances_routed_total", route="other") == n
    assert (
        value(registry, "dicomgw_lesion_gate_decisions_total", route="other", outcome="other") == n
    )
    forwarded = "dicomgw_instances_forwarded_total"
    assert value(registry, forwarded, route="other", destination="other") == n
    assert (
        value(registry, "dicomgw_forward_failures_total", destination="other", reason="other") == n
    )
    assert value(registry, "dicomgw_gpu_image_duration_seconds_count", route="other") == n


def test_every_label_value_comes_from_a_fixed_set(registry: CollectorRegistry) -> None:
    backlog = SettableBacklog(
        journal_states={"received": 3, "Jane Doe": 1},
        outbox_per_destination={"archive": 2, "STRANGER_AE": 5},
    )
    metrics = GatewayMetrics(
        registry, ROUTES, DESTINATIONS, backlog=backlog, key_fingerprint="ab12"
    )
    for event in realistic_stream(seed=3, studies=6):
        metrics.emit(event)
    routes = {*ROUTES, "other", "none"}
    destinations = {*DESTINATIONS, "other"}
    reasons = (
        {r.value for r in QuarantineReason}
        | {r.value for r in RefusalReason}
        | {"refused", "unreachable", "aborted", "status", "timeout", "tls", "other"}
        | {"auth", "busy", "server_error"}  # DICOMweb destinations
        | set(LOST_REASONS)
    )
    allowed = {
        "route": routes,
        "destination": destinations,
        "reason": reasons,
        "outcome": {
            *reasons,
            "accepted",
            "no_lesion_found",
            "stored",
            "refused",
            "released",
            "aborted",
        },
        "stage": {s.value for s in Stage},
        "state": {"received", "other"},
    }
    seen_labels: set[str] = set()
    for family in registry.collect():
        assert family.name.startswith("dicomgw_"), family.name
        for sample in family.samples:
            for label, label_value in sample.labels.items():
                seen_labels.add(label)
                if label in allowed:
                    assert label_value in allowed[label], (sample.name, label, label_value)
    assert {"route", "destination", "reason", "outcome", "stage", "state"} <= seen_labels


def test_metric_names_follow_the_conventions(registry: CollectorRegistry) -> None:
    GatewayMetrics(
        registry,
        ROUTES,
        DESTINATIONS,
        backlog=SettableBacklog(),
        workers=SettableWorkerPool(heartbeat=1.0),
        disk_min_free_bytes=10,
    )
    families = list(registry.collect())
    assert len(families) > 25
    for family in families:
        assert family.name.startswith("dicomgw_")
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
        if family.type == "histogram" and "duration" in family.name:
            assert family.name.endswith("_seconds"), family.name


def test_backlog_is_read_at_scrape_time(registry: CollectorRegistry) -> None:
    backlog = SettableBacklog(
        journal_states={"received": 4, "deidentified": 2, "forwarded": 100, "quarantined": 3},
        outbox_per_destination={"archive": 2},
        spool_bytes=123456,
        disk_free_bytes=9_000_000,
    )
    GatewayMetrics(
        registry,
        ROUTES,
        DESTINATIONS,
        backlog=backlog,
        disk_min_free_bytes=5_000_000,
        journal_states=("received", "deidentified", "forwarded", "quarantined", "failed"),
    )
    assert value(registry, "dicomgw_backlog_probe_success") == 1
    assert value(registry, "dicomgw_journal_rows", state="received") == 4
    assert value(registry, "dicomgw_journal_rows", state="failed") == 0
    # Finished rows (forwarded, quarantined) are not backlog.
    assert value(registry, "dicomgw_backlog_instances") == 6
    assert value(registry, "dicomgw_outbox_instances", destination="archive") == 2
    assert value(registry, "dicomgw_outbox_instances", destination="backup") == 0
    assert value(registry, "dicomgw_spool_bytes") == 123456
    assert value(registry, "dicomgw_disk_free_bytes") == 9_000_000
    assert value(registry, "dicomgw_disk_min_free_bytes") == 5_000_000
    backlog.update(spool_bytes=1, outbox_per_destination={"archive": 9})
    assert value(registry, "dicomgw_spool_bytes") == 1
    assert value(registry, "dicomgw_outbox_instances", destination="archive") == 9


def test_a_failing_backlog_probe_spoils_no_scrape(registry: CollectorRegistry) -> None:
    backlog = SettableBacklog(fail=True)
    metrics = GatewayMetrics(registry, ROUTES, DESTINATIONS, backlog=backlog)
    metrics.emit(StudyRouted(study_key="s", route="ct", instances=2))
    text = generate_latest(registry).decode()
    assert "dicomgw_backlog_probe_success 0.0" in text
    assert 'dicomgw_instances_routed_total{route="ct"} 2.0' in text
    assert registry.get_sample_value("dicomgw_spool_bytes") is None
    backlog.update(fail=False)
    assert value(registry, "dicomgw_backlog_probe_success") == 1


def test_worker_pool_is_read_at_scrape_time(registry: CollectorRegistry) -> None:
    pool = SettableWorkerPool(alive=3, heartbeat=None)
    GatewayMetrics(registry, ROUTES, DESTINATIONS, workers=pool)
    assert value(registry, "dicomgw_workers_up") == 3
    assert registry.get_sample_value("dicomgw_workers_last_heartbeat_timestamp_seconds") is None
    pool.alive, pool.heartbeat = 0, 1_700_000_000.0
    assert value(registry, "dicomgw_workers_up") == 0
    assert value(registry, "dicomgw_workers_last_heartbeat_timestamp_seconds") == 1_700_000_000.0


def test_build_info(registry: CollectorRegistry) -> None:
    GatewayMetrics(registry, ROUTES, DESTINATIONS, key_fingerprint="3f9a0c", site="SITE01")
    family = next(f for f in registry.collect() if f.name == "dicomgw_build")
    (sample,) = family.samples
    assert sample.value == 1
    assert sample.labels["version"] == gateway.__version__
    assert sample.labels["key_fingerprint"] == "3f9a0c"
    assert sample.labels["site"] == "SITE01"
    assert {"python", "torch", "pydicom", "pynetdicom"} <= set(sample.labels)


@pytest.mark.parametrize("bad", ["other", "none", "DOE^JOHN", "", "x" * 65])
def test_route_names_that_cannot_be_labels_are_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="route"):
        GatewayMetrics(CollectorRegistry(), ["ok", bad], DESTINATIONS)


def test_two_gateways_in_one_process_keep_separate_registries() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    GatewayMetrics(a, ROUTES, DESTINATIONS).emit(StudyRouted("s", "ct", 1))
    GatewayMetrics(b, ROUTES, DESTINATIONS)
    assert value(a, "dicomgw_instances_routed_total", route="ct") == 1
    assert value(b, "dicomgw_instances_routed_total", route="ct") == 0


def test_vocabulary_cleans_only_what_is_outside_it() -> None:
    vocab = Vocabulary(ROUTES, DESTINATIONS)
    kept = InstanceQuarantined(route="", reason=QuarantineReason.NO_ROUTE)
    assert vocab.clean(kept) == kept
    forwarded = InstanceForwarded(route="ct", destination="archive", seconds=0.1)
    assert vocab.clean(forwarded) == forwarded
    cleaned = vocab.clean(InstanceForwarded(route="DOE^JOHN", destination="PACS_X", seconds=0.1))
    assert (cleaned.route, cleaned.destination) == ("other", "other")
    refused = vocab.clean(InstanceRefused("a", "Smith^Jane", status=0xA700))
    assert refused.reason == "other"
    assert vocab.clean(ForwardFailed("backup", "timeout", True)).reason == "timeout"


def test_lost_instances_are_counted_by_reason_and_a_free_text_reason_reads_other() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, ROUTES, DESTINATIONS)
    metrics.emit(InstanceLost("spool_file_missing", study_key="abc"))
    metrics.emit(InstanceLost("1.2.840.99"))
    assert value(registry, "dicomgw_instances_lost_total", reason="spool_file_missing") == 1
    assert value(registry, "dicomgw_instances_lost_total", reason="other") == 1
