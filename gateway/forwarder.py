"""The forwarder: sends each destination's outbox, one association (or request) per study batch.

One worker per destination. It takes the due copies of one study (up to `batch_size`), sends them
over one association (DIMSE) or in one STOW-RS request (DICOMweb), and moves each journal row:
sent (the copy is deleted), or rescheduled with exponential backoff and jitter, or — after
`max_attempts` — dead-lettered to quarantine. When the connection itself fails (archive down,
refusing, TLS, busy), the whole destination waits until the batch's next attempt so an outage
costs one failed connection per backoff step, not one per study. An archive's Retry-After is a
floor for that wait. Rejected credentials (HTTP 401/403) cannot heal by themselves: those copies
are dead-lettered after `auth_failure_attempts`, with the reason, for an operator to release once
the credentials are fixed.

Delivery is at-least-once: a copy sent just before a crash is sent again after restart; the
archive receives identical UIDs (keyed pseudonyms) and keeps one instance.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from deid_core.errors import ConfigError, InvalidInputError
from dicom_io.dicomweb import (
    StowFailed,
    StowTarget,
    basic_authorization,
    bearer_authorization,
    client_ssl_context,
)
from dicom_io.scu import AssociationFailed, StoreTarget, file_context, is_stored, send_files
from dicom_io.tls import client_context
from gateway.config import (
    BasicAuth,
    BearerAuth,
    DestinationConfig,
    DicomwebDestinationConfig,
    GatewayConfig,
    RetryPolicy,
)
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

if TYPE_CHECKING:
    import httpx

LOG = get_logger("gateway.forwarder")

Sender = Callable[[StoreTarget, Sequence[str]], list[int | None]]
#: A liveness heartbeat: called on every turn of a worker's loop and after every file sent.
Heartbeat = Callable[[], None]


def is_permanent_refusal(status: int) -> bool:
    """A C-STORE failure status that no retry can cure: SOP class not supported (0x0122), data
    set does not match the SOP class (0xA9xx), cannot understand (0xC000). Out of resources
    (0xA7xx) and processing failures (0x0110, 0xC211...) may pass, and are retried."""
    return status == 0x0122 or 0xA900 <= status <= 0xA9FF or status == 0xC000


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


def http_authorization(auth: BearerAuth | BasicAuth | None, where: str) -> str | None:
    """The Authorization header for configured HTTP credentials (read now, at start-up)."""
    if isinstance(auth, BearerAuth):
        return bearer_authorization(auth.token.load(f"{where}.token"))
    if isinstance(auth, BasicAuth):
        return basic_authorization(auth.username, auth.password.load(f"{where}.password"))
    return None


def stow_target(name: str, dest: DicomwebDestinationConfig) -> StowTarget:
    """The STOW-RS target of a DICOMweb destination; unreadable credentials or certificates
    stop the start with a ConfigError naming the key."""
    ctx = None
    if dest.tls is not None:
        try:
            ctx = client_ssl_context(dest.tls.ca_file, dest.tls.cert_file, dest.tls.key_file)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigError(
                f"destinations.{name}.tls: cannot load the CA bundle or certificate ({reason})"
            ) from None
    return StowTarget(
        url=dest.url,
        authorization=http_authorization(dest.auth, f"destinations.{name}.auth"),
        ssl_context=ctx,
        connect_timeout=dest.connect_timeout_s,
        timeout=dest.timeout_s,
    )


class Transport(Protocol):
    """How a batch of outbox files reaches one destination. `send` returns one entry per file:
    the archive's status (0x0000 or a warning: stored) or None when it was not sent; it raises
    AssociationFailed or StowFailed when nothing could be sent."""

    def send(self, files: Sequence[Path], progress: Heartbeat) -> list[int | None]: ...

    def close(self) -> None: ...


class DimseTransport:
    """C-STORE over one association per batch."""

    def __init__(self, target: StoreTarget) -> None:
        self.target = target

    def send(self, files: Sequence[Path], progress: Heartbeat) -> list[int | None]:
        return send_files(self.target, files, progress)

    def close(self) -> None:
        pass


class StowTransport:
    """STOW-RS, one request per batch, over a kept-alive HTTP connection."""

    def __init__(self, target: StowTarget) -> None:
        self.target = target
        self._client: httpx.Client | None = None

    def send(self, files: Sequence[Path], progress: Heartbeat) -> list[int | None]:
        from dicom_io.dicomweb import new_client, stow_files

        if self._client is None:
            self._client = new_client(self.target)
        return stow_files(self.target, files, self._client, progress)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def transport_for(name: str, cfg: GatewayConfig) -> Transport:
    dest = cfg.destinations[name]
    if isinstance(dest, DicomwebDestinationConfig):
        return StowTransport(stow_target(name, dest))
    return DimseTransport(store_target(name, dest, cfg))


#: Failure kinds after which the whole destination waits for the batch's next attempt.
_PAUSING_KINDS = frozenset(
    {"unreachable", "refused", "tls", "timeout", "busy", "server_error", "auth"}
)


class DestinationWorker:
    """Delivers one destination's outbox until stopped."""

    def __init__(
        self,
        name: str,
        dest: DestinationConfig | DicomwebDestinationConfig,
        transport: Transport | StoreTarget,
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
        self.transport: Transport = (
            DimseTransport(transport) if isinstance(transport, StoreTarget) else transport
        )
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
        #: (study key, smaller batch size) after a batch of that study did not fit one
        #: association; other studies go with the destination's batch_size
        self._batch_limit: tuple[str, int] | None = None

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
        self.transport.close()

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
        if self._batch_limit is not None and rows:
            study, size = self._batch_limit
            if rows[0].study_key == study:
                rows = rows[:size]
            else:
                self._batch_limit = None
        if not rows:
            return False
        rows = self._sendable(rows)
        if not rows:
            return True
        started = time.perf_counter()
        try:
            statuses = self.transport.send([self.outbox.path(r.path) for r in rows], self.heartbeat)
        except AssociationFailed as exc:
            self._failed(rows, exc.kind, str(exc))
            return True
        except StowFailed as exc:
            limit = None
            if exc.kind == "auth" and isinstance(self.dest, DicomwebDestinationConfig):
                limit = self.dest.auth_failure_attempts
            self._failed(rows, exc.kind, str(exc), max_attempts=limit, wait_s=exc.retry_after)
            return True
        except InvalidInputError as exc:
            if len(rows) > 1:
                # Every file was readable (checked above): the batch as a whole does not fit one
                # association (too many presentation contexts). Halve it; nothing was sent.
                self._batch_limit = (rows[0].study_key, max(1, len(rows) // 2))
                LOG.warning("forward_batch_split", destination=self.name, batch=len(rows) // 2)
                return True
            LOG.error("outbox_file_unreadable", destination=self.name, error=str(exc))
            self._failed(rows, "status", str(exc), permanent=True)
            return True
        seconds = (time.perf_counter() - started) / max(len(rows), 1)
        sent_rows = []
        # failed rows grouped by what went wrong, each group rescheduled together
        failed: dict[tuple[str, str], list[OutboxRow]] = {}
        for row, status in zip(rows, statuses, strict=True):
            if status is not None and is_stored(status):
                sent_rows.append(row)
            elif status is None:
                failed.setdefault(("aborted", "association lost before an answer"), []).append(row)
            elif is_permanent_refusal(status):
                # the archive will never take this one: dead-letter it alone, now
                error = f"archive answered status 0x{status:04X} (permanent)"
                failed.setdefault(("permanent", error), []).append(row)
            else:
                why = ("status", f"archive answered status 0x{status:04X}")
                failed.setdefault(why, []).append(row)
        for (kind, error), group in failed.items():
            if kind == "permanent":
                self._failed(group, "status", error, permanent=True)
            else:
                self._failed(group, kind, error)
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

    def _sendable(self, rows: Sequence[OutboxRow]) -> list[OutboxRow]:
        """The rows whose copy can be sent. A copy that vanished, or that is not a Part 10 file,
        gets its defined end here, alone, instead of failing (or dead-lettering) its batch."""
        sendable = []
        for row in rows:
            path = self.outbox.path(row.path)
            try:
                file_context(path)
            except FileNotFoundError:
                self._copy_missing(row)
                continue
            except InvalidInputError as exc:
                LOG.error("outbox_file_unreadable", destination=self.name, error=str(exc))
                self._failed([row], "status", str(exc), permanent=True)
                continue
            sendable.append(row)
        return sendable

    def _copy_missing(self, row: OutboxRow) -> None:
        """The de-identified copy vanished from the outbox (deleted by hand, a file system
        fault): a defined end instead of failing the batch forever. The entry keeps the received
        original while the spool still has it, so a release processes the instance again."""
        error = "outbox_file_missing"
        instance = self.journal.instance(row.instance_id)
        data = b""
        if instance is not None:
            with contextlib.suppress(FileNotFoundError):
                data = self.spool.read(instance.spool_path)
        LOG.error(
            "outbox_file_missing",
            destination=self.name,
            study_key=row.study_key,
            original_kept=bool(data),
        )
        self.quarantine.put(
            instance_id=row.instance_id,
            data=data,
            reason=QuarantineReason.OUTBOX_FILE_MISSING,
            route=row.route,
            study_key=row.study_key,
            destination=self.name,
            details={"attempts": row.attempts, "last_error": error, "original_kept": bool(data)},
        )
        self.journal.mark_dead(row.id, row.attempts, error)
        self.events.emit(
            InstanceQuarantined(
                route=row.route,
                reason=QuarantineReason.OUTBOX_FILE_MISSING,
                study_key=row.study_key,
            )
        )
        self._finish([row.instance_id])

    def _failed(
        self,
        rows: Sequence[OutboxRow],
        kind: str,
        error: str,
        permanent: bool = False,
        *,
        max_attempts: int | None = None,
        wait_s: float | None = None,
    ) -> None:
        """Reschedule `rows` (or dead-letter those out of attempts). `max_attempts` lowers the
        policy's limit for this kind of failure; `wait_s` (an archive's Retry-After) is the least
        time before the next attempt."""
        policy = self.dest.retry
        limit = policy.max_attempts
        if max_attempts is not None:
            limit = min(max_attempts, limit)
        soonest = None
        # One time per attempt count, not per row: the batch stays together for its next try
        # (a per-row jitter would split it into one request per row).
        now = time.time()
        next_at_for: dict[int, float] = {}
        for row in rows:
            attempts = row.attempts + 1
            if permanent or attempts >= limit:
                self._dead_letter(row, attempts, error)
                continue
            if attempts not in next_at_for:
                delay = backoff_delay(policy, attempts, self.rng)
                if wait_s is not None:
                    delay = max(delay, wait_s)
                next_at_for[attempts] = now + delay
            next_at = next_at_for[attempts]
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
        if kind in _PAUSING_KINDS and soonest is not None:
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
