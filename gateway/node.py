"""The gateway node: start-up (with recovery), the worker threads, and graceful shutdown.

Start-up order: storage and journal, recovery of whatever a crash left (partial spool files,
spooled files without a row, outbox copies and quarantine folders without a row), the pipeline (a
bad profile or pixel step stops the start here), the forwarders, the assembler — and only then the
DICOM listener, so nothing is accepted before everything downstream is ready. Monitoring (metrics,
event log, `/metrics` `/healthz` `/readyz`) starts right after storage opens, so an orchestrator's
startup probe gets answers while recovery runs and a model loads, and `/readyz` says "not ready"
until the listener accepts.

Shutdown (SIGTERM/SIGINT) in stages: stop accepting associations, let open associations finish
(up to the drain timeout, then abort them: an instance without success status stays with its
sender), let the assembler finish the study in hand and the forwarders the batch in flight, then
checkpoint and close the journal. `shutdown()` is safe to call twice and from several threads.
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

from deid_core.errors import ConfigError
from deid_core.keys import ProjectKey
from dicom_io.dicomweb import reachable as stow_reachable
from dicom_io.scp import AccessPolicy, StorageSCP, caller_rules
from dicom_io.tls import server_context
from gateway.config import DestinationConfig, GatewayConfig
from gateway.events import Backlog, EventBus
from gateway.executors import PixelExecutor
from gateway.forwarder import (
    DestinationWorker,
    DimseTransport,
    Forwarder,
    StowTransport,
    Transport,
    transport_for,
)
from gateway.http import ReadinessCheck
from gateway.ingest import Ingest, adopt_orphans
from gateway.interlock import route_pixel_steps
from gateway.journal import InstanceState, Journal
from gateway.logs import get_logger
from gateway.metrics import WorkerPoolProbe
from gateway.monitoring import Monitoring
from gateway.outbox import Outbox
from gateway.pipeline import DeidentifierFactory, Pipeline
from gateway.pixels import MODEL_FREE_STEPS
from gateway.quarantine import Quarantine
from gateway.readiness import (
    DestinationProbe,
    identifiers,
    journal_writable,
    listener_accepting,
    spool_writable,
)
from gateway.routing import Router
from gateway.spool import DirectorySync, Spool

if TYPE_CHECKING:
    from gateway.review.station import ReviewStation
    from gateway.stow import StowEndpoint

LOG = get_logger("gateway.node")

#: Journal states whose instances wait for nothing more (not backlog).
FINISHED_STATES = frozenset(
    {InstanceState.FORWARDED.value, InstanceState.QUARANTINED.value, InstanceState.LOST.value}
)
#: Longest silence of the DICOM accept loop (it beats about every half second) before /healthz
#: calls the process stuck.
LISTENER_MAX_SILENCE_S = 30.0
#: ... of the assembler, which beats after every instance: one instance's metadata
#: de-identification takes milliseconds, one photograph's edit on a slow GPU minutes.
ASSEMBLER_MAX_SILENCE_S = 120.0
ASSEMBLER_WITH_MODEL_MAX_SILENCE_S = 900.0


@dataclass(frozen=True)
class Storage:
    """The node's durable state, also opened by the quarantine commands."""

    journal: Journal
    spool: Spool
    outbox: Outbox
    quarantine: Quarantine

    @classmethod
    def open(cls, cfg: GatewayConfig) -> Storage:
        s = cfg.storage
        dirsync = DirectorySync()
        journal = Journal(s.journal)
        spool = Spool(
            s.spool_dir,
            high_water_percent=s.high_water_percent,
            min_free_bytes=s.min_free_bytes,
            dirsync=dirsync,
        )
        return cls(
            journal=journal,
            spool=spool,
            outbox=Outbox(s.outbox_dir, dirsync),
            quarantine=Quarantine(
                s.quarantine_dir, journal, dirsync, route_pixels=route_pixel_steps(cfg)
            ),
        )

    def close(self) -> None:
        self.journal.close()


