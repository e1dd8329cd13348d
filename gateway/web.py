"""An ASGI application served by uvicorn in a daemon thread of the gateway (the STOW-RS endpoint,
the review station).

We bind the socket ourselves, so a port in use or an unreadable certificate is a start-up
ConfigError naming the configuration section, and the bound address (port 0 included) is known.
uvicorn's proxy-header rewriting, server header, access log and logging set-up are off: each
caller logs its own PHI-free events."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from deid_core.errors import ConfigError


def check_certificate(cert_file: Path, key_file: Path, where: str) -> None:
    """The certificate and key load as a server's TLS identity; ConfigError naming `where`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(
            f"{where}: cannot load the certificate {cert_file} and key {key_file} ({reason})"
        ) from None


class ThreadedWebServer:
    """One uvicorn server in one daemon thread; `start` returns once it accepts connections."""

    def __init__(self, app: Any, *, where: str, thread_name: str, graceful_s: int) -> None:
        self.app = app
        self.where = where
        self.thread_name = thread_name
        self.graceful_s = graceful_s
        self.address: tuple[str, int] | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(
        self, host: str, port: int, ssl_options: dict[str, Any], timeout: float
    ) -> tuple[str, int]:
        """Bind, serve, wait until serving; returns the bound address. `ssl_options`: uvicorn's
        ssl_* settings ({} for plain HTTP)."""
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(info[0], socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(info[4])
            sock.listen(128)
        except OSError as exc:
            raise ConfigError(
                f"{self.where}: cannot listen on {host}:{port} ({exc.strerror})"
            ) from None
        config = uvicorn.Config(
            self.app,
            proxy_headers=False,
            server_header=False,
            access_log=False,
            log_config=None,
            lifespan="off",
            timeout_graceful_shutdown=self.graceful_s,
            **ssl_options,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=self.thread_name, daemon=True
        )
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise ConfigError(f"{self.where}: the server did not start (see the log above)")
            time.sleep(0.02)
        self._server, self._thread = server, thread
        bound_host, bound_port = sock.getsockname()[:2]
        self.address = (str(bound_host), int(bound_port))
        return self.address

    def url(self, tls: bool, path: str = "") -> str:
        assert self.address is not None
        host = self.address[0]
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if tls else 'http'}://{host}:{self.address[1]}{path}"

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.started and not self._server.should_exit

    def stop(self, timeout: float) -> None:
        """Stop accepting; requests in flight may finish. Safe to call twice."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = self._thread = None
