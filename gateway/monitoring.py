"""Wiring of the observers into a running gateway: metrics, event logs and the HTTP endpoint.

The node (`deid-gateway serve`) calls `Monitoring.start(...)` once at start-up with its event bus,
its configured route and destination names, its backlog probe and its readiness checks, beats the
returned `liveness` from its main loops, and calls `stop()` at shutdown. Everything here observes;
nothing here can stop or slow the data path.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, disable_created_metrics

from deid_core.errors import ConfigError
from gateway.config import MetricsConfig
from gateway.events import BacklogProbe, EventBus
from gateway.http import Liveness, MonitoringServer, ReadinessCheck
from gateway.labels import Vocabulary
from gateway.logs import EventLog
from gateway.metrics import DEFAULT_FINISHED_JOURNAL_STATES, GatewayMetrics, WorkerPoolProbe


@dataclass
class Monitoring:
    registry: CollectorRegistry
    metrics: GatewayMetrics
    liveness: Liveness
    #: None when `metrics.enabled` is false in the configuration.
    server: MonitoringServer | None

    @classmethod
    def start(
        cls,
        config: MetricsConfig,
        bus: EventBus,
        routes: Sequence[str],
        destinations: Sequence[str],
        *,
        backlog: BacklogProbe | None = None,
        workers: WorkerPoolProbe | None = None,
        checks: Mapping[str, ReadinessCheck] | None = None,
        disk_min_free_bytes: int | None = None,
        journal_states: Sequence[str] = (),
        finished_journal_states: Collection[str] = DEFAULT_FINISHED_JOURNAL_STATES,
        key_fingerprint: str | None = None,
        site: str | None = None,
        log_events: bool = True,
    ) -> Monitoring:
        """Subscribe the metrics (and, by default, the event log) to ``bus`` and serve them."""
        # prometheus-client would export a `_created` timestamp series beside every counter and
        # histogram child, a third more series that no dashboard or alert reads. This is
        # process-wide, which is why it is done here, where the process is wired, and not in
        # GatewayMetrics.
        disable_created_metrics()
        registry = CollectorRegistry()
        metrics = GatewayMetrics(
            registry,
            routes,
            destinations,
            backlog=backlog,
            workers=workers,
            disk_min_free_bytes=disk_min_free_bytes,
            journal_states=journal_states,
            finished_journal_states=finished_journal_states,
            key_fingerprint=key_fingerprint,
            site=site,
        ).subscribe_to(bus)
        if log_events:
            bus.subscribe(EventLog(Vocabulary(routes, destinations)))
        liveness = Liveness()
        server = None
        if config.enabled:
            try:
                server = MonitoringServer(
                    registry, config.address, config.port, liveness=liveness, checks=checks
                ).start()
            except OSError as exc:
                raise ConfigError(
                    f"metrics: cannot listen on {config.address}:{config.port}: "
                    f"{exc.strerror or exc} (another gateway on this port? set metrics.port)"
                ) from None
        return cls(registry, metrics, liveness, server)

    def add_check(self, name: str, check: ReadinessCheck) -> None:
        """Add (or replace) a readiness check; a no-op when the endpoint is disabled."""
        if self.server is not None:
            self.server.add_check(name, check)

    def stop(self) -> None:
        """Stop serving; safe to call twice."""
        if self.server is not None:
            self.server.stop()
