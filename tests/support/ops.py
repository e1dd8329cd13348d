"""Test helpers for the operations side: probes with settable values and a realistic event stream.

The stream mimics what the gateway node emits for a mixed workload (CT studies forwarded, clinical
photographs through FlowEdit and the lesion gate, an archive that goes away, senders refused when
the disk fills), with PHI-looking strings planted wherever a careless node might put them, so
tests can check that none of them reaches a metric label or a log line.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from gateway.events import (
    AssociationAccepted,
    AssociationClosed,
    AssociationRejected,
    Backlog,
    ForwardFailed,
    GatewayEvent,
    GpuWork,
    InstanceForwarded,
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

ROUTES = ("photos", "ct")
DESTINATIONS = ("archive", "backup")
#: Values a careless node might put into a route, destination or reason field. None may ever appear
#: in /metrics or in a log line.
PLANTED_PHI = (
    "DOE^JOHN",
    "1.2.840.113619.2.55.3.604688119.868.1249000000.999",
    "MRN0012345",
    "ACC-778899",
    "19520317",
    "STRANGER_AE",
)


@dataclass
class SettableBacklog:
    """A BacklogProbe whose snapshot the test sets; can be told to fail like a locked journal."""

    journal_states: dict[str, int] = field(default_factory=dict)
    outbox_per_destination: dict[str, int] = field(default_factory=dict)
    spool_bytes: int = 0
    disk_free_bytes: int = 50 * 2**30
    fail: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def backlog(self) -> Backlog:
        with self._lock:
            if self.fail:
                raise OSError("database is locked")
            return Backlog(
                journal_states=dict(self.journal_states),
                outbox_per_destination=dict(self.outbox_per_destination),
                spool_bytes=self.spool_bytes,
                disk_free_bytes=self.disk_free_bytes,
            )

    def update(self, **values: object) -> None:
        with self._lock:
            for key, value in values.items():
                setattr(self, key, value)


@dataclass
class SettableWorkerPool:
    """A WorkerPoolProbe with settable answers."""

    alive: int = 2
    heartbeat: float | None = None

    def workers_alive(self) -> int:
        return self.alive

    def last_heartbeat(self) -> float | None:
        return self.heartbeat


def study_events(rng: random.Random, study: int, photo: bool) -> Iterator[GatewayEvent]:
    """Every event of one study's trip through the gateway, as the node would emit them."""
    assoc = f"assoc-{study}"
    key = f"study-{study:04d}"
    route = "photos" if photo else "ct"
    n = rng.randint(2, 5) if photo else rng.randint(5, 20)
    yield AssociationAccepted(association_id=assoc)
    for _ in range(n):
        yield InstanceStored(
            association_id=assoc,
            study_key=key,
            size_bytes=rng.randint(30_000, 400_000),
            seconds=rng.uniform(0.002, 0.05),
        )
    yield AssociationClosed(association_id=assoc, instances=n, aborted=False)
    yield StudyRouted(study_key=key, route=route, instances=n)
    for _ in range(n):
        yield StageCompleted(Stage.DEIDENTIFY, route, rng.uniform(0.005, 0.08))
        if photo:
            yield StageCompleted(Stage.EDIT, route, rng.uniform(0.5, 4.0))
            yield GpuWork(route=route, seconds_per_image=rng.uniform(0.4, 3.5))
            yield StageCompleted(Stage.GATE, route, rng.uniform(0.2, 1.5))
            iou = rng.uniform(0.35, 0.95)
            if iou >= 0.67:
                yield LesionGateDecided(route=route, outcome="accepted", iou=iou)
            else:
                reason = QuarantineReason.LESION_IOU_BELOW_THRESHOLD
                yield LesionGateDecided(route=route, outcome=reason.value, iou=iou)
                yield InstanceRejected(route=route, reason=reason)
                yield InstanceQuarantined(route=route, reason=reason)
                continue
        yield StageCompleted(Stage.FORWARD, route, rng.uniform(0.01, 0.3))
        yield InstanceForwarded(route=route, destination="archive", seconds=rng.uniform(0.01, 0.3))


def realistic_stream(seed: int = 7, studies: int = 12) -> list[GatewayEvent]:
    """A mixed workload plus the faults operators must see, PHI planted in every free-text slot."""
    rng = random.Random(seed)
    events: list[GatewayEvent] = [
        ModelLoaded(route="photos", seconds=42.5),
        AssociationRejected(reason=RefusalReason.UNKNOWN_CALLER),
        InstanceRefused(association_id="assoc-x", reason=RefusalReason.DISK_FULL, status=0xA700),
    ]
    for study in range(studies):
        events.extend(study_events(rng, study, photo=study % 2 == 0))
    # The backup archive is down: every attempt fails and will be retried.
    for _ in range(3):
        events.append(ForwardFailed(destination="backup", reason="unreachable", will_retry=True))
    events.append(InstanceQuarantined(route="", reason=QuarantineReason.NO_ROUTE))
    events.append(InstanceQuarantined(route="ct", reason=QuarantineReason.BURNED_IN_ANNOTATION))
    events.append(
        LesionGateDecided(route="photos", outcome=QuarantineReason.LESION_VANISHED.value, iou=None)
    )
    events.append(InstanceRejected(route="photos", reason=QuarantineReason.LESION_VANISHED))
    events.extend(planted_phi_events())
    return events


def planted_phi_events() -> list[GatewayEvent]:
    """Events whose free-text fields carry PHI-looking values a careless node might put there."""
    events: list[GatewayEvent] = []
    for value in PLANTED_PHI:
        events += [
            StudyRouted(study_key="study-phi", route=value, instances=1),
            StageCompleted(Stage.DEIDENTIFY, value, 0.01),
            LesionGateDecided(route=value, outcome=value, iou=0.5),
            InstanceForwarded(route=value, destination=value, seconds=0.02),
            ForwardFailed(destination=value, reason=value, will_retry=False),
            InstanceQuarantined(route=value, reason=QuarantineReason.UNREADABLE),
            GpuWork(route=value, seconds_per_image=1.0),
        ]
    return events
