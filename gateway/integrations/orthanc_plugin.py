"""The gateway inside Orthanc: a Python plugin (Debian's `orthanc-python`) that hands each stable
study to the gateway's de-identification and routes, configured by the gateway's own YAML.

Orthanc loads `gateway/integrations/orthanc_entry.py` (its `PythonScript` setting); that script
puts the gateway's code and dependencies on `sys.path` and calls `install`. From then on, each
time Orthanc reports a study stable (no new instance for its `StableAge`), the study is handed
over, in one of two modes (`orthanc_plugin.mode`):

- ``in_process``: a gateway node runs inside Orthanc, without a DICOM listener: each instance's
  file is read through Orthanc's REST API and stored through the node's ingest (spool file and
  directory fsynced, journal row) exactly as if it had arrived by C-STORE; from there the usual
  routes, de-identification, pixel steps, forwarders, retries and quarantine apply.
- ``forward``: Orthanc itself sends the study's instances (C-STORE, Orthanc's own sender) to a
  gateway node (`orthanc_plugin.forward_to`, by default this file's `node`), retrying with
  backoff when that fails.

What has been handed over is recorded in a small SQLite ledger (`orthanc_plugin.state_file`):
which Orthanc instances were handed over (a study that grows later sends only its new instances),
and which stable studies still wait (re-queued when Orthanc starts again, so a restart between
"stable" and "handed over" loses nothing).

Instances whose Patient Identity Removed (0012,0062) is YES are left alone by default: among them
the gateway's own output when a route sends it back into the same Orthanc — no loop.

Threads: Orthanc calls `on_change` on its own thread; the hand-over runs on a worker thread of
ours, so Orthanc's event thread never waits for the gateway (and calling Orthanc's REST API from
inside the change callback, which can dead-lock, never happens). Logs name studies by the keyed
study key only, never by Orthanc's resource ids (hashes of the patient's identifiers).
"""

from __future__ import annotations

import heapq
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from deid_core.errors import ConfigError, InvalidInputError
from deid_core.keys import ProjectKey
from dicom_io.scp import AssociationInfo, StoreRefused, instance_from_part10
from gateway.config import GatewayConfig, load_config
from gateway.ingest import study_key
from gateway.logs import configure_logging, get_logger

LOG = get_logger("gateway.orthanc_plugin")

#: The name under which forward mode declares the gateway as an Orthanc modality.
MODALITY = "deid-gateway"
#: Study ids waiting at most this long between polls of the worker queue.
_POLL_S = 0.5


class OrthancModule(Protocol):
    """The part of Orthanc's `orthanc` module the plugin uses."""

    def RestApiGet(self, uri: str) -> bytes: ...

    def RestApiPost(self, uri: str, body: str | bytes) -> bytes: ...

    def RestApiPut(self, uri: str, body: str | bytes) -> bytes: ...

    def RegisterOnChangeCallback(self, callback: Callable[[int, int, str], None]) -> None: ...

    def GetConfiguration(self) -> str: ...

    def LogWarning(self, message: str) -> None: ...

    ChangeType: Any


