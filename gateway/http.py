"""The gateway's monitoring endpoint: `/metrics`, `/healthz` and `/readyz` over plain HTTP.

- `/metrics`: the Prometheus exposition of the registry passed in (text or OpenMetrics, as the
  scraper asks).
- `/healthz` (liveness): 200 while the process's main loops are ticking. Each loop registers with
  `Liveness.register(name, max_silence_s)` and calls `beat(name)` every turn; a loop silent for
  longer than its limit makes the answer 503 and names the loop, so an orchestrator restarts a
  process that is alive but stuck.
- `/readyz` (readiness): 200 when every named check passes (journal writable, destinations
  reachable, model loaded, ...); otherwise 503 with a JSON body naming each failing check. A check
  passes by returning True or None, fails by returning False or raising; a check that takes longer
  than its timeout fails as ``timeout``. Only check names and exception *type* names are reported,
  never messages, which may carry paths or values.

The server is stdlib `http.server` in a daemon thread, bound to the configured address (loopback by
default). It is an observer: nothing it does can block or change the data path.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from deid_core.errors import ConfigError
from gateway.logs import get_logger

#: A readiness check: True or None means ready, False or an exception means not ready.
ReadinessCheck = Callable[[], bool | None]

_CHECK_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def _check_name(kind: str, name: str) -> str:
    if not _CHECK_NAME.match(name):
        raise ConfigError(
            f"{kind} names must be lower-case identifiers (letters, digits, underscores): {name!r}"
        )
    return name


class Liveness:
    """Heartbeats of the process's main loops (SCP accept loop, study assembler, forwarder...)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._limits: dict[str, float] = {}
        self._last: dict[str, float] = {}

    def register(self, loop: str, max_silence_s: float) -> None:
        """Declare a loop that must beat at least every ``max_silence_s`` seconds from now on."""
        _check_name("loop", loop)
        if max_silence_s <= 0:
            raise ValueError("max_silence_s must be positive")
        with self._lock:
            self._limits[loop] = max_silence_s
            self._last[loop] = self._clock()

    def beat(self, loop: str) -> None:
        with self._lock:
            if loop not in self._limits:
                raise KeyError(f"loop {loop!r} was never registered")
            self._last[loop] = self._clock()

    def unregister(self, loop: str) -> None:
        """Forget a loop that ended on purpose (e.g. during a graceful shutdown)."""
        with self._lock:
            self._limits.pop(loop, None)
            self._last.pop(loop, None)

    def silence(self) -> dict[str, float]:
        """Seconds since each registered loop last beat."""
        now = self._clock()
        with self._lock:
            return {loop: now - self._last[loop] for loop in self._limits}

    def stale(self) -> list[str]:
        """Loops silent for longer than their limit, sorted by name."""
        now = self._clock()
        with self._lock:
            return sorted(
                loop for loop, limit in self._limits.items() if now - self._last[loop] > limit
            )


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    #: "ok", "failed", "timeout", "still running", or "error: <exception type>".
    detail: str


