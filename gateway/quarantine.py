"""Quarantine: instances that must not go onward, kept with their reason until a person decides.

Each entry is a folder `<quarantine>/<entry id>/` (mode 0700) holding `instance.dcm`, `entry.json`
(reason, route, destination, hashed study key, details) and any artifacts a pixel step produced
(e.g. a QA panel). Entry ids are random: no PHI in any path or listing. The instance kept is the
received original for rejections before forwarding (the operator may need to see what came in) and
the de-identified copy for a dead letter (what could not be delivered).

Operator decisions are recorded in the journal (`decisions`):

- release of a dead letter puts the copy back in its destination's outbox, attempts from zero;
- release of anything else puts the original back into the spool as a new arrival, optionally
  forcing a route (`--route`), accepting the pixels as they are (`--accept-pixels`: the pixel
  step is skipped) or accepting the pixel step's result despite its gate (`--waive-gate`: the
  step runs again, deterministically, and a gating step such as the lesion check accepts its
  own edit, see `PixelContext.waive_gate`);
- purge overwrites the files with zeros, fsyncs, then deletes them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deid_core.errors import PermanentError
from gateway.events import QuarantineReason
from gateway.interlock import release_refusal
from gateway.journal import Journal, QuarantineRow
from gateway.outbox import Outbox
from gateway.spool import DirectorySync, Spool, ensure_directory, fsync_directory, write_durably

INSTANCE_FILE = "instance.dcm"
#: An entry a release has claimed and is sending back (`Quarantine._claim`); "released" when done.
RELEASING = "releasing"
ENTRY_FILE = "entry.json"


class QuarantineError(PermanentError):
    """A quarantine command cannot be carried out as asked (unknown entry, bad release)."""


@dataclass(frozen=True)
class QuarantineEntry:
    row: QuarantineRow
    details: Mapping[str, Any]
    artifacts: list[str]
    folder: Path


class Quarantine:
    def __init__(
        self,
        root: Path,
        journal: Journal,
        dirsync: DirectorySync | None = None,
        route_pixels: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.journal = journal
        #: route name -> pixel step, for the release checks (gateway.interlock.release_refusal)
        self.route_pixels = dict(route_pixels) if route_pixels is not None else None
        self.dirsync = dirsync or DirectorySync()
        ensure_directory(root, self.dirsync)
        os.chmod(root, 0o700)

    def put(
        self,
        *,
        instance_id: int,
        data: bytes,
        reason: QuarantineReason,
        route: str,
        study_key: str,
        destination: str = "",
        details: Mapping[str, Any] | None = None,
        artifacts: Mapping[str, bytes] | None = None,
    ) -> str:
        """Keep `data` durably with its reason; record the entry. Returns the entry id."""
        entry_id = "q-" + uuid.uuid4().hex[:16]
        folder = self.root / entry_id
        folder.mkdir(mode=0o700)
        record = {
            "id": entry_id,
            "reason": reason.value,
            "route": route,
            "destination": destination,
            "study_key": study_key,
            "created_at": time.time(),
            "details": dict(details or {}),
            "artifacts": sorted((artifacts or {}).keys()),
        }
        write_durably(folder, INSTANCE_FILE, (data,), self.dirsync)
        for name, content in (artifacts or {}).items():
            safe = Path(name).name
            write_durably(folder, safe, (content,), self.dirsync)
        write_durably(
            folder, ENTRY_FILE, (json.dumps(record, indent=2).encode("utf-8"),), self.dirsync
        )
        self.dirsync.sync(self.root)
        self.journal.mark_quarantined(
            instance_id, entry_id, reason.value, route, study_key, destination
        )
        return entry_id

    def remove_orphans(self) -> int:
        """Folders without a journal entry were being written when the process died; the
        instance is still in its previous state and will be processed again. Folders of entries
        already released or purged outlived their decision (the process died between recording
        it and shredding them): they hold the original, so they are shredded now."""
        states = self.journal.quarantine_states()
        removed = 0
        for folder in self.root.glob("q-*"):
            if not folder.is_dir():
                continue
            state = states.get(folder.name)
            if state is None:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
            elif state in ("released", "purged"):
                self._shred(folder)
                removed += 1
        return removed

    def recover_interrupted_releases(self) -> int:
        """Entries a release claimed but never finished (the process died in between) are held
        again, for a person to decide again; their instance may have gone back to the pipeline
        already, and is then processed twice (deterministically: the same result). Called at
        the gateway's start-up; a `quarantine release` command running at that very moment is
        reverted too, with the same consequence at worst."""
        with self.journal.transaction() as db:
            cur = db.execute(
                "UPDATE quarantine SET state='held', updated_at=? WHERE state=?",
                (time.time(), RELEASING),
            )
            return cur.rowcount

    def list(self, include_closed: bool = False) -> list[QuarantineRow]:
        return self.journal.quarantine_entries(None if include_closed else "held")

    def show(self, entry_id: str) -> QuarantineEntry:
        row = self._row(entry_id)
        folder = self.root / entry_id
        details: dict[str, Any] = {}
        artifacts: list[str] = []
        entry_file = folder / ENTRY_FILE
        if entry_file.exists():
            record = json.loads(entry_file.read_text(encoding="utf-8"))
            details = record.get("details", {})
            artifacts = record.get("artifacts", [])
        return QuarantineEntry(row, details, artifacts, folder)

    def _row(self, entry_id: str) -> QuarantineRow:
        row = self.journal.quarantine_entry(entry_id)
        if row is None:
            raise QuarantineError(f"no quarantine entry {entry_id!r}")
        return row

    def release(
        self,
        entry_id: str,
        *,
        spool: Spool,
        outbox: Outbox,
        route: str | None = None,
        accept_pixels: bool = False,
        waive_gate: bool = False,
        force: bool = False,
        operator_note: str = "",
        decided_by: str = "",
    ) -> str:
        """Send an entry back in. Returns what happened, for the operator. `decided_by` (who)
        and `operator_note` (why) are recorded with the decision. Refused (QuarantineError) when
        `gateway.interlock.release_refusal` objects: accept_pixels outside burned-in entries or
        for a photograph on a flowedit route, waive_gate outside lesion-gate rejections, a re-run
        onto a weaker pixel step without `force`."""
        row = self._row(entry_id)
        if row.state != "held":
            raise _already(entry_id, row.state)
        folder = self.root / entry_id
        try:
            data = (folder / INSTANCE_FILE).read_bytes()
        except FileNotFoundError:  # decided meanwhile (the claim below would refuse it too)
            state = self._row(entry_id).state
            if state != "held":
                raise _already(entry_id, state) from None
            raise QuarantineError(f"entry {entry_id} has no kept instance") from None
        refusal = release_refusal(
            reason=row.reason,
            quarantined_on=row.route,
            data=data,
            route=route,
            accept_pixels=accept_pixels,
            force=force,
            route_pixels=self.route_pixels,
            waive_gate=waive_gate,
        )
        if refusal is not None:
            raise QuarantineError(f"entry {entry_id}: {refusal}")
        self._claim(entry_id, ("held",), RELEASING)
        try:
            message = self._send_back(
                row, data, spool, outbox, route, accept_pixels, waive_gate, force, operator_note,
                decided_by,
            )  # fmt: skip
        except BaseException:
            self._unclaim(entry_id, RELEASING, "held")
            raise
        self._shred(folder)
        return message

    def _claim(self, entry_id: str, from_states: tuple[str, ...], to: str) -> None:
        """Move the entry from one of `from_states` to `to` in one conditional UPDATE: of two
        concurrent decisions (threads, the review station and the CLI) exactly one wins; the
        other gets a QuarantineError saying what the entry already is."""
        marks = ",".join("?" * len(from_states))
        with self.journal.transaction() as db:
            cur = db.execute(
                f"UPDATE quarantine SET state=?, updated_at=? WHERE id=? AND state IN ({marks})",
                (to, time.time(), entry_id, *from_states),
            )
            won = cur.rowcount == 1
        if not won:
            raise _already(entry_id, self._row(entry_id).state)

    def _unclaim(self, entry_id: str, claimed: str, back: str) -> None:
        with self.journal.transaction() as db:
            db.execute(
                "UPDATE quarantine SET state=?, updated_at=? WHERE id=? AND state=?",
                (back, time.time(), entry_id, claimed),
            )

    def _send_back(
        self,
        row: QuarantineRow,
        data: bytes,
        spool: Spool,
        outbox: Outbox,
        route: str | None,
        accept_pixels: bool,
        waive_gate: bool,
        force: bool,
        operator_note: str,
        decided_by: str,
    ) -> str:
        entry_id = row.id
        detail: dict[str, Any] = {"reason": row.reason, "note": operator_note}
        if decided_by:
            detail["by"] = decided_by
        if row.reason == QuarantineReason.DEAD_LETTER.value:
            if row.instance_id is None:
                raise QuarantineError(f"entry {entry_id} has no instance to release")
            dead = self.journal.dead_row_for(row.instance_id, row.destination)
            if dead is None:
                raise QuarantineError(f"entry {entry_id}: no dead-lettered copy in the journal")
            relative = outbox.put(row.destination, row.study_key, data)
            self.journal.requeue(dead.id, relative)
            detail.update(action="requeued", destination=row.destination)
            message = f"requeued to destination {row.destination}"
        else:
            override: dict[str, Any] = {"released_from": entry_id}
            if route:
                override["route"] = route
            if accept_pixels:
                override["accept_pixels"] = True
            if waive_gate:
                override["waive_gate"] = True
            spooled = spool.write((data,))
            received = self.journal.instance(row.instance_id) if row.instance_id else None
            self.journal.add_received(
                spooled.relative_path,
                row.study_key,
                calling_ae=received.calling_ae if received else "",
                called_ae=received.called_ae if received else "",
                size=spooled.size,
                override=override,
            )
            detail.update(
                action="reprocess",
                route=route or "",
                accept_pixels=accept_pixels,
                waive_gate=waive_gate,
                force=force,
            )
            message = "sent back to the pipeline" + (f" on route {route}" if route else "")
        self.journal.close_quarantine_entry(entry_id, "released", "release", detail)
        return message

    def purge(self, entry_id: str, operator_note: str = "", decided_by: str = "") -> None:
        row = self._row(entry_id)
        if row.state == "purged":
            raise QuarantineError(f"entry {entry_id} is already purged")
        self._claim(entry_id, ("held", "released"), "purged")
        try:
            self._shred(self.root / entry_id)
        except BaseException:
            self._unclaim(entry_id, "purged", row.state)
            raise
        detail: dict[str, Any] = {"reason": row.reason, "note": operator_note}
        if decided_by:
            detail["by"] = decided_by
        self.journal.close_quarantine_entry(entry_id, "purged", "purge", detail)

    def _shred(self, folder: Path) -> None:
        """Overwrite each file with zeros and fsync before unlinking ("securely-ish": on SSDs and
        copy-on-write file systems old blocks may survive; use encrypted storage for more)."""
        if not folder.exists():
            return
        for path in folder.iterdir():
            if path.is_file():
                size = path.stat().st_size
                with path.open("r+b") as fh:
                    remaining = size
                    block = b"\x00" * 65536
                    while remaining > 0:
                        n = min(remaining, len(block))
                        fh.write(block[:n])
                        remaining -= n
                    fh.flush()
                    os.fsync(fh.fileno())
                path.unlink()
        folder.rmdir()
        fsync_directory(self.root)


def _already(entry_id: str, state: str) -> QuarantineError:
    return QuarantineError(
        f"entry {entry_id} is already {'being released' if state == RELEASING else state}"
    )
