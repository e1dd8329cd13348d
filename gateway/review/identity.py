"""Who is asking: session cookies, CSRF tokens, a trusted proxy's headers, the login throttle.

Sessions live in a cookie signed with HMAC (itsdangerous) under a secret drawn when the station
starts: a restart ends every session, and nothing about sessions is stored on disk. The cookie
holds a random session id, the user name, the role and the login time; a session ends
`lifetime_s` after login whatever the user does (absolute expiry, checked on the server, not left
to the browser), on logout (the id is revoked), or when the user leaves the users file or changes
role (checked on every request by the application).

Every state-changing request carries a CSRF token bound to the session id (or, behind a trusted
proxy, to the user) and to its issue time; it is checked before anything else happens. The cookie
is also SameSite=Strict, so a cross-site form post does not even carry it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer

from gateway.config import TrustedHeaderConfig
from gateway.review.users import USER_NAME, Role, User

Clock = Callable[[], float]


@dataclass(frozen=True)
class Session:
    sid: str
    user: User
    issued_at: float
    expires_at: float


class SessionCodec:
    """Issues and reads signed session cookies with an absolute expiry."""

    def __init__(self, secret: bytes, lifetime_s: float, clock: Clock = time.time) -> None:
        self._serializer = URLSafeSerializer(secret, salt="deid-gateway review session")
        self.lifetime_s = lifetime_s
        self._clock = clock
        self._lock = threading.Lock()
        self._revoked: dict[str, float] = {}  # sid -> when it would have expired anyway

    def issue(self, user: User) -> tuple[str, Session]:
        now = self._clock()
        sid = secrets.token_urlsafe(18)
        value = self._serializer.dumps({"sid": sid, "u": user.name, "r": user.role.value, "t": now})
        return value, Session(sid, user, now, now + self.lifetime_s)

    def read(self, value: str | None) -> Session | None:
        """The session a cookie carries, or None when it is absent, forged, expired or revoked."""
        if not value:
            return None
        try:
            data = self._serializer.loads(value)
            sid, name, role, issued = str(data["sid"]), str(data["u"]), Role(data["r"]), data["t"]
            issued = float(issued)
        except (BadSignature, KeyError, TypeError, ValueError):
            return None
        now = self._clock()
        if not issued <= now < issued + self.lifetime_s:
            return None
        with self._lock:
            if sid in self._revoked:
                return None
        return Session(sid, User(name, role), issued, issued + self.lifetime_s)

    def revoke(self, session: Session) -> None:
        """Logout: the cookie stops working even if a copy of it survives somewhere."""
        now = self._clock()
        with self._lock:
            self._revoked = {s: t for s, t in self._revoked.items() if t > now}
            self._revoked[session.sid] = session.expires_at


class CsrfTokens:
    """Synchronizer tokens: ``<issue time>.<HMAC(secret, subject|issue time)>``.

    The subject is the session id (password logins), the trusted proxy's user name, or a pre-login
    nonce kept in a cookie (the login form). A token is valid for its own subject only and for
    `max_age_s` after it was issued.
    """

    def __init__(self, secret: bytes, max_age_s: float, clock: Clock = time.time) -> None:
        self._secret = secret
        self.max_age_s = max_age_s
        self._clock = clock

    def _mac(self, subject: str, issued: int) -> str:
        msg = f"{subject}|{issued}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def issue(self, subject: str) -> str:
        issued = int(self._clock())
        return f"{issued}.{self._mac(subject, issued)}"

    def verify(self, subject: str, token: str | None) -> bool:
        if not token or not subject:
            return False
        issued_text, _, mac = token.partition(".")
        if not issued_text.isdigit() or not mac:
            return False
        issued = int(issued_text)
        now = self._clock()
        if not issued - 5 <= now <= issued + self.max_age_s:
            return False
        return hmac.compare_digest(mac, self._mac(subject, issued))


def peer_address(host: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The TCP peer's address (IPv4-mapped IPv6 addresses as IPv4); None when not an address."""
    if not host:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxy:
    """Identity asserted by a reverse proxy, honoured only on connections from its addresses.

    The station is served with uvicorn's own proxy-header rewriting switched off, so the peer
    address checked here is the real TCP peer, never a value from X-Forwarded-For.
    """

    def __init__(self, cfg: TrustedHeaderConfig) -> None:
        self.cfg = cfg
        self._networks = [ipaddress.ip_network(p, strict=False) for p in cfg.proxies]
        self._reviewers = set(cfg.reviewer_groups)
        self._viewers = set(cfg.viewer_groups)

    def trusts(self, host: str | None) -> bool:
        address = peer_address(host)
        return address is not None and any(address in net for net in self._networks)

    def identify(self, host: str | None, headers: Mapping[str, str]) -> User | None:
        """The user the proxy vouches for; None from an untrusted peer, without a valid user
        name, or without a group that grants a role."""
        if not self.trusts(host):
            return None
        name = (headers.get(self.cfg.user_header) or "").strip()
        if not USER_NAME.match(name):
            return None
        groups = {g.strip() for g in (headers.get(self.cfg.groups_header) or "").split(",")}
        if groups & self._reviewers:
            return User(name, Role.REVIEWER)
        if groups & self._viewers:
            return User(name, Role.VIEWER)
        return None


class LoginThrottle:
    """At most `max_failures` failed logins per key (client address, user name) in a sliding
    window of `window_s`; beyond that, logins for the key are refused without checking the
    password (which also keeps argon2's CPU and memory cost from being used against us)."""

    #: Keys remembered at most (oldest dropped first), so a flood of names cannot exhaust memory.
    MAX_KEYS = 10000

    def __init__(self, max_failures: int, window_s: float, clock: Clock = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, keys: Iterable[str]) -> float | None:
        """Seconds until a login may be tried again, or None when it may be tried now."""
        now = self._clock()
        wait = 0.0
        with self._lock:
            for key in keys:
                times = self._recent(key, now)
                if len(times) >= self.max_failures:
                    wait = max(wait, times[len(times) - self.max_failures] + self.window_s - now)
        return wait if wait > 0 else None

    def failed(self, keys: Iterable[str]) -> None:
        now = self._clock()
        with self._lock:
            for key in keys:
                self._failures.setdefault(key, deque()).append(now)
            while len(self._failures) > self.MAX_KEYS:
                del self._failures[next(iter(self._failures))]

    def succeeded(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)
