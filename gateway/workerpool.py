"""The GPU worker pool over RabbitMQ: Celery for the jobs, plain AMQP for results and heartbeats.

Gateway side (`CeleryExecutor`): each pixel job is published as a Celery task message
(MessagePack, no pickle; the broker confirms each publish) to the jobs queue every worker consumes.
Results do not use a Celery result backend: each worker publishes the result as a persistent
MessagePack message to the result queue named in the job (`reply_to`, one durable queue per
gateway), and the gateway's listener acknowledges it only after the pipeline has finished the
instance (outbox or quarantine, journaled). Results therefore survive a broker restart and a
gateway restart alike, and several gateways can share one broker and one pool.

Worker side (`deid-gateway worker --config FILE`, `run_worker`): loads the route models once
(PhotoEngine), then runs a Celery worker with one worker thread (one process, one model, one job
at a time), late acknowledgement and prefetch one: a worker that dies mid-job (even SIGKILL) never
acknowledged its message, so RabbitMQ gives the job to another worker. A job whose result cannot
be published (broker away for longer than the publish retries) is rejected back to the queue.
A side thread announces the worker on a fanout exchange every `heartbeat_interval_s`, from its own
connection, so a worker busy with a long job still counts as alive.

Failure answers: broker down at submission -> `RetryableError` (the pipeline retries after
`retry_delay_s`, the gateway keeps accepting into its spool); no result within `result_timeout_s`
-> the pipeline submits again (same job id and seed: a late duplicate result is ignored); a job
the worker cannot decode -> dropped with a log line (the gateway's timeout re-submits, and after
`max_attempts` quarantines the photograph).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from deid_core.errors import InvalidInputError, RetryableError
from gateway.config import CeleryExecutorConfig, GatewayConfig
from gateway.logs import get_logger
from gateway.pixel_jobs import (
    SERIALIZER,
    PixelJob,
    PixelResult,
    job_from_wire,
    job_to_wire,
    result_from_wire,
    result_to_wire,
)

if TYPE_CHECKING:
    from celery import Celery
    from kombu import Connection, Message

    from gateway.photo import PhotoEngine

LOG = get_logger("gateway.workerpool")

#: The Celery task name of a pixel job.
TASK_NAME = "deidgw.pixel_job"


def heartbeat_exchange_name(queue: str) -> str:
    """Workers of one jobs queue announce themselves here (a fanout exchange)."""
    return f"{queue}.heartbeats"


def celery_app(settings: CeleryExecutorConfig, broker_url: str) -> Celery:
    """A Celery app for the jobs queue: MessagePack only (pixels as bytes, no pickle), late
    acknowledgement, prefetch one, requeue when a worker is lost, broker confirms for every
    publish, no result backend."""
    from celery import Celery

    app = Celery("deidgw", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer=SERIALIZER,
        accept_content=[SERIALIZER],
        result_accept_content=[SERIALIZER],
        event_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_connection_timeout=4.0,
        broker_transport_options={"confirm_publish": True},
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app


def _safe_url(url: str) -> str:
    from kombu import Connection

    return str(Connection(url).as_uri())  # password masked


# --- the gateway side ----------------------------------------------------------------------------


class WorkerHeartbeats:
    """`WorkerPoolProbe` for the metrics: workers heard from within three heartbeat intervals."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def beat(self, worker: str, at: float | None = None) -> None:
        with self._lock:
            self._seen[worker] = time.time() if at is None else at

    def workers_alive(self) -> int:
        horizon = time.time() - 3 * self.interval_s
        with self._lock:
            return sum(1 for t in self._seen.values() if t >= horizon)

    def last_heartbeat(self) -> float | None:
        with self._lock:
            return max(self._seen.values(), default=None)

    def workers(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seen)


