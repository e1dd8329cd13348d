"""The forwarder: sends each destination's outbox, one association per study batch.

One worker per destination. It takes the due copies of one study (up to `batch_size`), sends them
over one association, and moves each journal row: sent (the copy is deleted), or rescheduled with
exponential backoff and jitter, or — after `max_attempts` — dead-lettered to quarantine. When the
association itself fails (archive down, refusing, TLS), the whole destination waits until the
batch's next attempt so an outage costs one failed connection per backoff step, not one per study.

Delivery is at-least-once: a copy sent just before a crash is sent again after restart; the
archive receives identical UIDs (keyed pseudonyms) and keeps one instance.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from deid_core.errors import InvalidInputError
from dicom_io.scu import AssociationFailed, StoreTarget, is_stored, send_files
from dicom_io.tls import client_context
from gateway.config import DestinationConfig, GatewayConfig, RetryPolicy
from gateway.events import (
    EventBus,
    ForwardFailed,
    InstanceForwarded,
    InstanceQuarantined,
    QuarantineReason,
    Stage,
    StageCompleted,
)
from gateway.journal import Journal, OutboxRow
from gateway.logs import get_logger
from gateway.outbox import Outbox
from gateway.quarantine import Quarantine
from gateway.spool import Spool

LOG = get_logger("gateway.forwarder")

Sender = Callable[[StoreTarget, Sequence[str]], list[int | None]]
#: A liveness heartbeat: called on every turn of a worker's loop and after every file sent.
Heartbeat = Callable[[], None]


def backoff_delay(policy: RetryPolicy, attempts: int, rng: random.Random) -> float:
    """Delay before attempt number `attempts + 1` (attempts >= 1 already failed)."""
    base = policy.initial_delay_s * policy.multiplier ** max(attempts - 1, 0)
    base = min(base, policy.max_delay_s)
    factor = 1.0 + rng.uniform(-policy.jitter, policy.jitter)
    return max(0.0, base * factor)


def store_target(name: str, dest: DestinationConfig, cfg: GatewayConfig) -> StoreTarget:
    ctx = None
    if dest.tls is not None:
        ctx = client_context(
            dest.tls.ca_file,
            dest.tls.cert_file,
            dest.tls.key_file,
            dest.tls.check_hostname,
            where=f"destinations.{name}.tls",
        )
    return StoreTarget(
        ae_title=dest.ae_title,
        host=dest.host,
        port=dest.port,
        calling_ae_title=dest.calling_ae_title or cfg.node.ae_title,
        ssl_context=ctx,
        connect_timeout=dest.connect_timeout_s,
        dimse_timeout=dest.dimse_timeout_s,
    )


@dataclass
class _Batch:
    rows: list[OutboxRow]


class DestinationWorker:
    """Delivers one destination's outbox until stopped."""

    def __init__(
        self,
        name: str,
        dest: DestinationConfig,
        target: StoreTarget,
        journal: Journal,
        outbox: Outbox,
        spool: Spool,
        quarantine: Quarantine,
        events: EventBus,
        rng: random.Random | None = None,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self.name = name
        self.dest = dest
        self.target = target
        self.journal = journal
        self.outbox = outbox
        self.spool = spool
        self.quarantine = quarantine
        self.events = events
        self.rng = rng or random.Random()
        self.heartbeat: Heartbeat = heartbeat or (lambda: None)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._paused_until = 0.0

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"forwarder-{self.name}", daemon=True
        )
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in flight, then stop. Safe to call twice."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.heartbeat()
            try:
                sent = self.run_once()
            except Exception:
                LOG.exception("forwarder_error", destination=self.name)
                sent = False
            if not sent:
                self._wait()

    def _wait(self) -> None:
        now = time.time()
        due = self.journal.next_due_at(self.name)
        wait = 1.0
        if due is not None:
            wait = min(wait, max(due, self._paused_until) - now)
        self._wake.wait(max(0.02, wait))
        self._wake.clear()

    def run_once(self) -> bool:
        """Send one batch if one is due; True when something was attempted."""
        now = time.time()
        if now < self._paused_until:
            return False
        rows = self.journal.next_batch(self.name, now, self.dest.batch_size)
        if not rows:
            return False
        paths = [str(self.outbox.path(r.path)) for r in rows]
        started = time.perf_counter()
        try:
            statuses = send_files(
                self.target, [self.outbox.path(r.path) for r in rows], self.heartbeat
            )
        except AssociationFailed as exc:
            self._failed(rows, exc.kind, str(exc))
            return True
        except InvalidInputError as exc:
            LOG.error("outbox_file_unreadable", destination=self.name, error=str(exc))
            self._failed(rows, "status", str(exc), permanent=True)
            return True
        del paths
        seconds = (time.perf_counter() - started) / max(len(rows), 1)
        sent_rows = []
        for row, status in zip(rows, statuses, strict=True):
            if status is not None and is_stored(status):
                sent_rows.append(row)
            elif status is None:
                self._failed([row], "aborted", "association lost before an answer")
            else:
                self._failed([row], "status", f"archive answered status 0x{status:04X}")
        if sent_rows:
            self.journal.mark_sent([r.id for r in sent_rows])
            delivered_at = time.time()
            for row in sent_rows:
                self.outbox.remove(row.path)
                self.events.emit(
                    InstanceForwarded(
                        route=row.route,
                        destination=self.name,
                        seconds=seconds,
                        study_key=row.study_key,
                    )
                )
                # The forward stage of an instance: from its copy entering the outbox to the
                # archive's answer, waits for retries and outages included.
                self.events.emit(
                    StageCompleted(
                        Stage.FORWARD, row.route, max(0.0, delivered_at - row.created_at)
                    )
                )
            LOG.info(
                "batch_forwarded",
                destination=self.name,
                study_key=rows[0].study_key,
                instances=len(sent_rows),
            )
        self._finish([r.instance_id for r in rows])
        return True

    def _failed(
        self, rows: Sequence[OutboxRow], kind: str, error: str, permanent: bool = False
    ) -> None:
        policy = self.dest.retry
        soonest = None
        for row in rows:
            attempts = row.attempts + 1
            if permanent or attempts >= policy.max_attempts:
                self._dead_letter(row, attempts, error)
                continue
            next_at = time.time() + backoff_delay(policy, attempts, self.rng)
            self.journal.reschedule(row.id, attempts, next_at, error)
            soonest = next_at if soonest is None else min(soonest, next_at)
        will_retry = soonest is not None
        self.events.emit(
            ForwardFailed(
                destination=self.name,
                reason=kind,
                will_retry=will_retry,
                study_key=rows[0].study_key if rows else "",
            )
        )
        LOG.warning(
            "forward_batch_failed",
            destination=self.name,
            reason=kind,
            instances=len(rows),
            will_retry=will_retry,
            attempts=rows[0].attempts + 1 if rows else 0,
        )
        if kind in ("unreachable", "refused", "tls", "timeout") and soonest is not None:
            self._paused_until = soonest
        if permanent or not will_retry:
            self._finish([r.instance_id for r in rows])

    def _dead_letter(self, row: OutboxRow, attempts: int, error: str) -> None:
        path = self.outbox.path(row.path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        self.quarantine.put(
            instance_id=row.instance_id,
            data=data,
            reason=QuarantineReason.DEAD_LETTER,
            route=row.route,
            study_key=row.study_key,
            destination=self.name,
            details={"attempts": attempts, "last_error": error},
        )
        self.journal.mark_dead(row.id, attempts, error)
        self.outbox.remove(row.path)
        self.events.emit(
            InstanceQuarantined(
                route=row.route, reason=QuarantineReason.DEAD_LETTER, study_key=row.study_key
            )
        )

    def _finish(self, instance_ids: Sequence[int]) -> None:
        """Instances with no copy left to send: their received original is no longer needed."""
        for inst in self.journal.finished_instances(instance_ids):
            self.spool.remove(inst.spool_path)


class Forwarder:
    """All destination workers."""

    def __init__(self, workers: dict[str, DestinationWorker]) -> None:
        self.workers = workers

    def start(self) -> None:
        for worker in self.workers.values():
            worker.start()

    def wake(self) -> None:
        for worker in self.workers.values():
            worker.wake()

    def stop(self, timeout: float = 30.0) -> None:
        for worker in self.workers.values():
            worker._stop.set()
            worker._wake.set()
        for worker in self.workers.values():
            worker.stop(timeout)
