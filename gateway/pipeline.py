"""The pipeline: complete studies → route → de-identify → pixel step → outbox (or quarantine).

The assembler asks the journal for studies whose newest instance is older than the stable age and
processes their waiting instances one by one. Each instance ends in exactly one of two durable
places before its journal row moves: the outbox (one de-identified copy per destination) or the
quarantine (with a reason). A crash in between leaves the row `received`, and the instance is
processed again on start; the result is the same because pseudonyms are keyed and deterministic.

Photographs on a route with an asynchronous pixel step (`flowedit`) take a detour: the step's
pixel-only job is journaled (the instance becomes `editing`, a `pixel_jobs` row) and handed to the
executor (in process, or the worker pool); the instance's study does not wait for it. When the
result comes back (`complete_pixel_job`, from the executor's thread) the instance is read from the
spool again, de-identified again (deterministic) and finished like any other: outbox or
quarantine, in one transaction with the job row's deletion. Jobs whose result does not come within
the executor's timeout, or that the broker refused, are submitted again (`resubmit_due`, from the
assembler) up to the executor's attempt limit, then quarantined as pixel_step_failed. Results are
idempotent: the seed is derived from the key and the instance, and a second result for a job
finds no row and is ignored.
"""

from __future__ import annotations

import contextlib
import errno
import io
import sqlite3
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import pydicom
from pydicom import Dataset

from deid_core.errors import InvalidInputError, PermanentError, RetryableError
from deid_core.keys import ProjectKey
from deid_core.seeds import derive_seed
from dicom_io.files import encode_dataset_parts
from gateway.config import GatewayConfig
from gateway.events import (
    EventBus,
    GpuWork,
    InstanceLost,
    InstanceQuarantined,
    InstanceRejected,
    LesionGateDecided,
    ModelLoaded,
    QuarantineReason,
    Stage,
    StageCompleted,
    StudyRouted,
)
from gateway.executors import PixelExecutor, build_executor
from gateway.ingest import NO_STUDY
from gateway.interlock import untransformed_photograph
from gateway.journal import InstanceRow, InstanceState, Journal, PixelJobRow
from gateway.logs import get_logger
from gateway.outbox import Outbox
from gateway.pixel_jobs import PixelJob, PixelResult
from gateway.pixels import (
    MODEL_FREE_STEPS,
    PixelAccepted,
    PixelContext,
    PixelOutcome,
    PixelRejected,
    PixelStep,
    build_pixel_step,
)
from gateway.quarantine import Quarantine
from gateway.routing import Route, RouteContext, Router
from gateway.spool import Spool

LOG = get_logger("gateway.pipeline")


if TYPE_CHECKING:
    from gateway.photo import PhotoEngine


class Deidentifier(Protocol):
    def deidentify(self, ds: Dataset) -> Dataset: ...


class AsyncPixelStep(Protocol):
    """A pixel step whose work runs on an executor: `prepare` a pixel-only job here, `complete`
    the instance when the result is back (gateway.photo.FlowEditStep)."""

    name: str
    engine: PhotoEngine | None

    def prepare(
        self, original: Dataset, context: PixelContext, job_id: str, *, attempt: int = 1
    ) -> PixelJob: ...

    def complete(
        self, original: Dataset, deidentified: Dataset, result: PixelResult, context: PixelContext
    ) -> PixelOutcome: ...


#: Far enough in the future to mean "never" in the journal (SQLite has no infinity literal).
_NEVER = 1e15


DeidentifierFactory = Callable[[GatewayConfig, str, ProjectKey], Deidentifier]


def default_deidentifier_factory() -> DeidentifierFactory:
    """The metadata de-identification of the confidentiality profile (`gateway.profiles`)."""
    from gateway.profiles import build_deidentifier

    factory: DeidentifierFactory = build_deidentifier
    return factory


