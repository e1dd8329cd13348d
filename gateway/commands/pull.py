"""`deid-gateway pull`: fetch studies from a configured PACS into the gateway.

    deid-gateway pull --source pacs --accession-list list.csv --config gateway.yaml
    deid-gateway pull --source pacs --study-uid 1.2.3 --study-uid 1.2.4 --config gateway.yaml

Against a running gateway (the default): with `retrieve: move` the PACS sends the studies to the
running gateway's listener (its AE title, host and port must be known to the PACS); with
`retrieve: get` this command receives them itself and writes them into the gateway's spool and
journal, where the running gateway picks them up. With `--embedded` the command starts a gateway
node of its own from the same configuration (listener included), pulls, waits until the pulled
studies have been forwarded or quarantined (or `--wait` passes), and stops: for a one-off pull on
a machine where no gateway runs. Never run `--embedded` beside a running gateway on the same
configuration: both would listen on one port.

The report (CSV, mode 0600) lists each row with the identifier the operator gave; the screen and
the logs name rows by line number and a keyed hash only. Exit status 0 when every row was
retrieved, 1 when any was missing, partial, failed or invalid, 2 for a configuration error.
"""

from __future__ import annotations

import datetime as dt
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from deid_core.errors import ConfigError
from gateway.commands import err, out
from gateway.config import GatewayConfig, load_config
from gateway.logs import configure_logging

if TYPE_CHECKING:
    from gateway.pull import PullRow, RowResult

CONFIG_OPTION = typer.Option("--config", "-c", help="YAML configuration file")


def _listening(host: str, port: int, timeout: float = 3.0) -> bool:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _rows(accession_list: Path | None, study_uids: list[str] | None) -> list[PullRow]:
    from gateway.pull import read_accession_list, study_uid_rows

    if (accession_list is None) == (not study_uids):
        raise ConfigError("give either --accession-list FILE or one or more --study-uid UID")
    if accession_list is not None:
        return read_accession_list(accession_list)
    return study_uid_rows(study_uids or [])


def _default_report(source: str) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(f"pull-{source}-{stamp}.csv")


def _table(results: list[RowResult]) -> Table:
    table = Table(title="pull report (rows by line and keyed hash)")
    for name in ("line", "row key", "status", "studies", "retrieved", "detail"):
        table.add_column(name)
    for r in results:
        expected = "" if r.expected is None else f"/{r.expected}"
        table.add_row(
            str(r.row.line),
            r.row_key,
            r.status.value,
            str(r.studies),
            f"{r.retrieved}{expected}" + (f" ({r.failed} failed)" if r.failed else ""),
            escape(r.detail),
        )
    return table


def _wait_for_embedded(node: object, timeout: float) -> dict[str, int]:
    """Until nothing the node holds waits for the pipeline or a forwarder, or `timeout`."""
    from gateway.node import GatewayNode

    assert isinstance(node, GatewayNode)
    deadline = time.monotonic() + timeout
    while True:
        states = node.backlog().journal_states
        if states.get("received", 0) == 0 and states.get("queued", 0) == 0:
            return states
        if time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def pull(
    source: Annotated[str, typer.Option("--source", help="a PACS named under `sources:`")],
    config: Annotated[Path, CONFIG_OPTION],
    accession_list: Annotated[
        Path | None,
        typer.Option(
            "--accession-list",
            help="CSV with an AccessionNumber column (optionally PatientID), or one accession "
            "number per line",
        ),
    ] = None,
    study_uid: Annotated[
        list[str] | None, typer.Option("--study-uid", help="a Study Instance UID (repeatable)")
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="report CSV (default pull-SOURCE-TIME.csv, mode 0600)"),
    ] = None,
    embedded: Annotated[
        bool,
        typer.Option(
            "--embedded",
            help="start a gateway node from the configuration for this pull (no gateway runs)",
        ),
    ] = False,
    wait: Annotated[
        float,
        typer.Option(
            "--wait", help="--embedded: seconds to wait for pulled studies to be forwarded"
        ),
    ] = 600.0,
) -> None:
    """Pull studies from a PACS (C-FIND, then C-MOVE or C-GET) into the gateway's routes."""
    from gateway.events import EventBus
    from gateway.ingest import Ingest
    from gateway.pull import Puller, summary, write_report

    cfg: GatewayConfig = load_config(config)
    configure_logging("warning", cfg.logging.format)
    rows = _rows(accession_list, study_uid)
    if source not in cfg.sources:
        known = ", ".join(sorted(cfg.sources)) or "none configured under `sources:`"
        raise ConfigError(f"--source: no source named {source!r} ({known})")
    src = cfg.sources[source]
    key = cfg.load_key()
    report = report or _default_report(source)

    node = None
    storage = None
    sink = None
    if embedded:
        from gateway.node import GatewayNode

        if _listening(cfg.node.host, cfg.node.port):
            raise ConfigError(
                f"--embedded: something already listens on {cfg.node.host}:{cfg.node.port} "
                "(a running gateway?); pull without --embedded to use it"
            )
        node = GatewayNode(cfg, key, monitor=False)
        node.start()
        assert node.storage is not None
        sink = Ingest(
            node.storage.spool,
            node.storage.journal,
            key,
            node.events,
            max_instance_bytes=cfg.storage.max_instance_bytes,
        )
    else:
        running = _listening(cfg.node.host, cfg.node.port)
        if src.retrieve == "move" and not running:
            raise ConfigError(
                f"no gateway listens on {cfg.node.host}:{cfg.node.port} to receive the C-MOVE; "
                f"start it (`deid-gateway serve --config {config}`) or pass --embedded"
            )
        if src.retrieve == "get":
            from gateway.node import Storage

            storage = Storage.open(cfg)
            sink = Ingest(
                storage.spool,
                storage.journal,
                key,
                EventBus(),
                max_instance_bytes=cfg.storage.max_instance_bytes,
            )
            if not running:
                err.print(
                    "note: no gateway is running; the pulled instances wait in the spool until "
                    "`deid-gateway serve` starts"
                )
    try:
        puller = Puller(source, cfg, key, sink=sink)
        with Progress(
            TextColumn("pulling from {task.fields[source]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows · {task.fields[missing]} missing · {task.fields[bad]} not retrieved"),
            TimeElapsedColumn(),
            console=err,
            transient=False,
        ) as progress:
            task = progress.add_task("pull", total=len(rows), source=source, missing=0, bad=0)
            tally = {"missing": 0, "bad": 0}

            def done(result: RowResult) -> None:
                if result.status.value == "missing":
                    tally["missing"] += 1
                elif result.status.value != "retrieved":
                    tally["bad"] += 1
                progress.update(task, advance=1, missing=tally["missing"], bad=tally["bad"])

            results = puller.pull(rows, done)
        write_report(report, results)
        out.print(_table(results))
        counts = summary(results)
        out.print(
            ", ".join(f"{n} {s}" for s, n in counts.items() if n)
            + f" — report: {escape(str(report))}"
        )
        if node is not None:
            states = _wait_for_embedded(node, wait)
            out.print(
                f"embedded gateway: {states.get('forwarded', 0)} forwarded, "
                f"{states.get('quarantined', 0)} quarantined, "
                f"{states.get('received', 0) + states.get('queued', 0)} still waiting "
                "(they resume when the gateway next starts)"
            )
    finally:
        if node is not None:
            node.shutdown()
        if storage is not None:
            storage.close()
    if any(r.status.value != "retrieved" for r in results):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("pull")(pull)
