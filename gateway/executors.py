"""Executors: where the pixel jobs of photograph routes run.

Both kinds take `PixelJob`s from the pipeline (`submit`, which never waits for the work) and hand
each `PixelResult` to the pipeline's callback from their own thread. The pipeline journals every
job before submitting it and re-submits what never came back, so an executor may lose jobs (a
crash, a worker killed) without losing photographs, and may deliver a result twice (the second
finds no job and is ignored).

- `LocalExecutor` (`executor: local`, the default): one thread in the gateway process runs the
  engine (models loaded once at start-up), taking up to `batch_size` waiting jobs per call.
- `CeleryExecutor` (`executor: celery`, gateway.workerpool): RabbitMQ and `deid-gateway worker`
  processes on GPU machines.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from deid_core.errors import ConfigError
from gateway.config import GatewayConfig
from gateway.logs import get_logger
from gateway.pixel_jobs import PixelJob, PixelResult

if TYPE_CHECKING:
    from gateway.metrics import WorkerPoolProbe
    from gateway.photo import PhotoEngine

LOG = get_logger("gateway.executors")

ResultHandler = Callable[[PixelResult], None]


class PixelExecutor(Protocol):
    #: how long after a submission the pipeline submits a job again (inf: never, the executor
    #: cannot lose a job while the process lives)
    result_timeout_s: float
    #: submissions of one job before the photograph is quarantined
    max_attempts: int
    #: delay before trying again when `submit` raised RetryableError
    retry_delay_s: float

    def start(self, on_result: ResultHandler) -> None: ...

    def submit(self, job: PixelJob) -> None:
        """Hand the job over; RetryableError when it cannot be taken now (broker away)."""

    def stop(self, timeout: float = 30.0) -> None: ...

    @property
    def lost_on_restart(self) -> bool:
        """Jobs submitted before a restart are gone (an in-memory queue): submit them again."""

    @property
    def probe(self) -> WorkerPoolProbe | None:
        """Heartbeats of remote workers for the metrics (None: no remote workers)."""


class LocalExecutor:
    """The engine on one thread of the gateway process, batching waiting jobs."""

    result_timeout_s = math.inf
    max_attempts = 3
    retry_delay_s = 1.0
    lost_on_restart = True
    probe = None

    def __init__(self, engine: PhotoEngine, batch_size: int = 4) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self._queue: queue.Queue[PixelJob | None] = queue.Queue()
        self._queued: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._on_result: ResultHandler | None = None
        self._stopping = threading.Event()

    def start(self, on_result: ResultHandler) -> None:
        self._on_result = on_result
        self._thread = threading.Thread(target=self._run, name="pixel-executor", daemon=True)
        self._thread.start()

    def submit(self, job: PixelJob) -> None:
        with self._lock:
            if job.job_id in self._queued:
                return  # already waiting: the same job again changes nothing
            self._queued.add(job.job_id)
        self._queue.put(job)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in hand; jobs still waiting stay journaled for the next start."""
        self._stopping.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def _take(self) -> list[PixelJob]:
        first = self._queue.get()
        if first is None:
            return []
        batch = [first]
        while len(batch) < self.batch_size:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._stopping.set()
                break
            batch.append(job)
        return batch

    def _run(self) -> None:
        while not self._stopping.is_set():
            batch = self._take()
            if not batch:
                break
            try:
                results = self.engine.run(batch)
            except Exception:  # the engine turns failures into results; this is a bug
                LOG.exception("pixel_executor_error", jobs=len(batch))
                results = []
            with self._lock:
                for job in batch:
                    self._queued.discard(job.job_id)
            for result in results:
                try:
                    assert self._on_result is not None
                    self._on_result(result)
                except Exception:
                    LOG.exception("pixel_result_handler_failed", route=result.route)


def build_executor(cfg: GatewayConfig, engine: PhotoEngine | None) -> PixelExecutor:
    """The configured executor. `engine` is the flowedit step's (executor local)."""
    if cfg.executor.kind == "local":
        if engine is None:
            raise ConfigError("executor local: the flowedit step has no engine")
        return LocalExecutor(engine, cfg.executor.batch_size)
    from gateway.workerpool import CeleryExecutor

    return CeleryExecutor(cfg.executor, default_result_queue(cfg))


def default_result_queue(cfg: GatewayConfig) -> str:
    """This gateway's results queue: configured, or named after the site and the node's AE title
    (gateways sharing a broker need distinct ones)."""
    if cfg.executor.result_queue:
        return cfg.executor.result_queue
    parts = ["deidgw.results", cfg.site.id or "", cfg.node.ae_title]
    return ".".join(p for p in parts if p)