def _encode(ds: Dataset) -> list[bytes]:
    """The de-identified file as parts (no joined copy: a large instance is not held twice).

    The File Meta Information follows the data set: a pixel step that gave the instance a new
    SOP Instance UID (a derived instance) without updating the meta would otherwise write a file
    that archives refuse (Orthanc does)."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        for keyword, meta_keyword in (
            ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
            ("SOPClassUID", "MediaStorageSOPClassUID"),
        ):
            value = ds.get(keyword)
            if value and meta.get(meta_keyword) != value:
                setattr(meta, meta_keyword, value)
    return encode_dataset_parts(ds)


@dataclass
class StudyResult:
    queued: int = 0
    quarantined: int = 0
    #: photographs whose pixel job went to the executor
    editing: int = 0


class Pipeline:
    """Processes complete studies (the assembler) and finished pixel jobs (the executor's
    thread); one lock serialises the two."""

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
        executor: PixelExecutor | None = None,
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
        self._async_steps: dict[str, AsyncPixelStep] = {
            name: step  # type: ignore[misc]
            for name, step in self._pixel_steps.items()
            if getattr(step, "asynchronous", False)
        }
        self.executor: PixelExecutor | None = None
        if self._async_steps:
            engine = next(iter(self._async_steps.values())).engine
            self.executor = executor or build_executor(cfg, engine)
        self._lock = threading.RLock()
        #: called after finished pixel jobs put copies in the outbox (the node wakes forwarders)
        self.on_queued: Callable[[], None] | None = None
        #: the keyed UID of something made from an original (pseudonymizer.derived_uid)
        self.derived_uid: Callable[[str, str], str] = self._find_uid_mapper()

    @property
    def pixel_steps(self) -> dict[str, PixelStep]:
        """The built pixel steps by name (the node asks them for readiness checks)."""
        return dict(self._pixel_steps)

    # --- the executor ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the executor. An in-process executor lost its queue with the last process: every
        open pixel job is due again now."""
        if self.executor is None:
            if self.journal.pixel_job_count():
                LOG.warning("pixel_jobs_without_executor", jobs=self.journal.pixel_job_count())
            return
        if self.executor.lost_on_restart:
            self.journal.reschedule_pixel_jobs(0.0)
        self.executor.start(self.complete_pixel_job)

    def stop(self, timeout: float = 30.0) -> None:
        if self.executor is not None:
            self.executor.stop(timeout)

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
        handled = self.resubmit_due(now) if self.executor is not None else 0
        for skey in self.journal.stable_studies(cutoff):
            if stop is not None and stop.is_set():
                break
            result = self.process_study(skey, progress)
            handled += result.queued + result.quarantined + result.editing
        batch = self.cfg.storage.stream_batch
        if batch:
            # Studies still arriving: whole batches now, the remainder once stable.
            for skey in self.journal.streaming_studies(batch):
                if stop is not None and stop.is_set():
                    break
                result = self.process_study(skey, progress, limit=batch)
                handled += result.queued + result.quarantined + result.editing
        return handled

    def process_study(
        self,
        study_key: str,
        progress: Callable[[], None] | None = None,
        limit: int | None = None,
    ) -> StudyResult:
        """Process the study's waiting instances (the first `limit` of them, in arrival order)."""
        with self._lock:
            return self._process_study(study_key, progress, limit)

    def _process_study(
        self,
        study_key: str,
        progress: Callable[[], None] | None = None,
        limit: int | None = None,
    ) -> StudyResult:
        result = StudyResult()
        routed: Counter[str] = Counter()
        # The study's outbox copies are committed together, so a forwarder sees the whole study
        # at once (one association per study batch). A crash before the commit leaves every row
        # `received`; the copies already written are orphans, removed on start.
        staged: list[tuple[int, str, list[tuple[str, str]]]] = []
        rows = self.journal.received_in_study(study_key, limit)
        # Attempts are counted (and committed) before the work, so an instance that crashes the
        # process is counted too. A study with an unfinished earlier attempt (an instance that
        # failed, or a crash: the rows are still `received`) goes instance by instance, each
        # counted and committed alone, so that only the poisoned instance is given up on.
        careful = any(row.attempts for row in rows)
        if rows and not careful:
            self.journal.count_attempts([row.id for row in rows])
        max_attempts = self.cfg.storage.max_processing_attempts
        for row in rows:
            if careful:
                self.journal.count_attempts([row.id])
            attempt = row.attempts + 1
            try:
                if attempt > max_attempts:
                    # every counted attempt ended without an answer: the process died each time
                    self._give_up(row, result, "the process ended", attempt - 1)
                    route_name = None
                else:
                    route_name = self._process_instance(row, result, staged)
            except Exception as exc:
                if _storage_fault(exc):
                    # Not the instance's fault (disk full, I/O error): uncount the attempt, keep
                    # what is done, and let the assembler try the study again later.
                    with contextlib.suppress(Exception):
                        self.journal.count_attempts([row.id], -1)
                        if staged:
                            self.journal.mark_queued_many(staged, study_key)
                    raise
                route_name = self._processing_failed(row, result, exc, attempt, max_attempts)
            if route_name is not None:
                routed[route_name] += 1
            if careful and staged:
                self.journal.mark_queued_many(staged, study_key)
                staged.clear()
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

    def _processing_failed(
        self, row: InstanceRow, result: StudyResult, exc: Exception, attempt: int, limit: int
    ) -> str | None:
        """An unexpected error while processing one instance (a bug, a hostile file that trips
        pydicom): the instance stays `received` and is tried again with its study's next turn,
        and is quarantined as processing_error on its last attempt. The rest goes on."""
        error = _error_location(exc)
        LOG.error(
            "instance_processing_failed",
            study_key=row.study_key,
            instance=row.id,
            error=error,
            attempt=attempt,
            max_attempts=limit,
        )
        if attempt < limit:
            return None
        try:
            self._give_up(row, result, error, attempt)
        except Exception as again:  # e.g. the quarantine cannot be written: next turn
            LOG.error(
                "instance_quarantine_failed",
                study_key=row.study_key,
                instance=row.id,
                error=_error_location(again),
            )
        return None

    def _give_up(self, row: InstanceRow, result: StudyResult, error: str, attempts: int) -> None:
        """Quarantine the received original as processing_error (PHI-free error details)."""
        try:
            data = self.spool.read(row.spool_path)
        except FileNotFoundError:
            self._lost(row)
            return
        self._quarantine(
            row,
            data,
            QuarantineReason.PROCESSING_ERROR,
            row.route or "",
            result,
            {"error": error, "attempts": attempts},
        )

    def _lost(self, row: InstanceRow) -> None:
        """The spool file of an acknowledged instance is gone: nothing can be processed. A final
        state (`lost`) instead of looking for the file forever; an ERROR and an event say so."""
        reason = "spool_file_missing"
        self.journal.mark_lost(row.id, reason)
        LOG.error(
            "instance_lost",
            reason=reason,
            study_key=row.study_key,
            instance=row.id,
            association_id=row.association_id,
        )
        self.events.emit(
            InstanceLost(reason=reason, study_key=row.study_key, association_id=row.association_id)
        )

    def _quarantine(
        self,
        row: InstanceRow,
        data: bytes | None,
        reason: QuarantineReason,
        route: str,
        result: StudyResult,
        details: dict[str, Any] | None = None,
        artifacts: dict[str, bytes] | None = None,
        rejected: bool = False,
    ) -> None:
        """`data`: the received original; None reads it from the spool now."""
        if data is None:
            data = self.spool.read(row.spool_path)
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
        # Read from the file, not from a copy of its bytes: a large instance is held once. The
        # bytes of the original are read only if it goes to quarantine (data=None below).
        data: bytes | None = None
        try:
            original = pydicom.dcmread(self.spool.path(row.spool_path))
        except FileNotFoundError:
            self._lost(row)
            return None
        except Exception as exc:
            self._quarantine(
                row, data, QuarantineReason.UNREADABLE, "", result, {"error": _safe_error(exc)}
            )
            return None
        try:
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
        if not row.override.get("accept_pixels") and route.pixels in self._async_steps:
            self._start_pixel_job(row, route, original, data, result)
            return route.name
        if not row.override.get("accept_pixels"):
            started = time.perf_counter()
            context = self._context(
                original, route.name, row.study_key, bool(row.override.get("waive_gate"))
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
        if self._holds_untransformed_photograph(row, data, route, original, deidentified, result):
            return route.name
        encoded = _encode(deidentified)
        copies = [
            (dest, self.outbox.put(dest, row.study_key, encoded)) for dest in route.destinations
        ]
        staged.append((row.id, route.name, copies))
        result.queued += 1
        return route.name

    def _holds_untransformed_photograph(
        self,
        row: InstanceRow,
        data: bytes | None,
        route: Route,
        original: Dataset,
        outgoing: Dataset,
        result: StudyResult,
    ) -> bool:
        """The photograph interlock (gateway.interlock), whatever the route's step or the
        reviewer's override: True when the instance went to quarantine instead of the outbox."""
        details = untransformed_photograph(route.pixels, original, outgoing, self.derived_uid)
        if details is None:
            return False
        LOG.error("photograph_not_transformed", study_key=row.study_key, route=route.name)
        reason = QuarantineReason.PHOTOGRAPH_NOT_TRANSFORMED
        self._quarantine(row, data, reason, route.name, result, details, rejected=True)
        return True

    def _route(self, row: InstanceRow, ds: Dataset) -> Route | None:
        forced = row.override.get("route")
        if forced:
            route = self.router.by_name(str(forced))
            if route is not None:
                return route
            LOG.warning("released_route_unknown", route=str(forced))
        return self.router.route(ds, RouteContext(row.calling_ae, row.called_ae))

    # --- pixel context --------------------------------------------------------------------------

    def _context(
        self, original: Dataset, route: str, study_key: str, waive_gate: bool = False
    ) -> PixelContext:
        """Seeds keyed on the project key, the original SOP Instance UID and the route (a retry,
        another worker or another site with the same key draws the same noise)."""
        uid = str(original.get("SOPInstanceUID", ""))

        def derive(*parts: str | bytes | int) -> int:
            return derive_seed(self.key, uid, route, *parts)

        return PixelContext(route, study_key, derive(), derive, self.derived_uid, waive_gate)

    def _find_uid_mapper(self) -> Callable[[str, str], str]:
        """The pseudonymizer's `derived_uid` (one key: every profile's de-identifier maps alike);
        a de-identifier without one (a test's) gets the key's own Pseudonymizer."""
        from deid_core.pseudonyms import Pseudonymizer

        for deidentifier in self._deidentifiers.values():
            pseudonymizer = getattr(deidentifier, "pseudonymizer", None)
            mapper = getattr(pseudonymizer, "derived_uid", None)
            if callable(mapper):
                return mapper
        return Pseudonymizer(self.key).derived_uid

    # --- pixel jobs ------------------------------------------------------------------------------

    def _start_pixel_job(
        self,
        row: InstanceRow,
        route: Route,
        original: Dataset,
        data: bytes | None,
        result: StudyResult,
    ) -> None:
        step = self._async_steps[route.pixels]
        job_id = uuid.uuid4().hex
        try:
            job = step.prepare(original, self._context(original, route.name, row.study_key), job_id)
        except PermanentError as exc:
            self._quarantine(
                row,
                data,
                QuarantineReason.PIXEL_STEP_FAILED,
                route.name,
                result,
                {"error": _safe_error(exc)},
            )
            return
        self.journal.add_pixel_job(row.id, job_id, route.name, due_at=time.time())
        self._submit(job, 0)
        result.editing += 1

    def _submit(self, job: PixelJob, attempts_before: int) -> bool:
        """Hand a journaled job to the executor; False when it could not take it (it is tried
        again after the executor's retry delay, without counting an attempt)."""
        assert self.executor is not None
        executor = self.executor
        try:
            executor.submit(replace(job, attempt=attempts_before + 1))
        except RetryableError as exc:
            self.journal.pixel_job_deferred(job.job_id, time.time() + executor.retry_delay_s)
            LOG.warning("pixel_job_deferred", route=job.route, error=_safe_error(exc))
            return False
        timeout = executor.result_timeout_s
        due = _NEVER if timeout == float("inf") else time.time() + timeout
        self.journal.pixel_job_submitted(job.job_id, attempts_before + 1, due)
        return True

    def resubmit_due(self, now: float | None = None) -> int:
        """Submit again the jobs that are due (result timed out, or the broker refused them);
        quarantine those out of attempts. Returns the number of instances finished here."""
        now = time.time() if now is None else now
        finished = 0
        with self._lock:
            for job_row in self.journal.pixel_jobs_due(now):
                outcome = self._resubmit(job_row)
                if outcome is None:
                    break  # the executor refuses work: try the rest later
                finished += outcome
        return finished

    def _resubmit(self, job_row: PixelJobRow) -> int | None:
        assert self.executor is not None
        row = self.journal.instance(job_row.instance_id)
        if row is None or row.state != InstanceState.EDITING.value:
            LOG.error("pixel_job_orphaned", route=job_row.route)
            return 0
        scratch = StudyResult()
        try:
            data = self.spool.read(row.spool_path)
        except FileNotFoundError:
            self._lost(row)
            return 1
        if job_row.attempts >= self.executor.max_attempts:
            self._quarantine(
                row,
                data,
                QuarantineReason.PIXEL_STEP_FAILED,
                job_row.route,
                scratch,
                {"error": "no result from the executor", "attempts": job_row.attempts},
            )
            return 1
        route = self.router.by_name(job_row.route)
        step = self._async_steps.get(route.pixels) if route is not None else None
        try:
            if route is None or step is None:
                raise PermanentError(f"route {job_row.route!r} no longer runs a pixel job")
            original = pydicom.dcmread(io.BytesIO(data))
            context = self._context(original, route.name, row.study_key)
            job = step.prepare(original, context, job_row.job_id)
        except Exception as exc:
            self._quarantine(
                row,
                data,
                QuarantineReason.PIXEL_STEP_FAILED,
                job_row.route,
                scratch,
                {"error": _safe_error(exc)},
            )
            return 1
        LOG.info("pixel_job_resubmitted", route=route.name, attempts=job_row.attempts)
        return 0 if self._submit(job, job_row.attempts) else None

    def complete_pixel_job(self, result: PixelResult) -> None:
        """A pixel job's result (from the executor's thread): finish its instance, once."""
        with self._lock:
            self._complete(result)

    def _complete(self, result: PixelResult) -> None:
        job_row = self.journal.pixel_job(result.job_id)
        if job_row is None:
            LOG.info("pixel_result_ignored", route=result.route, why="no open job (duplicate)")
            return
        row = self.journal.instance(job_row.instance_id)
        if row is None or row.state != InstanceState.EDITING.value:
            LOG.info("pixel_result_ignored", route=result.route, why="instance moved on")
            return
        assert self.executor is not None
        if (
            result.status == "failed"
            and result.retryable
            and job_row.attempts < self.executor.max_attempts
        ):
            LOG.warning("pixel_job_failed_retrying", route=job_row.route, error=result.reason)
            self.journal.pixel_job_deferred(job_row.job_id, time.time())
            return
        scratch = StudyResult()
        try:
            data = self.spool.read(row.spool_path)
        except FileNotFoundError:
            self._lost(row)
            return
        route = self.router.by_name(job_row.route)
        step = self._async_steps.get(route.pixels) if route is not None else None
        if result.status != "failed":
            self._observe(job_row.route, result)
        reason = QuarantineReason.PIXEL_STEP_FAILED
        try:
            if route is None or step is None:
                raise PermanentError(f"route {job_row.route!r} no longer runs a pixel job")
            original = pydicom.dcmread(io.BytesIO(data))
            reason = QuarantineReason.DEIDENTIFICATION_FAILED
            deidentified = self._deidentifiers[route.profile].deidentify(original)
            reason = QuarantineReason.PIXEL_STEP_FAILED
            context = self._context(
                original, route.name, row.study_key, bool(row.override.get("waive_gate"))
            )
            outcome = step.complete(original, deidentified, result, context)
        except PermanentError as exc:
            self._quarantine(row, data, reason, job_row.route, scratch, {"error": _safe_error(exc)})
            return
        except Exception as exc:  # a bug or a hostile file: a defined end, not a lost result
            error = _error_location(exc)
            LOG.error(
                "pixel_result_failed", study_key=row.study_key, route=job_row.route, error=error
            )
            self._quarantine(
                row,
                data,
                QuarantineReason.PROCESSING_ERROR,
                job_row.route,
                scratch,
                {"error": error},
            )
            return
        if isinstance(outcome, PixelRejected):
            self._quarantine(
                row,
                data,
                outcome.reason,
                route.name,
                scratch,
                dict(outcome.details),
                dict(outcome.artifacts),
                rejected=True,
            )
            return
        assert isinstance(outcome, PixelAccepted)
        if self._holds_untransformed_photograph(
            row, data, route, original, outcome.dataset, scratch
        ):
            return
        encoded = _encode(outcome.dataset)
        copies = [
            (dest, self.outbox.put(dest, row.study_key, encoded)) for dest in route.destinations
        ]
        self.journal.mark_queued_many([(row.id, route.name, copies)], row.study_key)
        self.events.emit(StudyRouted(study_key=row.study_key, route=route.name, instances=1))
        LOG.info(
            "photograph_queued",
            study_key=row.study_key,
            route=route.name,
            gate=result.reason,
            attempts=job_row.attempts,
        )
        if self.on_queued is not None:
            self.on_queued()

    def _observe(self, route: str, result: PixelResult) -> None:
        self.events.emit(StageCompleted(Stage.EDIT, route, result.edit_seconds))
        self.events.emit(StageCompleted(Stage.GATE, route, result.gate_seconds))
        iou = result.details.get("iou")
        self.events.emit(
            LesionGateDecided(route, result.reason, float(iou) if iou is not None else None)
        )
        frames = result.details.get("frames", 1)
        n = int(frames) if isinstance(frames, int | float) and frames else 1
        self.events.emit(GpuWork(route, result.model_seconds / n))


def _safe_error(exc: BaseException) -> str:
    """The error's type and message; the project's own errors never carry PHI, others may, so
    only their type is kept."""
    from deid_core.errors import DeidGatewayError

    if isinstance(exc, DeidGatewayError):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


def _error_location(exc: BaseException) -> str:
    """The error's type (and message for the project's own errors, see `_safe_error`) and where
    it was raised (file, line, function): what a developer needs, and no value from the data."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return _safe_error(exc)
    last = frames[-1]
    where = "/".join(last.filename.replace("\\", "/").split("/")[-2:])
    return f"{_safe_error(exc)} at {where}:{last.lineno} in {last.name}"


#: errno values of a storage fault: the gateway's own disk, not the instance.
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


def _storage_fault(exc: BaseException) -> bool:
    """The error comes from the gateway's own storage (spool, outbox, quarantine, journal)
    rather than from the instance: it must not count against the instance."""
    if isinstance(exc, sqlite3.Error):
        return True
    return isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS
