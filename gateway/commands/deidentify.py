"""Batch de-identification of files and folders, and `explain`.

`deid-gateway deidentify INPUT... --out DIR` reads every file under the inputs (folders
recursively), de-identifies each on all cores and writes it atomically to
DIR/<study>/<series>/<instance>.dcm, named by the pseudonymous UIDs (never by anything identifying).
A file that cannot be processed is reported with its reason and skipped; the others go on; the exit
status is 1 when any failed. DICOMDIR files are skipped (an index, not an instance).

`deid-gateway explain FILE` prints, per attribute at every depth, the action and why. It prints no
values, and its decisions do not depend on the key, so it runs with a throw-away key. `--tag`
(keyword or tag) narrows it to some attributes, or without FILE prints the profile's rule.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from deid_core.errors import DeidGatewayError, InvalidInputError
from deid_core.keys import ProjectKey
from gateway.commands import err, out
from gateway.config import GatewayConfig, load_config

if TYPE_CHECKING:  # pydicom and the engine load only when a command of this module runs
    from deid_core.deidentify import Deidentifier

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "defaults" / "gateway.yaml"
_DICOMDIR_REASON = "DICOMDIR"


@dataclass(frozen=True)
class Outcome:
    """What happened to one input file (sent back from a worker; no PHI in it)."""

    path: str
    status: str  # "ok" | "failed" | "skipped"
    detail: str = ""
    output: str = ""


# Per-process state of the worker pool: set once by the initializer, read by every task.
_WORKER: dict[str, object] = {}


def _init_worker(deid: Deidentifier, out_dir: str, fsync: bool) -> None:
    _quiet_pydicom()
    _WORKER["deid"] = deid
    _WORKER["out"] = Path(out_dir)
    _WORKER["fsync"] = fsync


def _quiet_pydicom() -> None:
    """pydicom's value warnings quote the values (PHI): never let them reach a terminal or log."""
    import warnings

    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    warnings.filterwarnings("ignore", module=r"pydicom\..*")


def _uid_name(ds: object, keyword: str) -> str:
    value = str(getattr(ds, keyword, "") or "").strip()
    # Pseudonymous UIDs are digits and dots; anything else (a missing value) gets a fixed name.
    return value if value and all(c.isdigit() or c == "." for c in value) else f"no-{keyword}"


def _process_chunk(paths: list[str]) -> list[Outcome]:
    """De-identify a few files, then write them together (one round of fsyncs for all)."""
    from deid_core.deidentify import Deidentifier
    from dicom_io.files import encode_dataset, read_dataset, write_files_atomic

    deid = _WORKER["deid"]
    out_dir = _WORKER["out"]
    assert isinstance(deid, Deidentifier) and isinstance(out_dir, Path)
    outcomes: list[Outcome] = []
    pending: list[tuple[str, str, bytes]] = []
    for path in paths:
        try:
            result = deid.deidentify(read_dataset(path))
            name = (
                Path(_uid_name(result, "StudyInstanceUID"))
                / _uid_name(result, "SeriesInstanceUID")
                / f"{_uid_name(result, 'SOPInstanceUID')}.dcm"
            )
            pending.append((path, str(name), encode_dataset(result)))
        except DeidGatewayError as exc:
            status = "skipped" if _DICOMDIR_REASON in str(exc) else "failed"
            outcomes.append(Outcome(path, status, str(exc)))
        except Exception as exc:  # a bug: report it per file and keep the batch going
            outcomes.append(Outcome(path, "failed", f"internal error ({type(exc).__name__})"))
    errors = write_files_atomic(
        [(data, out_dir / rel) for _, rel, data in pending], fsync=bool(_WORKER["fsync"])
    )
    for (path, rel, _), error in zip(pending, errors, strict=True):
        if error is None:
            outcomes.append(Outcome(path, "ok", output=rel))
        else:
            outcomes.append(Outcome(path, "failed", str(error)))
    return outcomes


def collect_files(inputs: list[Path], exclude: Path | None = None) -> list[Path]:
    """Every regular file named or under a named folder, once, in a stable order."""
    seen: set[Path] = set()
    files: list[Path] = []
    excluded = exclude.resolve() if exclude is not None else None
    for item in inputs:
        if item.is_dir():
            candidates: Iterator[Path] = (p for p in sorted(item.rglob("*")) if p.is_file())
        else:
            candidates = iter([item])
        for path in candidates:
            resolved = path.resolve()
            if excluded is not None and resolved.is_relative_to(excluded):
                continue
            if resolved not in seen:
                seen.add(resolved)
                files.append(path)
    return files