class CeleryExecutor:
    """Jobs to the worker pool; results and heartbeats back on a listener thread."""

    lost_on_restart = False

    def __init__(self, settings: CeleryExecutorConfig, result_queue: str) -> None:
        self.settings = settings
        self.result_queue = result_queue
        self.broker_url = settings.url()
        self.result_timeout_s = settings.result_timeout_s
        self.max_attempts = settings.max_attempts
        self.retry_delay_s = settings.retry_delay_s
        self.heartbeats = WorkerHeartbeats(settings.heartbeat_interval_s)
        self._app = celery_app(settings, self.broker_url)
        self._down_until = 0.0
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._on_result: Callable[[PixelResult], None] | None = None
        self.connected = threading.Event()

    @property
    def probe(self) -> WorkerHeartbeats:
        return self.heartbeats

    def start(self, on_result: Callable[[PixelResult], None]) -> None:
        self._on_result = on_result
        self._listener = threading.Thread(target=self._listen, name="pixel-results", daemon=True)
        self._listener.start()
        LOG.info(
            "worker_pool_executor_started",
            broker=_safe_url(self.broker_url),
            queue=self.settings.queue,
            result_queue=self.result_queue,
        )

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout)
        with contextlib.suppress(Exception):
            self._app.close()

    def submit(self, job: PixelJob) -> None:
        """Publish the job (broker-confirmed). RetryableError when the broker is away; after a
        refusal, further submissions fail at once until `retry_delay_s` has passed."""
        if time.monotonic() < self._down_until:
            raise RetryableError("the broker was unreachable moments ago")
        body = job_to_wire(replace(job, reply_to=self.result_queue))
        try:
            self._app.send_task(
                TASK_NAME,
                args=[body],
                queue=self.settings.queue,
                serializer=SERIALIZER,
                retry=True,
                retry_policy={
                    "max_retries": 1,
                    "interval_start": 0.2,
                    "interval_step": 0.5,
                    "interval_max": 0.5,
                },
            )
        except Exception as exc:  # kombu raises OperationalError, socket and AMQP errors
            self._down_until = time.monotonic() + self.retry_delay_s
            raise RetryableError(f"broker unavailable ({type(exc).__name__})") from None

    # --- results and heartbeats ------------------------------------------------------------------

    def _listen(self) -> None:
        from kombu import Connection

        delay = 0.5
        while not self._stop.is_set():
            try:
                with Connection(self.broker_url, connect_timeout=4, heartbeat=30) as conn:
                    conn.ensure_connection(max_retries=1)
                    self._consume(conn)
                delay = 0.5
            except Exception as exc:  # connection lost or refused: reconnect with backoff
                if self.connected.is_set():
                    LOG.warning("result_listener_disconnected", error=type(exc).__name__)
                self.connected.clear()
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def _consume(self, conn: Connection) -> None:
        from kombu import Consumer, Exchange, Queue

        results = Queue(self.result_queue, durable=True, auto_delete=False)
        beats = Queue(
            f"{heartbeat_exchange_name(self.settings.queue)}.{self.result_queue}.{os.getpid()}",
            exchange=Exchange(
                heartbeat_exchange_name(self.settings.queue), type="fanout", durable=False
            ),
            durable=False,
            exclusive=True,
            auto_delete=True,
        )
        with (
            Consumer(
                conn.channel(),
                queues=[results],
                callbacks=[self._on_result_message],
                accept=[SERIALIZER],
                prefetch_count=8,
            ),
            Consumer(
                conn.channel(),
                queues=[beats],
                callbacks=[self._on_heartbeat],
                accept=["json"],
                no_ack=True,
            ),
        ):
            self.connected.set()
            LOG.info("result_listener_connected", result_queue=self.result_queue)
            while not self._stop.is_set():
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    conn.heartbeat_check()

    def _on_result_message(self, body: Any, message: Message) -> None:
        try:
            result = result_from_wire(body)
        except InvalidInputError as exc:
            LOG.error("pixel_result_malformed", error=str(exc))
            message.reject(requeue=False)
            return
        try:
            assert self._on_result is not None
            self._on_result(result)
        except Exception:
            # The job stays open in the journal and is submitted again after the timeout.
            LOG.exception("pixel_result_not_handled", route=result.route)
            message.reject(requeue=False)
            return
        message.ack()

    def _on_heartbeat(self, body: Any, message: Message) -> None:
        if isinstance(body, dict) and isinstance(body.get("worker"), str):
            self.heartbeats.beat(body["worker"][:255])


# --- the worker side -----------------------------------------------------------------------------


class Heartbeat:
    """Announces this worker on the heartbeat exchange from its own thread and connection."""

    def __init__(self, broker_url: str, queue: str, worker: str, interval_s: float) -> None:
        self.broker_url = broker_url
        self.exchange = heartbeat_exchange_name(queue)
        self.worker = worker
        self.interval_s = interval_s
        self.jobs_done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        from kombu import Connection, Exchange, Producer

        exchange = Exchange(self.exchange, type="fanout", durable=False)
        while not self._stop.is_set():
            try:
                with Connection(self.broker_url, connect_timeout=4) as conn:
                    producer = Producer(conn.channel(), exchange=exchange, serializer="json")
                    exchange(producer.channel).declare()
                    while not self._stop.is_set():
                        producer.publish(
                            {"worker": self.worker, "at": time.time(), "jobs": self.jobs_done},
                            delivery_mode=1,
                            expiration=3 * self.interval_s,
                        )
                        self._stop.wait(self.interval_s)
            except Exception as exc:
                LOG.warning("heartbeat_failed", error=type(exc).__name__)
                self._stop.wait(min(self.interval_s, 2.0))


