"""Review station identity: password hashing and the users file, session expiry, CSRF tokens,
trusted proxy headers, the login throttle."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from itsdangerous import URLSafeSerializer

from deid_core.errors import ConfigError
from gateway.config import TrustedHeaderConfig
from gateway.review.identity import CsrfTokens, LoginThrottle, SessionCodec, TrustedProxy
from gateway.review.users import (
    Role,
    User,
    UsersFileError,
    UserStore,
    parse_users,
    remove_user,
    set_user,
)
from tests.support.review import FAST_HASHER


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- users file and password hashing -------------------------------------------------------------


def test_add_user_stores_an_argon2id_hash_never_the_password(tmp_path: Path) -> None:
    users = tmp_path / "users"
    # the real default parameters here, once: what add-user writes
    assert set_user(users, "rita", Role.REVIEWER, "correct horse battery")
    text = users.read_text()
    assert "correct horse battery" not in text
    line = next(ln for ln in text.splitlines() if ln.startswith("rita:"))
    name, role, hashed = line.split(":", 2)
    assert (name, role) == ("rita", "reviewer")
    assert hashed.startswith("$argon2id$")
    assert "m=65536" in hashed  # argon2-cffi's RFC 9106 low-memory profile, not a toy setting
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    store = UserStore(users)
    assert store.verify("rita", "correct horse battery") == User("rita", Role.REVIEWER)
    assert store.verify("rita", "correct horse battery ") is None
    assert store.verify("nobody", "correct horse battery") is None


def test_setting_a_user_again_replaces_role_and_password(tmp_path: Path) -> None:
    users = tmp_path / "users"
    assert set_user(users, "rita", Role.VIEWER, "first password!", FAST_HASHER)
    assert not set_user(users, "rita", Role.REVIEWER, "second password!", FAST_HASHER)
    store = UserStore(users)
    assert store.verify("rita", "first password!") is None
    assert store.verify("rita", "second password!") == User("rita", Role.REVIEWER)
    assert [u.name for u in store.users()] == ["rita"]


def test_the_store_follows_changes_to_the_file(tmp_path: Path) -> None:
    users = tmp_path / "users"
    set_user(users, "rita", Role.REVIEWER, "a long password", FAST_HASHER)
    store = UserStore(users)
    assert store.user("rita") == User("rita", Role.REVIEWER)
    set_user(users, "rita", Role.VIEWER, "a long password", FAST_HASHER)
    assert store.user("rita") == User("rita", Role.VIEWER)
    assert remove_user(users, "rita")
    assert store.user("rita") is None
    assert not remove_user(users, "rita")


@pytest.mark.parametrize(
    ("name", "password", "message"),
    [
        ("rita", "short", "at least 12"),
        ("ri:ta", "a long password", "not allowed"),
        ("", "a long password", "not allowed"),
        ("rita smith", "a long password", "not allowed"),
    ],
)
def test_bad_names_and_short_passwords_are_refused(
    tmp_path: Path, name: str, password: str, message: str
) -> None:
    with pytest.raises(UsersFileError, match=message):
        set_user(tmp_path / "users", name, Role.VIEWER, password, FAST_HASHER)
    assert not (tmp_path / "users").exists()


def test_a_malformed_users_file_names_the_line_and_never_a_hash(tmp_path: Path) -> None:
    good = FAST_HASHER.hash("a long password")
    with pytest.raises(UsersFileError, match=r"users:3: role must be reviewer or viewer"):
        parse_users(f"# comment\nrita:reviewer:{good}\nbob:admin:{good}\n", "users")
    with pytest.raises(UsersFileError, match=r"users:1: not an argon2 hash") as info:
        parse_users("rita:reviewer:plaintext-password\n", "users")
    assert "plaintext-password" not in str(info.value)
    with pytest.raises(UsersFileError, match=r"users:1: expected name:role:hash"):
        parse_users("rita\n", "users")
    missing = UserStore(Path("/nonexistent/users"), FAST_HASHER)
    with pytest.raises(ConfigError, match="review add-user"):
        missing.check()


def test_unknown_names_cost_a_verification_with_the_files_own_parameters(tmp_path: Path) -> None:
    users = tmp_path / "users"
    set_user(users, "rita", Role.REVIEWER, "a long password", FAST_HASHER)
    store = UserStore(users, PasswordHasher())  # default (expensive) parameters as fallback
    assert store.verify("nobody", "a long password") is None
    assert store._dummy is not None
    assert "m=1024,t=1,p=1" in store._dummy  # same cost as the real users' hashes


# --- sessions ------------------------------------------------------------------------------------


def test_a_session_ends_at_its_lifetime_whatever_the_user_does() -> None:
    clock = Clock()
    codec = SessionCodec(b"s" * 32, lifetime_s=600, clock=clock)
    value, session = codec.issue(User("rita", Role.REVIEWER))
    assert session.expires_at == clock.now + 600
    clock.now += 599
    read = codec.read(value)
    assert read is not None and read.user == User("rita", Role.REVIEWER)
    assert read.sid == session.sid
    clock.now += 1
    assert codec.read(value) is None


def test_forged_or_foreign_session_cookies_are_refused() -> None:
    clock = Clock()
    codec = SessionCodec(b"s" * 32, 600, clock)
    value, _ = codec.issue(User("victor", Role.VIEWER))
    other = SessionCodec(b"t" * 32, 600, clock)
    assert other.read(value) is None  # another station's (or a restarted station's) cookie
    # a viewer rewriting the role in the payload breaks the signature
    _, signature = value.rsplit(".", 1)
    unsigned = URLSafeSerializer(b"any")
    _, data = unsigned.loads_unsafe(value)
    assert data["r"] == "viewer"
    data["r"] = "reviewer"
    forged = unsigned.dump_payload(data).decode()
    assert codec.read(f"{forged}.{signature}") is None
    assert codec.read("") is None and codec.read(None) is None and codec.read("garbage") is None


def test_a_session_issued_in_the_future_is_refused() -> None:
    clock = Clock()
    codec = SessionCodec(b"s" * 32, 600, clock)
    value, _ = codec.issue(User("rita", Role.REVIEWER))
    clock.now -= 10
    assert codec.read(value) is None


def test_logout_revokes_the_cookie() -> None:
    codec = SessionCodec(b"s" * 32, 600, Clock())
    value, session = codec.issue(User("rita", Role.REVIEWER))
    codec.revoke(session)
    assert codec.read(value) is None
    other, _ = codec.issue(User("rita", Role.REVIEWER))
    assert codec.read(other) is not None  # only that session


# --- CSRF ----------------------------------------------------------------------------------------


def test_csrf_tokens_are_bound_to_their_subject_and_expire() -> None:
    clock = Clock()
    tokens = CsrfTokens(b"c" * 32, max_age_s=600, clock=clock)
    token = tokens.issue("session-a")
    assert tokens.verify("session-a", token)
    assert not tokens.verify("session-b", token)
    assert not tokens.verify("session-a", None)
    assert not tokens.verify("session-a", "")
    assert not tokens.verify("", token)
    issued, _, mac = token.partition(".")
    assert not tokens.verify("session-a", f"{int(issued) + 1}.{mac}")  # time is signed too
    assert not tokens.verify("session-a", f"{issued}.{'0' * len(mac)}")
    assert not tokens.verify("session-a", "not-a-token")
    assert not CsrfTokens(b"d" * 32, 600, clock).verify("session-a", token)
    clock.now += 601
    assert not tokens.verify("session-a", token)


# --- trusted proxy -------------------------------------------------------------------------------


def _proxy() -> TrustedProxy:
    return TrustedProxy(
        TrustedHeaderConfig(
            proxies=["127.0.0.1", "10.20.0.0/16"],
            reviewer_groups=["privacy-officers"],
            viewer_groups=["imaging-it"],
        )
    )


def test_trusted_headers_are_honoured_from_configured_proxies_only() -> None:
    proxy = _proxy()
    headers = {"X-Forwarded-User": "rita", "X-Forwarded-Groups": "staff, privacy-officers"}
    assert proxy.identify("127.0.0.1", headers) == User("rita", Role.REVIEWER)
    assert proxy.identify("10.20.3.4", headers) == User("rita", Role.REVIEWER)
    assert proxy.identify("::ffff:10.20.3.4", headers) == User("rita", Role.REVIEWER)
    # the same headers from anywhere else count for nothing
    assert proxy.identify("10.21.0.1", headers) is None
    assert proxy.identify("192.168.1.5", headers) is None
    assert proxy.identify("::1", headers) is None
    assert proxy.identify(None, headers) is None
    assert proxy.identify("testclient", headers) is None


def test_trusted_header_roles_come_from_groups() -> None:
    proxy = _proxy()
    viewer = {"X-Forwarded-User": "victor", "X-Forwarded-Groups": "imaging-it"}
    assert proxy.identify("127.0.0.1", viewer) == User("victor", Role.VIEWER)
    nobody = {"X-Forwarded-User": "eve", "X-Forwarded-Groups": "students"}
    assert proxy.identify("127.0.0.1", nobody) is None
    assert proxy.identify("127.0.0.1", {"X-Forwarded-Groups": "privacy-officers"}) is None
    bad_name = {"X-Forwarded-User": "a:b", "X-Forwarded-Groups": "privacy-officers"}
    assert proxy.identify("127.0.0.1", bad_name) is None


# --- login throttle ------------------------------------------------------------------------------


def test_login_throttle_blocks_after_max_failures_within_the_window() -> None:
    clock = Clock(1000.0)
    throttle = LoginThrottle(max_failures=3, window_s=60, clock=clock)
    keys = ["addr:10.0.0.1", "user:rita"]
    for _ in range(3):
        assert throttle.retry_after(keys) is None
        throttle.failed(keys)
        clock.now += 1
    wait = throttle.retry_after(keys)
    assert wait is not None and 57 <= wait <= 58
    # another address is blocked too while the user name is
    assert throttle.retry_after(["addr:10.0.0.2", "user:rita"]) is not None
    assert throttle.retry_after(["addr:10.0.0.2", "user:bob"]) is None
    clock.now += 58
    assert throttle.retry_after(keys) is None


def test_a_successful_login_clears_the_user_name_but_not_the_address() -> None:
    clock = Clock(1000.0)
    throttle = LoginThrottle(max_failures=2, window_s=60, clock=clock)
    throttle.failed(["addr:a", "user:rita"])
    throttle.failed(["addr:a", "user:rita"])
    throttle.succeeded(["user:rita"])
    assert throttle.retry_after(["user:rita"]) is None
    assert throttle.retry_after(["addr:a"]) is not None


def test_the_throttle_forgets_the_oldest_keys_beyond_its_bound() -> None:
    throttle = LoginThrottle(max_failures=1, window_s=60, clock=Clock())
    for i in range(LoginThrottle.MAX_KEYS + 10):
        throttle.failed([f"user:u{i}"])
    assert len(throttle._failures) == LoginThrottle.MAX_KEYS
    assert throttle.retry_after(["user:u0"]) is None
    assert throttle.retry_after([f"user:u{LoginThrottle.MAX_KEYS + 9}"]) is not None
