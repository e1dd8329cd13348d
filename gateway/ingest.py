"""Ingest: what the DICOM listener hands each received instance to.

The order is the product's central promise: spool file written and fsynced (file and directory),
then the journal row, then — by returning — the success status. Any failure before the row is
committed raises, and the listener answers a failure status so the sender keeps the instance.
"""

from __future__ import annotations

import time
from pathlib import Path

from deid_core.errors import RetryableError
from deid_core.keys import ProjectKey
from dicom_io.header import read_file_meta, scan_dataset
from dicom_io.scp import (
    STATUS_OUT_OF_RESOURCES,
    AssociationInfo,
    ReceivedInstance,
    StoreRefused,
)
from gateway.events import (
    AssociationAccepted,
    AssociationClosed,
    AssociationRejected,
    EventBus,
    InstanceRefused,
    InstanceStored,
    RefusalReason,
)
from gateway.journal import Journal
from gateway.logs import get_logger
from gateway.spool import Spool, SpoolFull

LOG = get_logger("gateway.ingest")

#: The study key of an instance without a Study Instance UID (it is quarantined as unreadable).
NO_STUDY = "no-study"


def study_key(key: ProjectKey, study_instance_uid: str | None) -> str:
    """A keyed, non-reversible short id of a study for the journal, file names and logs."""
    if not study_instance_uid:
        return NO_STUDY
    return key.hmac("gateway-study-key", study_instance_uid.encode("ascii", "replace")).hex()[:16]


class Ingest:
    """The listener's sink: spool, journal, events."""

    def __init__(
        self,
        spool: Spool,
        journal: Journal,
        key: ProjectKey,
        events: EventBus,
        max_instance_bytes: int | None = None,
    ) -> None:
        self.spool = spool
        self.journal = journal
        self.key = key
        self.events = events
        self.max_instance_bytes = max_instance_bytes

    def association_accepted(self, info: AssociationInfo) -> None:
        self.events.emit(AssociationAccepted(association_id=info.association_id))

    def association_rejected(self, reason: str) -> None:
        self.events.emit(AssociationRejected(reason=RefusalReason(reason)))

    def association_closed(self, info: AssociationInfo, instances: int, aborted: bool) -> None:
        self.events.emit(
            AssociationClosed(
                association_id=info.association_id, instances=instances, aborted=aborted
            )
        )

    def refused(self, info: AssociationInfo, reason: str, status: int) -> None:
        self.events.emit(
            InstanceRefused(
                association_id=info.association_id, reason=RefusalReason(reason), status=status
            )
        )

    def store(self, instance: ReceivedInstance) -> None:
        started = time.perf_counter()
        if self.max_instance_bytes is not None and instance.size > self.max_instance_bytes:
            LOG.warning(
                "instance_refused",
                reason=RefusalReason.TOO_LARGE.value,
                size=instance.size,
                limit=self.max_instance_bytes,
            )
            raise StoreRefused(STATUS_OUT_OF_RESOURCES, RefusalReason.TOO_LARGE.value)
        skey = study_key(self.key, instance.header.study_instance_uid)
        try:
            spooled = self.spool.write((instance.file_meta, instance.dataset))
        except SpoolFull as exc:
            LOG.warning("instance_refused", reason="disk_full", detail=str(exc))
            raise StoreRefused(STATUS_OUT_OF_RESOURCES, RefusalReason.DISK_FULL.value) from None
        except OSError as exc:
            LOG.error("instance_refused", reason="write_error", error=exc.strerror)
            raise StoreRefused(STATUS_OUT_OF_RESOURCES, RefusalReason.WRITE_ERROR.value) from None
        info = instance.association
        try:
            self.journal.add_received(
                spooled.relative_path,
                skey,
                association_id=info.association_id,
                calling_ae=info.calling_ae,
                called_ae=info.called_ae,
                size=spooled.size,
            )
        except Exception:
            # Not acknowledged: remove the file so a retry by the sender is the only copy.
            self.spool.remove(spooled.relative_path)
            LOG.exception("instance_refused", reason="write_error", stage="journal")
            raise StoreRefused(STATUS_OUT_OF_RESOURCES, RefusalReason.WRITE_ERROR.value) from None
        self.events.emit(
            InstanceStored(
                association_id=info.association_id,
                study_key=skey,
                size_bytes=spooled.size,
                seconds=time.perf_counter() - started,
            )
        )


def adopt_orphans(spool: Spool, journal: Journal, key: ProjectKey) -> int:
    """Register spooled files that have no journal row (possible only after a power loss with
    `synchronous=NORMAL`, or a crash between the fsyncs and the row). Their File Meta Information
    says who sent them. Returns how many were adopted."""
    known = journal.known_spool_paths()
    adopted = 0
    for path in spool.files():
        relative = str(path.relative_to(spool.root))
        if relative in known:
            continue
        data = path.read_bytes()
        try:
            meta = read_file_meta(data)
            header = scan_dataset(memoryview(data)[meta.dataset_offset :], meta.transfer_syntax)
            skey = study_key(key, header.study_instance_uid)
        except RetryableError:
            raise
        except Exception:
            skey = NO_STUDY  # quarantined as unreadable by the pipeline
            meta = None
        values = meta.values if meta is not None else {}
        journal.add_received(
            relative,
            skey,
            calling_ae=values.get("SendingApplicationEntityTitle", ""),
            called_ae=values.get("ReceivingApplicationEntityTitle", ""),
            size=len(data),
            received_at=path.stat().st_mtime,
        )
        adopted += 1
    return adopted


def spool_relative(spool: Spool, path: Path) -> str:
    return str(path.relative_to(spool.root))