class Readiness:
    """Runs the named checks concurrently, each under a timeout, never two runs of one at once."""

    def __init__(self, checks: Mapping[str, ReadinessCheck], timeout_s: float = 2.0) -> None:
        self._checks = {_check_name("readiness check", n): fn for n, fn in checks.items()}
        self._timeout_s = timeout_s
        # Threads start only when needed; room for every check to run at once, so one slow check
        # (a destination's C-ECHO) cannot make the others time out.
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="readyz")
        self._lock = threading.Lock()
        self._running: dict[str, Future[bool | None]] = {}
        self._log = get_logger("gateway.http")

    @property
    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._checks)

    def add(self, name: str, check: ReadinessCheck) -> None:
        """Add a check, or replace the one of that name (e.g. a placeholder by the real thing)."""
        _check_name("readiness check", name)
        with self._lock:
            self._checks[name] = check

    def run(self) -> list[CheckResult]:
        started: dict[str, Future[bool | None] | None] = {}
        with self._lock:
            for name, fn in list(self._checks.items()):
                previous = self._running.get(name)
                if previous is not None and not previous.done():
                    # A hung check keeps its one thread; it must not take a new one per request.
                    started[name] = None
                    continue
                future = self._pool.submit(fn)
                self._running[name] = future
                started[name] = future
        deadline = time.monotonic() + self._timeout_s
        results = []
        for name in sorted(started):
            pending = started[name]
            if pending is None:
                results.append(CheckResult(name, False, "still running"))
                continue
            try:
                value = pending.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                results.append(CheckResult(name, False, "timeout"))
            except Exception as exc:
                self._log.warning(
                    "readiness_check_raised", check=name, error_type=type(exc).__name__
                )
                results.append(CheckResult(name, False, f"error: {type(exc).__name__}"))
            else:
                ok = value is None or value is True
                results.append(CheckResult(name, ok, "ok" if ok else "failed"))
        return results

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Let a restarted gateway take its port back at once.
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], monitor: MonitoringServer) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.monitor = monitor
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "deid-gateway"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        monitor = self.server.monitor
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(HTTPStatus.OK, encoder(monitor.registry), content_type, send_body)
        elif path == "/healthz":
            status, body = monitor.health()
            self._send_json(status, body, send_body)
        elif path == "/readyz":
            status, body = monitor.readiness()
            self._send_json(status, body, send_body)
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": "not found"}, send_body)

    def _send_json(self, status: HTTPStatus, body: dict[str, Any], send_body: bool) -> None:
        payload = (json.dumps(body, sort_keys=True) + "\n").encode()
        self._send(status, payload, "application/json", send_body)

    def _send(self, status: HTTPStatus, payload: bytes, content_type: str, send_body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        # Access logs would only repeat scrapes and probes every few seconds; stay quiet.
        pass


class MonitoringServer:
    """`/metrics`, `/healthz` and `/readyz` on one address; `port=0` takes a free port."""

    def __init__(
        self,
        registry: CollectorRegistry,
        address: str = "127.0.0.1",
        port: int = 0,
        *,
        liveness: Liveness | None = None,
        checks: Mapping[str, ReadinessCheck] | None = None,
        check_timeout_s: float = 2.0,
    ) -> None:
        self.registry = registry
        self.liveness = liveness or Liveness()
        self._readiness = Readiness(checks or {}, timeout_s=check_timeout_s)
        self._httpd = _Server((address, port), self)
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def address(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self.address
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def add_check(self, name: str, check: ReadinessCheck) -> None:
        """Add a readiness check while serving (or replace the one of that name)."""
        self._readiness.add(name, check)

    @property
    def check_names(self) -> list[str]:
        return self._readiness.names

    def health(self) -> tuple[HTTPStatus, dict[str, Any]]:
        stale = self.liveness.stale()
        loops = {loop: round(s, 3) for loop, s in self.liveness.silence().items()}
        if stale:
            body = {"status": "failing", "stale_loops": stale, "seconds_since_beat": loops}
            return HTTPStatus.SERVICE_UNAVAILABLE, body
        return HTTPStatus.OK, {"status": "ok", "seconds_since_beat": loops}

    def readiness(self) -> tuple[HTTPStatus, dict[str, Any]]:
        results = self._readiness.run()
        failing = [r.name for r in results if not r.ok]
        body = {
            "status": "failing" if failing else "ok",
            "checks": {r.name: r.detail for r in results},
            "failing": failing,
        }
        return (HTTPStatus.SERVICE_UNAVAILABLE if failing else HTTPStatus.OK), body

    def start(self) -> MonitoringServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.2},
                name="monitoring-http",
                daemon=True,
            )
            self._thread.start()
            get_logger("gateway.http").info("monitoring_listening", port=self.port)
        return self

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()
        self._readiness.close()

    def __enter__(self) -> MonitoringServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
