"""The review station's commands: users (`add-user`, `remove-user`, `list-users`) and the audit
trail's export (`audit-export`). The station itself runs inside `deid-gateway serve` when the
configuration enables it (`review: {enabled: true}`)."""

from __future__ import annotations

import datetime as dt
import getpass
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from gateway.commands import out
from gateway.config import load_config

review_app = typer.Typer(
    help="The review station: users and roles, audit export.", no_args_is_help=True
)


def _read_password(from_stdin: bool) -> str:
    from gateway.review.users import UsersFileError

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        raise UsersFileError("no terminal to ask for the password: pipe it with --password-stdin")
    return password


@review_app.command("add-user")
def add_user(
    file: Annotated[Path, typer.Argument(help="the users file (created with mode 0600)")],
    user: Annotated[str, typer.Argument(help="user name (letters, digits, ._@-)")],
    role: Annotated[
        str, typer.Option("--role", help="reviewer (sees originals, decides) or viewer")
    ] = "viewer",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from standard input")
    ] = False,
) -> None:
    """Add a user, or set an existing user's role and password (argon2id hash, never stored)."""
    from gateway.review.users import Role, UsersFileError, set_user, valid_user_name

    try:
        chosen = Role(role)
    except ValueError:
        raise UsersFileError(f"--role must be reviewer or viewer, not {role!r}") from None
    valid_user_name(user)
    created = set_user(file, user, chosen, _read_password(password_stdin))
    out.print(f"{'added' if created else 'updated'} {user} ({chosen.value}) in {file}")


@review_app.command("remove-user")
def remove_user_command(
    file: Annotated[Path, typer.Argument(help="the users file")],
    user: Annotated[str, typer.Argument(help="user name")],
) -> None:
    """Remove a user; the station ends their sessions on their next request."""
    from gateway.review.users import UsersFileError, remove_user

    if not remove_user(file, user):
        raise UsersFileError(f"{file}: no user named {user!r}")
    out.print(f"removed {user} from {file}")


@review_app.command("list-users")
def list_users(file: Annotated[Path, typer.Argument(help="the users file")]) -> None:
    """List users and roles (never hashes)."""
    from gateway.review.users import UserStore

    for u in UserStore(file).users():
        out.print(f"{u.name:<32} {u.role.value}")


def _day(text: str | None, option: str) -> float | None:
    from deid_core.errors import ConfigError

    if text is None:
        return None
    try:
        return dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        raise ConfigError(f"{option}: expected a date as YYYY-MM-DD, got {text!r}") from None


@review_app.command("audit-export")
def audit_export(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML configuration file")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write here (mode 0600), not stdout")
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="from this day (UTC)")] = None,
    until: Annotated[str | None, typer.Option("--until", help="to this day, included")] = None,
) -> None:
    """Export the audit trail (views of originals, decisions, sign-ins) as CSV."""
    from gateway.journal import Journal
    from gateway.review.audit import AuditAction, AuditTrail, audit_csv, read_audit
    from gateway.review.reader import JournalReader

    cfg = load_config(config)
    start, end = _day(since, "--since"), _day(until, "--until")
    journal = Journal(cfg.storage.journal)
    try:
        trail = AuditTrail(journal)
        text = audit_csv(
            read_audit(
                JournalReader(cfg.storage.journal),
                since=start,
                until=end + 86400 if end is not None else None,
            )
        )
        try:
            who = "cli:" + getpass.getuser()
        except (KeyError, OSError):
            who = f"cli:uid{os.getuid()}"
        trail.record(who, "operator", AuditAction.EXPORT, detail={"via": "cli"})
    finally:
        journal.close()
    if output is None:
        sys.stdout.write(text)
        return
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    out.print(f"wrote {text.count(chr(10)) - 1} audit records to {output}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")