class BacklogReader:
    """`BacklogProbe` for the metrics collector: queued work right now."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def backlog(self) -> Backlog:
        st = self.storage
        return Backlog(
            journal_states=st.journal.state_counts(),
            outbox_per_destination=st.journal.outbox_counts(),
            spool_bytes=st.spool.used_bytes(),
            disk_free_bytes=st.spool.free_bytes(),
        )


def access_policy(cfg: GatewayConfig) -> AccessPolicy:
    n = cfg.node
    if not n.allowed_callers and not n.allow_any_caller:
        raise ConfigError(
            "node.allowed_callers: no caller could ever associate; list the modalities and PACS "
            "that send (ae_title, host) or set node.allow_any_caller on a closed test network"
        )
    return AccessPolicy(
        ae_title=n.ae_title,
        callers=caller_rules([(c.ae_title, c.host) for c in n.allowed_callers]),
        allow_any_caller=n.allow_any_caller,
        check_called_ae=n.check_called_ae,
        max_associations=n.max_associations,
    )


class GatewayNode:
    def __init__(
        self,
        cfg: GatewayConfig,
        key: ProjectKey,
        events: EventBus | None = None,
        *,
        deidentifier_factory: DeidentifierFactory | None = None,
        drain_timeout: float = 30.0,
        monitor: bool = True,
        listen: bool = True,
        pixel_executor: PixelExecutor | None = None,
    ) -> None:
        """``monitor=False`` leaves out metrics, the event log and the monitoring endpoint (for
        code that embeds a node and brings its own observers, such as the demo).
        ``listen=False`` leaves out the DICOM listener and the STOW-RS endpoint: instances come
        in through `ingest` only (the Orthanc plugin hands them over in process).
        `pixel_executor` replaces the configured executor of photograph routes (tests)."""
        self.cfg = cfg
        self.key = key
        self.events = events or EventBus()
        self.drain_timeout = drain_timeout
        self._deidentifier_factory = deidentifier_factory
        self._pixel_executor = pixel_executor
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._stop_assembler = threading.Event()
        self._assembler: threading.Thread | None = None
        self.storage: Storage | None = None
        self.scp: StorageSCP | None = None
        self.forwarder: Forwarder | None = None
        self.pipeline: Pipeline | None = None
        self.address: tuple[str, int] | None = None
        self.review: ReviewStation | None = None
        self.stow: StowEndpoint | None = None
        #: Where received instances go (spool, journal, events): the listener's sink, also for
        #: instances that arrive by other ways (STOW-RS, C-GET, the Orthanc plugin).
        self.ingest: Ingest | None = None
        self._monitor = monitor
        self._listen = listen
        self.monitoring: Monitoring | None = None
        self._extra_checks: dict[str, ReadinessCheck] = {}

    # --- start ---------------------------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        cfg = self.cfg
        # the listener's settings are checked first: a bad one stops the start before anything
        policy = access_policy(cfg) if self._listen else None
        ssl_ctx = None
        if cfg.node.tls is not None and self._listen:
            t = cfg.node.tls
            ssl_ctx = server_context(
                t.cert_file, t.key_file, t.client_ca_file, t.require_client_cert
            )
        transports = {name: transport_for(name, cfg) for name in cfg.destinations}
        storage = Storage.open(cfg)
        self.storage = storage
        if self._monitor:
            self._start_monitoring(storage, transports)
        self._recover(storage)
        self.pipeline = Pipeline(
            cfg,
            self.key,
            storage.journal,
            storage.spool,
            storage.outbox,
            storage.quarantine,
            self.events,
            self._deidentifier_factory,
            self._pixel_executor,
        )
        for step in self.pipeline.pixel_steps.values():
            offered = getattr(step, "readiness_checks", None)
            if callable(offered):
                for name, check in offered().items():
                    self.add_readiness_check(name, check)
        rng = random.Random()
        loops = identifiers("forwarder", cfg.destinations)
        workers = {}
        for name, dest in cfg.destinations.items():
            # the longest a batch may take: connect, then wait for the archive's answers
            answer_s = (
                dest.dimse_timeout_s if isinstance(dest, DestinationConfig) else dest.timeout_s
            )
            self._register_loop(loops[name], 2 * dest.connect_timeout_s + 2 * answer_s + 30.0)
            workers[name] = DestinationWorker(
                name,
                dest,
                transports[name],
                storage.journal,
                storage.outbox,
                storage.spool,
                storage.quarantine,
                self.events,
                rng,
                heartbeat=self._beater(loops[name]),
            )
        self.forwarder = Forwarder(workers)
        self.forwarder.start()
        self.pipeline.on_queued = self.forwarder.wake
        self.pipeline.start()
        self._register_loop(
            "assembler",
            ASSEMBLER_WITH_MODEL_MAX_SILENCE_S if self._uses_model() else ASSEMBLER_MAX_SILENCE_S,
        )
        self._assembler = threading.Thread(target=self._assemble, name="assembler", daemon=True)
        self._assembler.start()
        if cfg.review.enabled:
            from gateway.review.station import ReviewStation

            self.review = ReviewStation(cfg, storage, on_decision=self.forwarder.wake)
            self.review.start()
        self.ingest = Ingest(
            storage.spool,
            storage.journal,
            self.key,
            self.events,
            max_instance_bytes=cfg.storage.max_instance_bytes,
        )
        if not self._listen:
            LOG.info(
                "gateway_started",
                listener=False,
                destinations=sorted(cfg.destinations),
                routes=[r.name for r in cfg.routes],
                key_fingerprint=self.key.fingerprint(),
            )
            return ("", 0)
        assert policy is not None
        self._register_loop("dicom_listener", LISTENER_MAX_SILENCE_S)
        self.scp = StorageSCP(
            policy=policy,
            sink=self.ingest,
            host=cfg.node.host,
            port=cfg.node.port,
            max_pdu_size=cfg.node.max_pdu_size,
            network_timeout=cfg.node.network_timeout_s,
            ssl_context=ssl_ctx,
            heartbeat=self._beater("dicom_listener"),
        )
        self.address = self.scp.start()
        if cfg.dicomweb_in.enabled:
            from gateway.stow import StowEndpoint

            self.stow = StowEndpoint(cfg.dicomweb_in, cfg.node.ae_title, self.ingest, storage.spool)
            self.stow.start()
            stow = self.stow
            self.add_readiness_check("stow_endpoint", lambda: stow.serving)
        LOG.info(
            "gateway_listening",
            ae_title=cfg.node.ae_title,
            host=self.address[0],
            port=self.address[1],
            tls=ssl_ctx is not None,
            destinations=sorted(cfg.destinations),
            routes=[r.name for r in cfg.routes],
            key_fingerprint=self.key.fingerprint(),
        )
        return self.address

    def _start_monitoring(self, storage: Storage, transports: dict[str, Transport]) -> None:
        cfg = self.cfg
        routes = [r.name for r in Router.from_config(cfg).all_routes()]
        checks: dict[str, ReadinessCheck] = {
            "journal_writable": journal_writable(storage.journal),
            "spool_writable": spool_writable(storage.spool),
        }
        if self._listen:
            checks["dicom_listener"] = listener_accepting(lambda: self.scp)
        if self._uses_model():
            # Placeholder until the step says more (its own `model_loaded`, if it offers one):
            # building the pipeline builds the step, which loads its model.
            checks["model_loaded"] = lambda: self.pipeline is not None
        checks.update(self._extra_checks)
        monitoring = Monitoring.start(
            cfg.metrics,
            self.events,
            routes,
            list(cfg.destinations),
            backlog=BacklogReader(storage),
            checks=checks,
            disk_min_free_bytes=storage.spool.refusal_free_bytes(),
            journal_states=[s.value for s in InstanceState],
            finished_journal_states=FINISHED_STATES,
            key_fingerprint=self.key.fingerprint(),
            site=cfg.site.id,
            workers=_WorkerPoolOf(self) if self._uses_worker_pool() else None,
        )
        self.monitoring = monitoring
        for name, check_name in identifiers("destination", cfg.destinations).items():
            transport = transports[name]
            if isinstance(transport, StowTransport):
                probe = DestinationProbe(
                    name,
                    transport.target,
                    on_result=monitoring.metrics.set_destination_up,
                    echo_fn=stow_reachable,
                )
            elif isinstance(transport, DimseTransport):
                probe = DestinationProbe(
                    name, transport.target, on_result=monitoring.metrics.set_destination_up
                )
            else:  # a transport of its own brings no probe
                continue
            monitoring.add_check(check_name, probe)

    def _uses_worker_pool(self) -> bool:
        return self.cfg.executor.kind == "celery" and any(
            r.pixels == "flowedit" for r in Router.from_config(self.cfg).all_routes()
        )

    def _uses_model(self) -> bool:
        return any(
            r.pixels not in MODEL_FREE_STEPS for r in Router.from_config(self.cfg).all_routes()
        )

    def add_readiness_check(self, name: str, check: ReadinessCheck) -> None:
        """Make `/readyz` also ask `check` (True/None: ready; False or raising: not ready), or
        replace the check of that name. Before `start()` or while running; e.g. a pixel step's
        `model_loaded`, a remote executor's broker connection."""
        self._extra_checks[name] = check
        if self.monitoring is not None:
            self.monitoring.add_check(name, check)

    def _register_loop(self, loop: str, max_silence_s: float) -> None:
        if self.monitoring is not None:
            self.monitoring.liveness.register(loop, max_silence_s)

    def _beater(self, loop: str) -> Callable[[], None]:
        """The heartbeat of one loop for `/healthz`; a no-op without monitoring or once the loop
        was unregistered at shutdown."""
        monitoring = self.monitoring
        if monitoring is None:
            return lambda: None
        liveness = monitoring.liveness

        def beat() -> None:
            with contextlib.suppress(KeyError):
                liveness.beat(loop)

        return beat

    def _unregister_loop(self, loop: str) -> None:
        if self.monitoring is not None:
            self.monitoring.liveness.unregister(loop)

    def _recover(self, storage: Storage) -> None:
        started = time.time()
        partial = storage.spool.remove_partial_files()
        adopted = adopt_orphans(storage.spool, storage.journal, self.key)
        # originals of finished instances whose deletion a crash cut off (after the commit)
        leftovers = storage.spool.remove_finished(storage.journal.finished_spool_paths())
        outbox_orphans = storage.outbox.remove_orphans(
            storage.journal.live_outbox_paths, older_than=started
        )
        quarantine_orphans = storage.quarantine.remove_orphans()
        releases_interrupted = storage.quarantine.recover_interrupted_releases()
        states = storage.journal.state_counts()
        LOG.info(
            "recovered",
            partial_files_removed=partial,
            spool_files_adopted=adopted,
            spool_leftovers_removed=leftovers,
            outbox_orphans_removed=outbox_orphans,
            quarantine_orphans_removed=quarantine_orphans,
            quarantine_releases_interrupted=releases_interrupted,
            waiting=states.get("received", 0),
            queued=states.get("queued", 0),
        )

    def _assemble(self) -> None:
        assert self.pipeline is not None
        interval = min(0.5, max(0.05, self.cfg.storage.study_stable_seconds / 4))
        beat = self._beater("assembler")
        while not self._stop_assembler.is_set():
            beat()
            try:
                handled = self.pipeline.process_ready(stop=self._stop_assembler, progress=beat)
            except Exception:
                LOG.exception("assembler_error")
                handled = 0
            if handled and self.forwarder is not None:
                self.forwarder.wake()
            if not handled:
                self._stop_assembler.wait(interval)

    # --- observe -------------------------------------------------------------------------------

    def backlog(self) -> Backlog:
        assert self.storage is not None
        return BacklogReader(self.storage).backlog()

    @property
    def workers(self) -> WorkerPoolProbe | None:
        """The remote worker pool's heartbeats (executor celery), for the metrics."""
        executor = self.pipeline.executor if self.pipeline is not None else None
        return executor.probe if executor is not None else None

    # --- stop ----------------------------------------------------------------------------------

    def shutdown(self) -> None:
        with self._stop_lock:
            if self._stopped.is_set():
                return
            started = time.monotonic()
            LOG.info("shutdown_started")
            if self.scp is not None:
                self.scp.stop_accepting()
                self._unregister_loop("dicom_listener")
            if self.stow is not None:
                self.stow.stop(self.drain_timeout)  # requests in flight finish first
            if self.scp is not None and not self.scp.wait_idle(self.drain_timeout):
                LOG.warning("shutdown_aborting_associations")
                self.scp.abort_all()
                self.scp.wait_idle(5.0)
            if self.review is not None:
                self.review.stop()
            self._stop_assembler.set()
            if self._assembler is not None:
                self._assembler.join(self.drain_timeout)
                self._unregister_loop("assembler")
            if self.pipeline is not None:
                # a batch in hand finishes; jobs not done stay journaled for the next start
                self.pipeline.stop(self.drain_timeout)
            if self.forwarder is not None:
                self.forwarder.stop(self.drain_timeout)
                for loop in identifiers("forwarder", self.cfg.destinations).values():
                    self._unregister_loop(loop)
            if self.monitoring is not None:
                self.monitoring.stop()
            if self.storage is not None:
                self.storage.close()
            self._stopped.set()
            LOG.info("shutdown_complete", seconds=round(time.monotonic() - started, 3))

    def serve_forever(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Run until a signal arrives, then shut down gracefully."""
        stop = threading.Event()

        def _on_signal(signum: int, frame: FrameType | None) -> None:
            LOG.info("signal_received", signal=signal.Signals(signum).name)
            stop.set()

        for sig in signals:
            signal.signal(sig, _on_signal)
        while not stop.wait(0.5):
            pass
        self.shutdown()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()


class _WorkerPoolOf:
    """The node's worker pool probe for the metrics, which start before the pipeline (and with it
    the executor) exists: no workers until then."""

    def __init__(self, node: GatewayNode) -> None:
        self.node = node

    def workers_alive(self) -> int:
        probe = self.node.workers
        return probe.workers_alive() if probe is not None else 0

    def last_heartbeat(self) -> float | None:
        probe = self.node.workers
        return probe.last_heartbeat() if probe is not None else None