class HandoverLedger:
    """What was handed over and what still waits, in a small SQLite file (mode 0600)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.touch(mode=0o600)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS pending (study TEXT PRIMARY KEY, attempts INTEGER NOT"
            " NULL DEFAULT 0, due REAL NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS instances (instance TEXT PRIMARY KEY, outcome TEXT NOT"
            " NULL, at REAL NOT NULL)"
        )

    def add_pending(self, study: str, due: float, attempts: int = 0) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO pending (study, attempts, due) VALUES (?,?,?)",
                (study, attempts, due),
            )

    def done(self, study: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM pending WHERE study=?", (study,))

    def pending(self) -> list[tuple[str, int, float]]:
        with self._lock:
            return [
                (r[0], int(r[1]), float(r[2]))
                for r in self._db.execute("SELECT study, attempts, due FROM pending")
            ]

    def handled(self, instances: list[str]) -> set[str]:
        with self._lock:
            out: set[str] = set()
            for i in range(0, len(instances), 500):
                chunk = instances[i : i + 500]
                marks = ",".join("?" * len(chunk))
                out.update(
                    r[0]
                    for r in self._db.execute(
                        f"SELECT instance FROM instances WHERE instance IN ({marks})", chunk
                    )
                )
            return out

    def mark(self, instances: list[str], outcome: str) -> None:
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO instances (instance, outcome, at) VALUES (?,?,?)",
                [(i, outcome, now) for i in instances],
            )
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class HandoverResult:
    handed: int = 0
    skipped: int = 0
    unreadable: int = 0
    study_key: str = ""


class RetryLater(Exception):
    """The study could not be handed over now (gateway unreachable, spool full)."""


class StudyHandover:
    """Queues stable studies and hands them to the gateway on a worker thread."""

    def __init__(
        self,
        orthanc: OrthancModule,
        cfg: GatewayConfig,
        key: ProjectKey,
        *,
        node: Any | None = None,
    ) -> None:
        self.orthanc = orthanc
        self.cfg = cfg
        self.plugin = cfg.orthanc_plugin
        self.key = key
        self.node = node
        if self.plugin.mode == "in_process" and (node is None or node.ingest is None):
            raise ConfigError("orthanc_plugin: in_process mode needs a started gateway node")
        self.ledger = HandoverLedger(self.plugin.state_file)
        self._queue: list[tuple[float, str, int]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="orthanc-handover", daemon=True)
        self._stable = getattr(orthanc.ChangeType, "STABLE_STUDY", None)
        self._stopped = getattr(orthanc.ChangeType, "ORTHANC_STOPPED", None)
        self._started_change = getattr(orthanc.ChangeType, "ORTHANC_STARTED", None)
        #: Orthanc's REST API may not be called before Orthanc has started.
        self._orthanc_started = threading.Event()
        #: Run on the worker once Orthanc has started, before the first study (forward mode
        #: declares the gateway as a modality there).
        self.on_orthanc_started: Callable[[], None] | None = None

    # --- Orthanc's side ------------------------------------------------------------------------

    def start(self) -> None:
        for study, attempts, due in self.ledger.pending():
            self._push(due, study, attempts)
        self._thread.start()

    def on_change(self, change_type: int, level: int, resource: str) -> None:
        """Orthanc's change callback: queue stable studies; shut down when Orthanc stops."""
        if change_type == self._started_change:
            self._orthanc_started.set()
            with self._cond:
                self._cond.notify_all()
        elif change_type == self._stable:
            now = time.time()
            self.ledger.add_pending(resource, now)
            self._push(now, resource, 0)
        elif change_type == self._stopped:
            self.stop()

    def _push(self, due: float, study: str, attempts: int) -> None:
        with self._cond:
            heapq.heappush(self._queue, (due, study, attempts))
            self._cond.notify()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the study in hand, stop the worker and the embedded node. Safe to call twice."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if self.node is not None:
            self.node.shutdown()
        if not self._thread.is_alive():
            self.ledger.close()

    # --- the worker --------------------------------------------------------------------------

    def _next(self) -> tuple[str, int] | None:
        with self._cond:
            while not self._stop.is_set():
                now = time.time()
                ready = self._orthanc_started.is_set()
                if ready and self._queue and self._queue[0][0] <= now:
                    _, study, attempts = heapq.heappop(self._queue)
                    return study, attempts
                wait = self._queue[0][0] - now if self._queue else _POLL_S
                self._cond.wait(min(max(wait, 0.01), _POLL_S))
        return None

    def _run(self) -> None:
        while not self._orthanc_started.wait(_POLL_S):
            if self._stop.is_set():
                return
        if self.on_orthanc_started is not None:
            try:
                self.on_orthanc_started()
            except Exception:
                LOG.exception("orthanc_plugin_setup_failed")
        while True:
            item = self._next()
            if item is None:
                return
            study, attempts = item
            try:
                result = self.hand_over(study)
            except RetryLater as exc:
                self._retry(study, attempts + 1, str(exc))
                continue
            except Exception:
                LOG.exception("orthanc_handover_failed")
                self._retry(study, attempts + 1, "unexpected error")
                continue
            self.ledger.done(study)
            LOG.info(
                "orthanc_study_handed_over",
                mode=self.plugin.mode,
                study_key=result.study_key,
                instances=result.handed,
                skipped_deidentified=result.skipped,
                unreadable=result.unreadable,
            )

    def _retry(self, study: str, attempts: int, why: str) -> None:
        if attempts >= self.plugin.max_attempts:
            self.ledger.done(study)
            LOG.error("orthanc_handover_gave_up", attempts=attempts, error=why)
            self.orthanc.LogWarning(
                f"deid-gateway: a stable study could not be handed over after {attempts} "
                "attempts; send it again (e.g. Orthanc's /studies/ID/reconstruct) once fixed"
            )
            return
        delay = min(
            self.plugin.retry_initial_delay_s * 2 ** (attempts - 1), self.plugin.retry_max_delay_s
        )
        due = time.time() + delay
        self.ledger.add_pending(study, due, attempts)
        self._push(due, study, attempts)
        LOG.warning("orthanc_handover_retry", attempts=attempts, delay_s=delay, error=why)

    # --- one study ---------------------------------------------------------------------------

    def _get(self, uri: str) -> bytes:
        return bytes(self.orthanc.RestApiGet(uri))

    def _deidentified(self, instance: str) -> bool:
        try:
            value = self._get(f"/instances/{instance}/content/0012-0062")
        except Exception:  # absent: Orthanc answers "unknown resource"
            return False
        return value.strip(b"\x00 ").upper() == b"YES"

    def hand_over(self, study: str) -> HandoverResult:
        """Hand over the instances of `study` (an Orthanc study id) not handed over before."""
        try:
            listing = json.loads(self._get(f"/studies/{study}/instances"))
        except Exception:
            return HandoverResult()  # the study was deleted meanwhile: nothing to do
        instances = [str(i["ID"]) for i in listing]
        todo = [i for i in instances if i not in self.ledger.handled(instances)]
        result = HandoverResult()
        uid = str(
            json.loads(self._get(f"/studies/{study}"))
            .get("MainDicomTags", {})
            .get("StudyInstanceUID", "")
        )
        result.study_key = study_key(self.key, uid)
        if self.plugin.skip_deidentified:
            skipped = [i for i in todo if self._deidentified(i)]
            if skipped:
                self.ledger.mark(skipped, "skipped_deidentified")
                result.skipped = len(skipped)
                todo = [i for i in todo if i not in set(skipped)]
        if not todo:
            return result
        if self.plugin.mode == "forward":
            self._forward(todo)
            result.handed = len(todo)
            return result
        for instance in todo:
            outcome = self._ingest(instance)
            if outcome == "handed":
                result.handed += 1
            else:
                result.unreadable += 1
        return result

    def _ingest(self, instance: str) -> str:
        assert self.node is not None and self.node.ingest is not None
        data = self._get(f"/instances/{instance}/file")
        info = AssociationInfo(
            association_id="orthanc-" + uuid.uuid4().hex[:8],
            calling_ae=self.plugin.calling_ae_title,
            called_ae=self.cfg.node.ae_title,
            peer_host="orthanc",
            peer_port=0,
        )
        try:
            received = instance_from_part10(data, info, self.cfg.node.ae_title, "orthanc://local")
        except InvalidInputError as exc:
            LOG.warning("orthanc_instance_unreadable", error=str(exc))
            self.ledger.mark([instance], "unreadable")
            return "unreadable"
        try:
            self.node.ingest.store(received)  # durable in spool and journal when it returns
        except StoreRefused as exc:
            raise RetryLater(f"the gateway refused the instance ({exc.reason})") from None
        self.ledger.mark([instance], "handed")
        return "handed"

    def _forward(self, instances: list[str]) -> None:
        body = json.dumps({"Resources": instances, "Synchronous": True})
        try:
            self.orthanc.RestApiPost(f"/modalities/{MODALITY}/store", body)
        except Exception as exc:
            raise RetryLater(f"C-STORE to the gateway failed ({type(exc).__name__})") from None
        self.ledger.mark(instances, "forwarded")