def _load(config: Path | None, profile: str) -> tuple[GatewayConfig, Deidentifier]:
    from gateway.profiles import build_deidentifier

    cfg = load_config(config or DEFAULT_CONFIG)
    return cfg, build_deidentifier(cfg, profile, cfg.load_key())


def _workers(requested: int | None, n_files: int) -> int:
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = requested or available or 1
    return max(1, min(n, n_files))


def _chunks(paths: list[str], workers: int) -> list[list[str]]:
    """Groups of files per task: small enough to keep every worker busy to the end, large enough
    that one round of fsyncs covers many files."""
    size = max(1, min(32, len(paths) // (workers * 4)))
    return [paths[i : i + size] for i in range(0, len(paths), size)]


def _run(
    files: list[Path], deid: Deidentifier, out_dir: Path, workers: int, fsync: bool
) -> Iterator[list[Outcome]]:
    chunks = _chunks([str(p) for p in files], workers)
    if workers <= 1:
        _init_worker(deid, str(out_dir), fsync)
        for chunk in chunks:
            yield _process_chunk(chunk)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(deid, str(out_dir), fsync)) as pool:
        yield from pool.imap_unordered(_process_chunk, chunks)


def deidentify(
    inputs: Annotated[list[Path], typer.Argument(help="DICOM files and folders (recursive)")],
    out_dir: Annotated[Path, typer.Option("--out", help="output folder")],
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML configuration (default: the embedded one)")
    ] = None,
    profile: Annotated[
        str, typer.Option("--profile", help="profile name in the config")
    ] = "default",
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="processes (default: all cores)")
    ] = None,
    fsync: Annotated[
        bool, typer.Option("--fsync/--no-fsync", help="fsync every output before renaming it")
    ] = True,
) -> None:
    """De-identify DICOM files into OUT/<study>/<series>/<instance>.dcm (pseudonymous names)."""
    missing = [p for p in inputs if not p.exists()]
    for p in missing:
        err.print(f"[red]not found:[/] {escape(str(p))}")
    _cfg, deid = _load(config, profile)
    _quiet_pydicom()
    files = collect_files([p for p in inputs if p.exists()], exclude=out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_workers = _workers(workers, len(files))
    started = time.perf_counter()
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    failures: list[Outcome] = []
    outputs: dict[str, str] = {}
    duplicates = 0
    progress = Progress(
        TextColumn("de-identifying"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    with progress:
        task = progress.add_task("files", total=len(files), failed=0)
        for batch in _run(files, deid, out_dir, n_workers, fsync):
            for outcome in batch:
                counts[outcome.status] += 1
                if outcome.status == "failed":
                    failures.append(outcome)
                elif outcome.status == "ok":
                    if outcome.output in outputs:
                        duplicates += 1
                    outputs[outcome.output] = outcome.path
            progress.update(task, advance=len(batch), failed=counts["failed"])
    elapsed = time.perf_counter() - started
    for f in sorted(failures, key=lambda o: o.path):
        err.print(f"[red]FAILED[/] {escape(f.path)}: {escape(f.detail)}")
    rate = counts["ok"] / elapsed if elapsed > 0 else 0.0
    out.print(
        f"{counts['ok']} de-identified, {counts['failed']} failed, {counts['skipped']} skipped "
        f"(DICOMDIR) of {len(files)} files in {elapsed:.2f} s ({rate:.1f} files/s, "
        f"{n_workers} worker(s)) -> {escape(str(out_dir))}"
    )
    if duplicates:
        out.print(
            f"{duplicates} input(s) had the SOP Instance UID of another input: one output kept each"
        )
    if counts["failed"] or missing:
        raise typer.Exit(1)


_TAG_TEXT = re.compile(r"^\(?\s*(?:0x)?([0-9A-Fa-f]{4})\s*,?\s*([0-9A-Fa-f]{4})\s*\)?$")


def parse_attribute(text: str) -> int:
    """A tag from a keyword (PatientName) or a tag ((0010,0010), 0010,0010, 00100010,
    0x00100010). An unknown one is a clear error, not a KeyError."""
    from pydicom.datadict import dictionary_has_tag, tag_for_keyword

    value = text.strip()
    match = _TAG_TEXT.match(value)
    if match:
        tag = int(match.group(1) + match.group(2), 16)
        if (tag >> 16) & 1 or dictionary_has_tag(tag) or 0x5000 <= tag >> 16 <= 0x60FF:
            return tag
        raise InvalidInputError(
            f"--tag {value}: not in the DICOM dictionary (its rule: removed as unknown)"
        )
    found = tag_for_keyword(value) if value.isidentifier() else None
    if found is None:
        raise InvalidInputError(
            f"--tag {value!r}: not a DICOM keyword or tag; give a keyword such as PatientName "
            "or a tag such as (0010,0010)"
        )
    return int(found)


def explain(
    file: Annotated[Path | None, typer.Argument(help="a DICOM file (optional with --tag)")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML configuration (default: the embedded one)")
    ] = None,
    profile: Annotated[
        str, typer.Option("--profile", help="profile name in the config")
    ] = "default",
    tag: Annotated[
        list[str] | None,
        typer.Option(
            "--tag",
            help="only these attributes (keyword or tag; repeatable); without FILE: the "
            "profile's rule for each",
        ),
    ] = None,
) -> None:
    """Print, per attribute (at every depth), the action and why. Prints no values."""
    from dicom_io.files import read_dataset
    from gateway.profiles import build_deidentifier

    wanted = {parse_attribute(t) for t in tag or ()}
    if file is None and not wanted:
        raise InvalidInputError("explain: give a DICOM file, or --tag ATTRIBUTE, or both")
    cfg = load_config(config or DEFAULT_CONFIG)
    _quiet_pydicom()
    # Decisions never depend on the key: a throw-away key avoids needing the secret here.
    deid = build_deidentifier(cfg, profile, ProjectKey.generate())
    if file is None:
        _explain_rules(deid, sorted(wanted))
        return
    ds = read_dataset(file)
    decisions = deid.explain(ds)
    if wanted:
        texts = {f"({t >> 16:04X},{t & 0xFFFF:04X})" for t in wanted}
        decisions = [d for d in decisions if d.tag in texts]
        if not decisions:
            out.print("none of the given attributes occurs in this file (see --tag without FILE)")
    if out.is_terminal:
        table = Table(title=f"{file.name}: profile {profile!r}", expand=False)
        for column in ("attribute", "tag", "action", "rule", "why"):
            table.add_column(column, overflow="fold")
        for d in decisions:
            table.add_row(escape(d.path), d.tag, d.action, d.rule, escape(d.reason))
        out.print(table)
    else:  # piped: one tab-separated line per attribute, easy to grep
        out.print("attribute\ttag\taction\trule\twhy", markup=False)
        for d in decisions:
            out.print(f"{d.path}\t{d.tag}\t{d.action}\t{d.rule}\t{d.reason}", markup=False)
    options = ", ".join(sorted(o.value for o in deid.profile.options)) or "none"
    out.print(f"options: {options}; table edition {deid.profile.table.edition}")


def _explain_rules(deid: Deidentifier, tags: list[int]) -> None:
    """The profile's rule per attribute, without a file (combined codes such as X/Z/D are settled
    by the attribute's Type in each instance's IOD)."""
    from deid_core.profile import keyword_of

    out.print("attribute\ttag\trule\twhy", markup=False)
    for t in tags:
        text = f"({t >> 16:04X},{t & 0xFFFF:04X})"
        if (t >> 16) & 1:
            out.print(
                f"{text}\t{text}\tX\tprivate attribute: removed unless retain_safe_private "
                "keeps it by its private creator",
                markup=False,
            )
            continue
        rule = deid.profile.rule(t)
        out.print(f"{keyword_of(t) or text}\t{text}\t{rule.code}\t{rule.reason}", markup=False)
    options = ", ".join(sorted(o.value for o in deid.profile.options)) or "none"
    out.print(f"options: {options}; table edition {deid.profile.table.edition}")


def register(app: typer.Typer) -> None:
    app.command("deidentify")(deidentify)
    app.command("explain")(explain)
