"""The pipeline: complete studies → route → de-identify → pixel step → outbox (or quarantine).

The assembler asks the journal for studies whose newest instance is older than the stable age and
processes their waiting instances one by one. Each instance ends in exactly one of two durable
places before its journal row moves: the outbox (one de-identified copy per destination) or the
quarantine (with a reason). A crash in between leaves the row `received`, and the instance is
processed again on start; the result is the same because pseudonyms are keyed and deterministic.
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pydicom
from pydicom import Dataset

from deid_core.errors import InvalidInputError, PermanentError
from deid_core.keys import ProjectKey
from dicom_io.files import encode_dataset
from gateway.config import GatewayConfig
from gateway.events import (
    EventBus,
    InstanceQuarantined,
    InstanceRejected,
    ModelLoaded,
    QuarantineReason,
    Stage,
    StageCompleted,
    StudyRouted,
)
from gateway.ingest import NO_STUDY
from gateway.journal import InstanceRow, Journal
from gateway.logs import get_logger
from gateway.outbox import Outbox
from gateway.pixels import (
    MODEL_FREE_STEPS,
    PixelContext,
    PixelRejected,
    PixelStep,
    build_pixel_step,
)
from gateway.quarantine import Quarantine
from gateway.routing import Route, RouteContext, Router
from gateway.spool import Spool

LOG = get_logger("gateway.pipeline")


class Deidentifier(Protocol):
    def deidentify(self, ds: Dataset) -> Dataset: ...


DeidentifierFactory = Callable[[GatewayConfig, str, ProjectKey], Deidentifier]


def default_deidentifier_factory() -> DeidentifierFactory:
    """The metadata de-identification of the confidentiality profile (`gateway.profiles`)."""
    from gateway.profiles import build_deidentifier

    factory: DeidentifierFactory = build_deidentifier
    return factory


def _encode(ds: Dataset) -> bytes:
    return encode_dataset(ds)


@dataclass
class StudyResult:
    queued: int = 0
    quarantined: int = 0


class Pipeline:
    """Processes complete studies. Thread-safe for one caller at a time (the assembler)."""

    def __init__(
        self,
        cfg: GatewayConfig,
        key: ProjectKey,
        journal: Journal,
        spool: Spool,
        outbox: Outbox,
        quarantine: Quarantine,
        events: EventBus,
        deidentifier_factory: DeidentifierFactory | None = None,
    ) -> None:
        self.cfg = cfg
        self.key = key
        self.journal = journal
        self.spool = spool
        self.outbox = outbox
        self.quarantine = quarantine
        self.events = events
        self.router = Router.from_config(cfg)
        factory = deidentifier_factory or default_deidentifier_factory()
        # Built once at start-up: a bad profile or pixel step stops the gateway before it listens.
        self._deidentifiers: dict[str, Deidentifier] = {
            name: factory(cfg, name, key) for name in cfg.profiles
        }
        routes_by_step: dict[str, list[str]] = {"none": []}
        for route in self.router.all_routes():
            routes_by_step.setdefault(route.pixels, []).append(route.name)
        self._pixel_steps: dict[str, PixelStep] = {}
        for name, routes in routes_by_step.items():
            started = time.perf_counter()
            self._pixel_steps[name] = build_pixel_step(name, cfg)
            if name not in MODEL_FREE_STEPS:
                # A step with a model loads it when built (once, at start-up).
                seconds = time.perf_counter() - started
                for route_name in routes:
                    self.events.emit(ModelLoaded(route=route_name, seconds=seconds))

    @property
    def pixel_steps(self) -> dict[str, PixelStep]:
        """The built pixel steps by name (the node asks them for readiness checks)."""
        return dict(self._pixel_steps)

    # --- assembly ------------------------------------------------------------------------------

    def process_ready(
        self,
        now: float | None = None,
        stop: threading.Event | None = None,
        progress: Callable[[], None] | None = None,
    ) -> int:
        """Process every study that has been stable long enough; returns instances handled.
        `progress` is called after each instance (a liveness heartbeat through long studies)."""
        now = time.time() if now is None else now
        cutoff = now - self.cfg.storage.study_stable_seconds
        handled = 0
        for skey in self.journal.stable_studies(cutoff):
            if stop is not None and stop.is_set():
                break
            result = self.process_study(skey, progress)
            handled += result.queued + result.quarantined
        return handled

    def process_study(
        self, study_key: str, progress: Callable[[], None] | None = None
    ) -> StudyResult:
        result = StudyResult()
        routed: Counter[str] = Counter()
        # The study's outbox copies are committed together, so a forwarder sees the whole study
        # at once (one association per study batch). A crash before the commit leaves every row
        # `received`; the copies already written are orphans, removed on start.
        staged: list[tuple[int, str, list[tuple[str, str]]]] = []
        for row in self.journal.received_in_study(study_key):
            route_name = self._process_instance(row, result, staged)
            if route_name is not None:
                routed[route_name] += 1
            if progress is not None:
                progress()
        if staged:
            self.journal.mark_queued_many(staged, study_key)
        for route_name, count in routed.items():
            self.events.emit(StudyRouted(study_key=study_key, route=route_name, instances=count))
        LOG.info(
            "study_processed",
            study_key=study_key,
            queued=result.queued,
            quarantined=result.quarantined,
        )
        return result

    # --- one instance --------------------------------------------------------------------------

    def _quarantine(
        self,
        row: InstanceRow,
        data: bytes,
        reason: QuarantineReason,
        route: str,
        result: StudyResult,
        details: dict[str, Any] | None = None,
        artifacts: dict[str, bytes] | None = None,
        rejected: bool = False,
    ) -> None:
        entry = self.quarantine.put(
            instance_id=row.id,
            data=data,
            reason=reason,
            route=route,
            study_key=row.study_key,
            details=details,
            artifacts=artifacts,
        )
        self.spool.remove(row.spool_path)
        result.quarantined += 1
        context = {"study_key": row.study_key, "association_id": row.association_id}
        if rejected:
            self.events.emit(InstanceRejected(route=route, reason=reason, **context))
        self.events.emit(InstanceQuarantined(route=route, reason=reason, **context))
        LOG.info(
            "quarantine_entry_created",
            study_key=row.study_key,
            route=route,
            reason=reason.value,
            entry=entry,
        )

    def _process_instance(
        self,
        row: InstanceRow,
        result: StudyResult,
        staged: list[tuple[int, str, list[tuple[str, str]]]],
    ) -> str | None:
        try:
            data = self.spool.read(row.spool_path)
        except FileNotFoundError:
            LOG.error("spool_file_missing", study_key=row.study_key, instance=row.id)
            return None
        try:
            original = pydicom.dcmread(io.BytesIO(data))
            if row.study_key == NO_STUDY:
                raise InvalidInputError("no Study Instance UID")
        except Exception as exc:
            self._quarantine(
                row, data, QuarantineReason.UNREADABLE, "", result, {"error": _safe_error(exc)}
            )
            return None
        route = self._route(row, original)
        if route is None:
            self._quarantine(row, data, QuarantineReason.NO_ROUTE, "", result)
            return None
        started = time.perf_counter()
        try:
            deidentified = self._deidentifiers[route.profile].deidentify(original)
        except PermanentError as exc:
            self._quarantine(
                row,
                data,
                QuarantineReason.DEIDENTIFICATION_FAILED,
                route.name,
                result,
                {"error": _safe_error(exc)},
            )
            return route.name
        self.events.emit(
            StageCompleted(Stage.DEIDENTIFY, route.name, time.perf_counter() - started)
        )
        if not row.override.get("accept_pixels"):
            started = time.perf_counter()
            context = PixelContext(
                route.name,
                row.study_key,
                self._seed(original),
                waive_gate=bool(row.override.get("waive_gate")),
            )
            try:
                outcome = self._pixel_steps[route.pixels].process(original, deidentified, context)
            except PermanentError as exc:
                self._quarantine(
                    row,
                    data,
                    QuarantineReason.PIXEL_STEP_FAILED,
                    route.name,
                    result,
                    {"error": _safe_error(exc)},
                )
                return route.name
            if route.pixels != "none":
                self.events.emit(
                    StageCompleted(Stage.EDIT, route.name, time.perf_counter() - started)
                )
            if isinstance(outcome, PixelRejected):
                self._quarantine(
                    row,
                    data,
                    outcome.reason,
                    route.name,
                    result,
                    dict(outcome.details),
                    dict(outcome.artifacts),
                    rejected=True,
                )
                return route.name
            deidentified = outcome.dataset
        encoded = _encode(deidentified)
        copies = [
            (dest, self.outbox.put(dest, row.study_key, encoded)) for dest in route.destinations
        ]
        staged.append((row.id, route.name, copies))
        result.queued += 1
        return route.name

    def _route(self, row: InstanceRow, ds: Dataset) -> Route | None:
        forced = row.override.get("route")
        if forced:
            route = self.router.by_name(str(forced))
            if route is not None:
                return route
            LOG.warning("released_route_unknown", route=str(forced))
        return self.router.route(ds, RouteContext(row.calling_ae, row.called_ae))

    def _seed(self, ds: Dataset) -> int:
        uid = str(ds.get("SOPInstanceUID", ""))
        return int.from_bytes(self.key.hmac("pixel-seed", uid.encode())[:8], "big")


def _safe_error(exc: BaseException) -> str:
    """The error's type and message; the project's own errors never carry PHI, others may, so
    only their type is kept."""
    from deid_core.errors import DeidGatewayError

    if isinstance(exc, DeidGatewayError):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__