def forward_target(cfg: GatewayConfig) -> tuple[str, str, int]:
    """(AE title, host, port) of the gateway node that forward mode sends to."""
    target = cfg.orthanc_plugin.forward_to
    host = target.host or cfg.node.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return target.ae_title or cfg.node.ae_title, host, target.port or cfg.node.port


def install(
    orthanc: OrthancModule,
    config_path: str | Path,
    *,
    environ: dict[str, str] | None = None,
) -> StudyHandover:
    """Load the gateway's configuration, start what the mode needs, and register the change
    callback. Any configuration problem raises (Orthanc then refuses to start: better than
    running without the privacy step the site configured)."""
    cfg = load_config(config_path)
    configure_logging(cfg.logging.level, cfg.logging.format)
    key = cfg.load_key(environ)
    node = None
    if cfg.orthanc_plugin.mode == "in_process":
        from gateway.node import GatewayNode

        node = GatewayNode(cfg, key, listen=False, drain_timeout=10.0)
        node.start()
        summary = f"in process, routes: {', '.join(r.name for r in cfg.routes) or 'none'}"
    else:
        ae, host, port = forward_target(cfg)
        if port == 0:
            raise ConfigError(
                "orthanc_plugin.forward_to.port: the gateway's port is needed (node.port is 0)"
            )
        summary = f"forwarding to {ae}@{host}:{port}"
    handover = StudyHandover(orthanc, cfg, key, node=node)
    if cfg.orthanc_plugin.mode == "forward":
        body = json.dumps({"AET": ae, "Host": host, "Port": port})

        def declare_gateway() -> None:
            # not during the plugin's initialisation: Orthanc refuses REST calls until started
            orthanc.RestApiPut(f"/modalities/{MODALITY}", body)

        handover.on_orthanc_started = declare_gateway
    handover.start()
    orthanc.RegisterOnChangeCallback(handover.on_change)
    orthanc.LogWarning(
        f"deid-gateway plugin ready: {summary} (key fingerprint {key.fingerprint()})"
    )
    return handover
