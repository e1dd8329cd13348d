"""The running review station: the web application served by uvicorn in a thread of the gateway.

Started by the node after its storage, pipeline and forwarders are up (so a decision can take
effect at once) and stopped before them. It listens on its own address (`review:` in the
configuration), with TLS when a certificate is configured. uvicorn's proxy-header rewriting is
off: the client address the station sees is the TCP peer, which is what the trusted-proxy check
needs. uvicorn's access log is off too; the station logs its own events, without PHI.

Secrets for session cookies and CSRF tokens are drawn at start and kept in memory only, so a
restart of the gateway signs everybody out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import uvicorn

from deid_core.errors import ConfigError
from gateway.config import GatewayConfig, RouteTarget
from gateway.logs import get_logger
from gateway.review.app import create_app
from gateway.review.audit import AuditTrail
from gateway.review.identity import CsrfTokens, LoginThrottle, SessionCodec, TrustedProxy
from gateway.review.reader import JournalReader
from gateway.review.users import UserStore
from gateway.routing import DEFAULT_ROUTE_NAME

if TYPE_CHECKING:
    from gateway.node import Storage

LOG = get_logger("gateway.review")


def _derive(secret: bytes, purpose: str) -> bytes:
    return hmac.new(secret, purpose.encode(), hashlib.sha256).digest()


class ReviewStation:
    def __init__(
        self,
        cfg: GatewayConfig,
        storage: Storage,
        on_decision: Callable[[], None] | None = None,
        *,
        secret: bytes | None = None,
    ) -> None:
        review = cfg.review
        self.cfg = cfg
        self.journal = storage.journal
        self.quarantine = storage.quarantine
        self.spool = storage.spool
        self.outbox = storage.outbox
        self.on_decision = on_decision or (lambda: None)
        self.tls = review.tls is not None
        self.users = UserStore(review.users_file) if review.auth == "password_file" else None
        self.proxy = (
            TrustedProxy(review.trusted_header)
            if review.auth == "trusted_header" and review.trusted_header is not None
            else None
        )
        secret = secret or secrets.token_bytes(32)
        self.sessions = SessionCodec(_derive(secret, "session"), review.session_lifetime_s)
        self.csrf = CsrfTokens(_derive(secret, "csrf"), review.session_lifetime_s)
        self.throttle = LoginThrottle(review.login_limit.max_failures, review.login_limit.window_s)
        self.audit = AuditTrail(storage.journal)
        self.reader = JournalReader(storage.journal.path)
        names = {r.name for r in cfg.routes}
        if isinstance(cfg.default_route, RouteTarget):
            names.add(DEFAULT_ROUTE_NAME)
        self.routes = frozenset(names)
        self.decide_lock = threading.Lock()
        self.app = create_app(self)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None

    def _check_tls(self) -> None:
        tls = self.cfg.review.tls
        if tls is None:
            return
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigError(
                f"review.tls: cannot load the certificate {tls.cert_file} and key "
                f"{tls.key_file} ({reason})"
            ) from None

    def start(self, timeout: float = 15.0) -> tuple[str, int]:
        """Listen and serve; returns the bound address. A bad users file, certificate or a port
        in use stops the start with a ConfigError."""
        review = self.cfg.review
        if self.users is not None:
            self.users.check()
        self._check_tls()
        try:
            info = socket.getaddrinfo(review.address, review.port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(info[0], socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(info[4])
            sock.listen(128)
        except OSError as exc:
            raise ConfigError(
                f"review: cannot listen on {review.address}:{review.port} ({exc.strerror})"
            ) from None
        config = uvicorn.Config(
            self.app,
            ssl_certfile=str(review.tls.cert_file) if review.tls else None,
            ssl_keyfile=str(review.tls.key_file) if review.tls else None,
            proxy_headers=False,
            server_header=False,
            access_log=False,
            log_config=None,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="review-station", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise ConfigError("review: the station did not start (see the log above)")
            time.sleep(0.02)
        self._server, self._thread = server, thread
        host, port = sock.getsockname()[:2]
        self.address = (str(host), int(port))
        LOG.info(
            "review_listening",
            host=self.address[0],
            port=self.address[1],
            tls=self.tls,
            auth=review.auth,
        )
        if not self.tls and review.auth == "password_file":
            LOG.warning("review_without_tls", detail="passwords cross loopback in clear")
        return self.address

    @property
    def url(self) -> str:
        assert self.address is not None
        host = self.address[0]
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.address[1]}"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (requests in flight may finish); safe to call twice."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = self._thread = None
