"""Running the gateway: `serve`, `quarantine list|show|release|purge`, `demo`."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.commands import out
from gateway.config import load_config
from gateway.logs import configure_logging

CONFIG_OPTION = typer.Option("--config", "-c", help="YAML configuration file")


def serve(config: Annotated[Path, CONFIG_OPTION]) -> None:
    """Run the gateway in the foreground until SIGTERM or Ctrl-C: structured logs on stderr,
    /metrics, /healthz and /readyz on the `metrics` address."""
    from gateway.node import GatewayNode

    cfg = load_config(config)
    configure_logging(cfg.logging.level, cfg.logging.format)
    key = cfg.load_key()
    if cfg.executor.kind == "local" and any(r.pixels == "flowedit" for r in cfg.routes):
        from gateway.commands.model import offline_ml_environment

        offline_ml_environment()  # the models load in this process
    node = GatewayNode(cfg, key, drain_timeout=cfg.node.drain_timeout_s)
    try:
        node.start()
        node.serve_forever()
    finally:
        node.shutdown()


quarantine_app = typer.Typer(
    help="Inspect and decide on quarantined instances (ids and study keys are pseudonymous).",
    no_args_is_help=True,
)


def _open(config: Path) -> tuple[Any, Any]:
    from gateway.node import Storage

    cfg = load_config(config)
    configure_logging("warning", cfg.logging.format)
    return cfg, Storage.open(cfg)


def _operator() -> str:
    """Who decides on the command line, for the journal and the audit trail."""
    import getpass

    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):
        return "cli:uid" + str(os.getuid())


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@quarantine_app.command("list")
def quarantine_list(
    config: Annotated[Path, CONFIG_OPTION],
    all_entries: Annotated[
        bool, typer.Option("--all", help="include released and purged entries")
    ] = False,
) -> None:
    """List quarantine entries: id, when, reason, route, destination, hashed study key."""
    _, storage = _open(config)
    try:
        rows = storage.quarantine.list(include_closed=all_entries)
        if not rows:
            out.print("quarantine is empty")
            return
        out.print(f"{'id':<20} {'created':<21} {'reason':<28} {'route':<12} {'dest':<10} study")
        for r in rows:
            state = "" if r.state == "held" else f"  ({r.state})"
            out.print(
                f"{r.id:<20} {_when(r.created_at):<21} {r.reason:<28} {r.route or '-':<12} "
                f"{r.destination or '-':<10} {r.study_key}{state}"
            )
        out.print(f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}")
    finally:
        storage.close()


@quarantine_app.command("show")
def quarantine_show(
    entry_id: Annotated[str, typer.Argument(help="entry id from `quarantine list`")],
    config: Annotated[Path, CONFIG_OPTION],
) -> None:
    """Show one entry: reason, details (figures), artifacts, decisions."""
    _, storage = _open(config)
    try:
        entry = storage.quarantine.show(entry_id)
        r = entry.row
        out.print(f"entry        {r.id}  ({r.state})")
        out.print(f"created      {_when(r.created_at)}")
        out.print(f"reason       {r.reason}")
        out.print(f"route        {r.route or '-'}")
        out.print(f"destination  {r.destination or '-'}")
        out.print(f"study key    {r.study_key}")
        for name, value in sorted(entry.details.items()):
            out.print(f"detail       {name} = {value}")
        for name in entry.artifacts:
            out.print(f"artifact     {entry.folder / name}")
        for d in storage.journal.decisions(entry_id):
            out.print(f"decision     {_when(d['at'])} {d['action']} {d['detail']}")
    finally:
        storage.close()


@quarantine_app.command("release")
def quarantine_release(
    entry_id: Annotated[str, typer.Argument(help="entry id from `quarantine list`")],
    config: Annotated[Path, CONFIG_OPTION],
    route: Annotated[
        str | None, typer.Option("--route", help="process on this route instead of matching")
    ] = None,
    accept_pixels: Annotated[
        bool,
        typer.Option("--accept-pixels", help="skip the pixel step: a person checked the pixels"),
    ] = False,
    waive_gate: Annotated[
        bool,
        typer.Option(
            "--waive-gate",
            help="run the pixel step again and accept its result despite its gate "
            "(e.g. a lesion IoU below threshold): a person checked the edit",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="allow --route onto a route whose pixel step is weaker than the one the entry "
            "was quarantined on (e.g. flowedit -> none)",
        ),
    ] = False,
    note: Annotated[str, typer.Option("--note", help="recorded with the decision")] = "",
) -> None:
    """Send an entry back in: a dead letter to its outbox, anything else to the pipeline.
    --accept-pixels is only for burned-in annotation entries, never for a photograph on a
    flowedit route; --route onto a weaker pixel step needs --force."""
    from deid_core.errors import ConfigError
    from gateway.review.audit import AuditAction, AuditTrail

    cfg, storage = _open(config)
    try:
        if route is not None and route not in {r.name for r in cfg.routes} | {"default"}:
            raise ConfigError(f"--route: no route named {route!r} in {config}")
        message = storage.quarantine.release(
            entry_id,
            spool=storage.spool,
            outbox=storage.outbox,
            route=route,
            accept_pixels=accept_pixels,
            waive_gate=waive_gate,
            force=force,
            operator_note=note,
            decided_by=_operator(),
        )
        AuditTrail(storage.journal).record(
            _operator(),
            "operator",
            AuditAction.RELEASE,
            entry_id=entry_id,
            why=note,
            outcome=message,
        )
        out.print(f"{entry_id}: {message}")
    finally:
        storage.close()


@quarantine_app.command("purge")
def quarantine_purge(
    entry_id: Annotated[str, typer.Argument(help="entry id from `quarantine list`")],
    config: Annotated[Path, CONFIG_OPTION],
    note: Annotated[str, typer.Option("--note", help="recorded with the decision")] = "",
) -> None:
    """Delete an entry for good (files overwritten with zeros, then removed)."""
    from gateway.review.audit import AuditAction, AuditTrail

    _, storage = _open(config)
    try:
        storage.quarantine.purge(entry_id, operator_note=note, decided_by=_operator())
        AuditTrail(storage.journal).record(
            _operator(),
            "operator",
            AuditAction.PURGE,
            entry_id=entry_id,
            why=note,
            outcome="purged",
        )
        out.print(f"{entry_id}: purged")
    finally:
        storage.close()


def demo(
    workdir: Annotated[
        Path | None,
        typer.Option("--workdir", help="keep the demo's files here (default: a temporary folder)"),
    ] = None,
) -> None:
    """A complete tour on this machine: gateway + local archive + sample studies + summary."""
    from gateway.demo import run_demo

    run_demo(workdir)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.add_typer(quarantine_app, name="quarantine")
    app.command("demo")(demo)
