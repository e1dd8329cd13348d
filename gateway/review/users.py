"""Review station users: names, roles and argon2id password hashes in one file.

The file holds one user per line, ``name:role:hash`` (``#`` starts a comment), written by
``deid-gateway review add-user`` with mode 0600 and replaced atomically. Roles:

- ``reviewer`` sees originals and QA panels and decides (release, re-run, purge);
- ``viewer`` sees the status page and the quarantine list, without images, and cannot act.

The station re-reads the file when it changes on disk, so adding, removing or demoting a user
takes effect on the next request (sessions of a removed or demoted user stop working at once).
Passwords are never stored or logged; a login for an unknown name costs the same argon2
verification as one for a known name, so timing does not tell which names exist.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from deid_core.errors import ConfigError

#: User names: letters, digits and ``._@-``; no colon (the field separator), no spaces.
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
#: Shortest password `add-user` accepts.
MIN_PASSWORD_LENGTH = 12


class Role(StrEnum):
    REVIEWER = "reviewer"
    VIEWER = "viewer"


@dataclass(frozen=True)
class User:
    name: str
    role: Role

    @property
    def may_decide(self) -> bool:
        """Reviewers see originals and decide; viewers only look at status and the list."""
        return self.role is Role.REVIEWER


class UsersFileError(ConfigError):
    """The users file cannot be read or is malformed (the message names the line)."""


def valid_user_name(name: str) -> str:
    if not USER_NAME.match(name):
        raise UsersFileError(
            f"user name {name!r} is not allowed: use 1-64 letters, digits or ._@- "
            "(starting with a letter or digit)"
        )
    return name


def parse_users(text: str, source: str) -> dict[str, tuple[Role, str]]:
    """name -> (role, hash). Errors name the file and line, never a hash."""
    users: dict[str, tuple[Role, str]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":", 2)
        if len(parts) != 3:
            raise UsersFileError(f"{source}:{number}: expected name:role:hash")
        name, role, hashed = parts
        if not USER_NAME.match(name):
            raise UsersFileError(f"{source}:{number}: user name is not allowed")
        try:
            users[name] = (Role(role), hashed)
        except ValueError:
            raise UsersFileError(
                f"{source}:{number}: role must be reviewer or viewer, not {role!r}"
            ) from None
        if not hashed.startswith("$argon2"):
            raise UsersFileError(f"{source}:{number}: not an argon2 hash")
    return users


class UserStore:
    """The users file as the station sees it: re-read whenever it changes on disk."""

    def __init__(self, path: Path, hasher: PasswordHasher | None = None) -> None:
        self.path = path
        self.hasher = hasher or PasswordHasher()
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, tuple[Role, str]] = {}
        self._dummy: str | None = None

    def _dummy_hash(self, users: dict[str, tuple[Role, str]]) -> str:
        """Verified instead of a real hash for unknown names, with the same argon2 parameters as
        the file's hashes, so that both take as long."""
        with self._lock:
            if self._dummy is None:
                hasher = self.hasher
                for _, hashed in users.values():
                    with contextlib.suppress(InvalidHashError, ValueError):
                        hasher = PasswordHasher.from_parameters(extract_parameters(hashed))
                    break
                self._dummy = hasher.hash("not a password: unknown user")
            return self._dummy

    def _current(self) -> dict[str, tuple[Role, str]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise UsersFileError(
                f"{self.path}: users file not found; create it with "
                "`deid-gateway review add-user FILE USER --role reviewer`"
            ) from None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            if stamp != self._stamp:
                self._users = parse_users(self.path.read_text(encoding="utf-8"), str(self.path))
                self._stamp = stamp
            return self._users

    def check(self) -> int:
        """Read the file now (at start-up, so a bad file stops the station); returns the count."""
        return len(self._current())

    def user(self, name: str) -> User | None:
        entry = self._current().get(name)
        return User(name, entry[0]) if entry else None

    def users(self) -> list[User]:
        return [User(name, role) for name, (role, _) in sorted(self._current().items())]

    def verify(self, name: str, password: str) -> User | None:
        """The user when the password is right, else None (same cost either way)."""
        users = self._current()
        entry = users.get(name)
        hashed = entry[1] if entry else self._dummy_hash(users)
        try:
            self.hasher.verify(hashed, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if entry is None:
            return None
        return User(name, entry[0])


def _write_users(path: Path, users: dict[str, tuple[Role, str]]) -> None:
    """Replace the file atomically (temporary file, fsync, rename), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# deid-gateway review station users: name:role:argon2id hash (mode 0600)"]
    lines += [f"{name}:{role.value}:{hashed}" for name, (role, hashed) in sorted(users.items())]
    fd, tmp = tempfile.mkstemp(prefix=".users-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_users(path: Path) -> dict[str, tuple[Role, str]]:
    if not path.exists():
        return {}
    return parse_users(path.read_text(encoding="utf-8"), str(path))


def set_user(
    path: Path, name: str, role: Role, password: str, hasher: PasswordHasher | None = None
) -> bool:
    """Add a user or replace one's role and password. Returns True when the user is new."""
    valid_user_name(name)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UsersFileError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    users = _read_users(path)
    created = name not in users
    users[name] = (role, (hasher or PasswordHasher()).hash(password))
    _write_users(path, users)
    return created


def remove_user(path: Path, name: str) -> bool:
    """Remove a user; returns False when there was none of that name."""
    users = _read_users(path)
    if users.pop(name, None) is None:
        return False
    _write_users(path, users)
    return True