def register_pixel_task(
    app: Celery, engine: PhotoEngine, heartbeat: Heartbeat | None = None
) -> None:
    """The task a worker runs: decode the job, edit and gate, publish the result to the
    submitting gateway's queue (persistent, broker-confirmed)."""
    from celery.exceptions import Reject
    from kombu import Queue

    @app.task(name=TASK_NAME, ignore_result=True, acks_late=True, reject_on_worker_lost=True)
    def pixel_job(payload: Any) -> None:
        try:
            job = job_from_wire(payload)
        except InvalidInputError as exc:
            LOG.error("pixel_job_malformed", error=str(exc))
            return  # acknowledged: a malformed message cannot get better
        if not job.reply_to:
            LOG.error("pixel_job_without_reply_queue", route=job.route)
            return
        started = time.perf_counter()
        [result] = engine.run([job])
        body = result_to_wire(result)
        try:
            with app.producer_or_acquire() as producer:
                producer.publish(
                    body,
                    exchange="",
                    routing_key=job.reply_to,
                    serializer=SERIALIZER,
                    delivery_mode=2,
                    declare=[Queue(job.reply_to, durable=True, auto_delete=False)],
                    retry=True,
                    retry_policy={
                        "max_retries": 20,
                        "interval_start": 0.5,
                        "interval_step": 0.5,
                        "interval_max": 3.0,
                    },
                )
        except Exception as exc:
            LOG.warning("pixel_result_not_published", route=job.route, error=type(exc).__name__)
            raise Reject(requeue=True) from None
        if heartbeat is not None:
            heartbeat.jobs_done += 1
        LOG.info(
            "pixel_job_done",
            route=job.route,
            status=result.status,
            outcome=result.reason,
            attempt=job.attempt,
            frames=int(job.frames.shape[0]),
            seconds=round(time.perf_counter() - started, 3),
        )


def worker_identity(name: str | None = None) -> str:
    return name or f"deidgw-worker@{socket.gethostname()}:{os.getpid()}"


def run_worker(
    cfg: GatewayConfig,
    *,
    name: str | None = None,
    threads: int | None = None,
    loglevel: str = "WARNING",
) -> None:
    """Load the models of every flowedit route once, then take pixel jobs until SIGTERM (warm
    shutdown: the job in hand finishes) or SIGKILL (its job goes back to the queue)."""
    from gateway.photo import PhotoEngine, flowedit_routes

    if not flowedit_routes(cfg):
        from deid_core.errors import ConfigError

        raise ConfigError("routes: no route has pixels: flowedit; a worker would have no work")
    engine = PhotoEngine.from_config(cfg, threads=threads)
    serve_jobs(cfg, engine, name=name, loglevel=loglevel)


def serve_jobs(
    cfg: GatewayConfig, engine: PhotoEngine, *, name: str | None = None, loglevel: str = "WARNING"
) -> None:
    """Run `engine` as a worker of the pool configured in `cfg.executor` until shutdown."""
    settings = cfg.executor
    url = settings.url()
    identity = worker_identity(name)
    app = celery_app(settings, url)
    heartbeat = Heartbeat(url, settings.queue, identity, settings.heartbeat_interval_s)
    register_pixel_task(app, engine, heartbeat)
    heartbeat.start()
    LOG.info(
        "worker_started",
        worker=identity,
        broker=_safe_url(url),
        queue=settings.queue,
        routes=sorted(engine.routes),
        test_model=engine.is_test_model,
    )
    try:
        worker = app.Worker(
            hostname=identity,
            # One job at a time on one worker thread: the model is loaded once in this process. Not
            # the solo pool: it runs the task inside the event loop, which then misses deliveries
            # already buffered (seen: 10 s stalls between jobs with prefetch one) and sends no
            # broker heartbeats during a long job.
            pool="threads",
            concurrency=1,
            queues=[settings.queue],
            loglevel=loglevel,
            without_gossip=True,
            without_mingle=True,
            without_heartbeat=True,
            optimization="fair",
        )
        worker.start()
    finally:
        heartbeat.stop()
