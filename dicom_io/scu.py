"""Sending stored files to a DICOM archive: one association per batch, files sent as written.

The files are Part 10 files the gateway wrote itself (the outbox). They are streamed from disk in
their own transfer syntax (pynetdicom's chunked send, `STORE_SEND_CHUNKED_DATASET`), never decoded
and re-encoded, and the association proposes exactly the (SOP class, transfer syntax) pairs the
batch needs. Every socket gets TCP_NODELAY (`dicom_io.net`).

Outcomes are reported per file: a status for each file that got an answer and None for each file
not sent because the association failed; `AssociationFailed` says why no association was made.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom import AE, _config
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from deid_core.errors import InvalidInputError, RetryableError
from dicom_io.header import read_file_meta
from dicom_io.net import associate, client_ae

LOG = logging.getLogger("dicom_io.scu")

#: A presentation context list holds at most 128 entries (PS3.8 9.3.2.2).
MAX_CONTEXTS = 128

#: Status categories (PS3.4 C.4.2.1.4 / Annex B): warnings still mean the archive kept the data.
WARNING_STATUSES = frozenset({0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007})


def is_stored(status: int) -> bool:
    """Whether an archive's C-STORE status means it kept the instance."""
    return status == 0x0000 or status in WARNING_STATUSES


class AssociationFailed(RetryableError):
    """No association could be made (or it broke): `kind` is one of "unreachable", "refused",
    "aborted", "timeout", "tls" — a small fixed set, safe for metric labels."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class StoreTarget:
    """Where and how to send."""

    ae_title: str
    host: str
    port: int
    calling_ae_title: str
    ssl_context: ssl.SSLContext | None = None
    connect_timeout: float = 10.0
    dimse_timeout: float = 60.0
    max_pdu_size: int = 262144

    def describe(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def file_context(path: Path) -> tuple[str, str]:
    """(SOP class UID, transfer syntax UID) of a Part 10 file, from its file meta."""
    with path.open("rb") as fh:
        head = fh.read(4096)
    meta = read_file_meta(head)
    sop_class = meta.values.get("MediaStorageSOPClassUID")
    if not sop_class:
        raise InvalidInputError(f"{path.name}: file meta has no Media Storage SOP Class UID")
    return sop_class, meta.transfer_syntax


def send_files(
    target: StoreTarget,
    files: Sequence[Path],
    progress: Callable[[], None] | None = None,
) -> list[int | None]:
    """Send `files` over one association. Returns one entry per file: the archive's status, or
    None when the file was not sent (association lost). Raises AssociationFailed when no
    association could be established, InvalidInputError for a file that is not a Part 10 file.
    `progress` is called after each answered file, so a caller's liveness heartbeat keeps beating
    through a long batch to a slow archive."""
    if not files:
        return []
    # Files are always sent as stored, streamed from disk (see module docstring).
    _config.STORE_SEND_CHUNKED_DATASET = True
    contexts: dict[tuple[str, str], None] = {}
    for path in files:
        contexts[file_context(path)] = None
    if len(contexts) > MAX_CONTEXTS:
        raise InvalidInputError(
            f"a batch needs {len(contexts)} presentation contexts; at most {MAX_CONTEXTS} fit"
        )
    ae = _client_ae(target)
    ae.requested_contexts = [build_context(sop, [ts]) for sop, ts in contexts]
    assoc = _associate(ae, target)
    results: list[int | None] = []
    try:
        for path in files:
            if not assoc.is_established or (results and results[-1] is None):
                results.append(None)  # the association is gone: the rest waits for a retry
                continue
            try:
                rsp = assoc.send_c_store(path)
            except (ValueError, AttributeError) as exc:
                LOG.warning("cannot send a file: %s", exc)
                results.append(0xC000)
                continue
            status = getattr(rsp, "Status", None)
            results.append(int(status) if status is not None else None)
            if progress is not None:
                progress()
    finally:
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()
    return results


def _client_ae(target: StoreTarget) -> AE:
    return client_ae(target, target.max_pdu_size)


def _associate(ae: AE, target: StoreTarget) -> Any:
    """An established association with `target`, or AssociationFailed saying why not."""
    return associate(ae, target, AssociationFailed)


def echo(target: StoreTarget, timeout: float) -> None:
    """C-ECHO `target` within about `timeout` seconds (connect, associate, echo, release each
    bounded by it). Returns when the archive answered; raises AssociationFailed otherwise.

    An archive that accepts the association but not the Verification service, or answers the echo
    with a failure status, still counts as reachable: it is there and talks to us, and whether it
    stores is for the forwarder to find out."""
    quick = dataclasses.replace(target, connect_timeout=timeout, dimse_timeout=timeout)
    ae = _client_ae(quick)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, quick)
    try:
        if assoc.accepted_contexts:
            assoc.send_c_echo()
            if not assoc.is_established:
                raise AssociationFailed("aborted", f"{target.describe()} dropped the echo")
    finally:
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()
