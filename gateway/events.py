"""State-change events of the gateway, observed by logs and metrics.

The pipeline *emits* events; observers (structured logs, Prometheus metrics, tests) *subscribe*.
Observers never decide anything and their failures never disturb the data path: an exception
raised by a sink is logged and swallowed (pynetdicom's notification-event rule).

Privacy: events carry only values from small fixed sets (route and destination names from the
configuration, reasons from the enums below, SOP class *kinds*), counts, sizes and durations, plus
opaque ids (association id, hashed study key). Never a UID, a name, an AE title the operator did not
configure, or any other value read from a dataset.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import structlog


class RefusalReason(StrEnum):
    """Why an association or an instance was not accepted."""

    UNKNOWN_CALLER = "unknown_caller"
    CALLED_AE = "called_ae"
    ASSOCIATION_LIMIT = "association_limit"
    DISK_FULL = "disk_full"
    WRITE_ERROR = "write_error"
    MALFORMED = "malformed"
    #: larger than storage.max_instance_bytes
    TOO_LARGE = "too_large"


class QuarantineReason(StrEnum):
    """Why an instance went to quarantine instead of onward. Extend only with new fixed values."""

    NO_ROUTE = "no_route"
    BURNED_IN_ANNOTATION = "burned_in_annotation"
    DEIDENTIFICATION_FAILED = "deidentification_failed"
    PIXEL_STEP_FAILED = "pixel_step_failed"
    LESION_VANISHED = "lesion_vanished"
    LESION_IOU_BELOW_THRESHOLD = "lesion_iou_below_threshold"
    LESION_MASK_UNRELIABLE = "lesion_mask_unreliable"
    DEAD_LETTER = "dead_letter"
    UNREADABLE = "unreadable"
    #: processing raised an unexpected error (or crashed the process) too many times
    PROCESSING_ERROR = "processing_error"
    #: a queued de-identified copy vanished from the outbox before it was sent
    OUTBOX_FILE_MISSING = "outbox_file_missing"
    #: a photograph on a flowedit route about to leave without the flowedit step's record
    PHOTOGRAPH_NOT_TRANSFORMED = "photograph_not_transformed"
    #: Burned In Annotation absent on a modality where burned-in text is common
    BURNED_IN_UNKNOWN = "burned_in_unknown"


class Stage(StrEnum):
    """Pipeline stages with a latency histogram."""

    RECEIVE = "receive"
    DEIDENTIFY = "deidentify"
    EDIT = "edit"
    GATE = "gate"
    FORWARD = "forward"


@dataclass(frozen=True)
class GatewayEvent:
    """Base class; every event is immutable."""


@dataclass(frozen=True)
class AssociationAccepted(GatewayEvent):
    association_id: str


@dataclass(frozen=True)
class AssociationRejected(GatewayEvent):
    reason: RefusalReason


@dataclass(frozen=True)
class AssociationClosed(GatewayEvent):
    association_id: str
    instances: int
    aborted: bool


@dataclass(frozen=True)
class InstanceStored(GatewayEvent):
    """Received bytes are durable (file and directory fsynced, journal row written)."""

    association_id: str
    study_key: str
    size_bytes: int
    seconds: float


@dataclass(frozen=True)
class InstanceRefused(GatewayEvent):
    """A C-STORE answered with a failure status; the sender keeps the data."""

    association_id: str
    reason: RefusalReason
    status: int


@dataclass(frozen=True)
class StudyRouted(GatewayEvent):
    study_key: str
    route: str
    instances: int


@dataclass(frozen=True)
class StageCompleted(GatewayEvent):
    """One instance finished a stage (for the per-stage latency histograms)."""

    stage: Stage
    route: str
    seconds: float


@dataclass(frozen=True)
class LesionGateDecided(GatewayEvent):
    route: str
    outcome: str  # "accepted", "no_lesion_found", or a QuarantineReason value
    iou: float | None


@dataclass(frozen=True)
class InstanceForwarded(GatewayEvent):
    route: str
    destination: str
    #: Seconds the send took, per instance (the batch's time divided by its size).
    seconds: float
    #: Context for the event log (hashed study key); never a metric label.
    study_key: str = ""


@dataclass(frozen=True)
class ForwardFailed(GatewayEvent):
    destination: str
    #: small fixed set (gateway.labels.FORWARD_FAILURE_REASONS): "refused", "unreachable",
    #: "aborted", "status", "timeout", "tls"
    reason: str
    will_retry: bool
    study_key: str = ""


@dataclass(frozen=True)
class InstanceQuarantined(GatewayEvent):
    route: str  # "" when no route matched
    reason: QuarantineReason
    study_key: str = ""
    #: The association that brought the instance ("" when unknown, e.g. adopted after a crash).
    association_id: str = ""


@dataclass(frozen=True)
class InstanceRejected(GatewayEvent):
    """Rejected by a check (e.g. the lesion gate) — also quarantined; counted separately."""

    route: str
    reason: QuarantineReason
    study_key: str = ""
    association_id: str = ""


#: Why an instance was lost (`InstanceLost.reason`).
LOST_REASONS = ("spool_file_missing",)


@dataclass(frozen=True)
class InstanceLost(GatewayEvent):
    """An acknowledged instance whose spool file vanished before it was processed (deleted by
    hand, a restored backup, a file system fault): nothing left to send or quarantine."""

    reason: str  # one of LOST_REASONS
    study_key: str = ""
    association_id: str = ""


@dataclass(frozen=True)
class ModelLoaded(GatewayEvent):
    route: str
    seconds: float


@dataclass(frozen=True)
class GpuWork(GatewayEvent):
    route: str
    seconds_per_image: float


class EventSink(Protocol):
    def emit(self, event: GatewayEvent) -> None: ...


@dataclass
class EventBus:
    """Fan-out to every subscribed sink; a failing sink is logged, never propagated."""

    sinks: list[EventSink] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def subscribe(self, sink: EventSink | Callable[[GatewayEvent], None]) -> None:
        wrapped: EventSink = _CallableSink(sink) if callable(sink) else sink
        with self._lock:
            self.sinks.append(wrapped)

    def emit(self, event: GatewayEvent) -> None:
        for sink in tuple(self.sinks):
            try:
                sink.emit(event)
            except Exception:  # observers must never disturb the data path
                structlog.get_logger("gateway.events").exception(
                    "event_sink_failed", sink=type(sink).__name__, event_type=type(event).__name__
                )


@dataclass(frozen=True)
class _CallableSink:
    fn: Callable[[GatewayEvent], None]

    def emit(self, event: GatewayEvent) -> None:
        self.fn(event)


@dataclass(frozen=True)
class Backlog:
    """A snapshot of queued work, read by the metrics collector at scrape time."""

    journal_states: dict[str, int]
    outbox_per_destination: dict[str, int]
    spool_bytes: int
    disk_free_bytes: int


class BacklogProbe(Protocol):
    def backlog(self) -> Backlog: ...
