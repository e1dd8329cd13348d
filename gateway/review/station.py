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
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.config import GatewayConfig, RouteTarget
from gateway.logs import get_logger
from gateway.review.app import create_app
from gateway.review.audit import AuditTrail
from gateway.review.identity import CsrfTokens, LoginThrottle, SessionCodec, TrustedProxy
from gateway.review.reader import JournalReader
from gateway.review.users import UserStore
from gateway.routing import DEFAULT_ROUTE_NAME
from gateway.web import ThreadedWebServer, check_certificate

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
        self._web = ThreadedWebServer(
            self.app, where="review", thread_name="review-station", graceful_s=5
        )
        self.address: tuple[str, int] | None = None

    def start(self, timeout: float = 15.0) -> tuple[str, int]:
        """Listen and serve; returns the bound address. A bad users file, certificate or a port
        in use stops the start with a ConfigError."""
        review = self.cfg.review
        if self.users is not None:
            self.users.check()
        ssl_options: dict[str, Any] = {}
        if review.tls is not None:
            check_certificate(review.tls.cert_file, review.tls.key_file, "review.tls")
            ssl_options = {
                "ssl_certfile": str(review.tls.cert_file),
                "ssl_keyfile": str(review.tls.key_file),
            }
        self.address = self._web.start(review.address, review.port, ssl_options, timeout)
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
        return self._web.url(self.tls)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (requests in flight may finish); safe to call twice."""
        self._web.stop(timeout)
