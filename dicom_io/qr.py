"""Query/Retrieve SCU (PS3.4 Annex C): find studies on a PACS, and have them moved or got.

- `find_studies`: C-FIND at STUDY level in the Study Root model, with exact-match keys only.
- `move_study`: C-MOVE of one study to a named AE (the gateway's own listener); the PACS opens
  its own association to that AE and stores each instance there, and our listener answers each
  only once it is durable. The final response counts completed / failed / warning sub-operations.
- `get_study`: C-GET of one study: the PACS stores the instances back over this association
  (SCP/SCU role selection for the storage classes), and each is handed to a `ReceiveSink` (the
  gateway's ingest) before its C-STORE is answered, exactly as on the listener.

One association per operation. Matching values are never logged; errors name the PACS by AE
title and address (configuration), never a query value.
"""

from __future__ import annotations

import logging
import ssl
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.presentation import build_context, build_role
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from deid_core.errors import InvalidInputError, RetryableError
from dicom_io.net import associate, client_ae
from dicom_io.scp import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
    AssociationInfo,
    ReceiveSink,
    instance_from_event,
    status_for_error,
)

LOG = logging.getLogger("dicom_io.qr")

#: Transfer syntaxes we accept for instances a C-GET brings back: as stored by most PACS.
GET_TRANSFER_SYNTAXES = [
    str(ts)
    for ts in (
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
        JPEG2000Lossless,
        JPEG2000,
        RLELossless,
    )
]

#: Final C-MOVE / C-GET statuses that mean the PACS could not start (PS3.4 C.4.2.1.5, C.4.3.1.4).
_RETRIEVE_STATUS_TEXT = {
    0xA701: "out of resources: unable to calculate the number of matches",
    0xA702: "out of resources: unable to perform sub-operations",
    0xA801: "the PACS does not know the move destination (add our AE title, host and port to it)",
    0xA900: "identifier does not match SOP class",
    0xC000: "the PACS is unable to process the request",
    0xFE00: "cancelled",
    0xB000: "some sub-operations failed or gave warnings",
}


class QueryFailed(RetryableError):
    """No association with the PACS, or it broke: `kind` is one of "unreachable", "refused",
    "aborted", "timeout", "tls"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class QueryTarget:
    """A PACS and how we call it."""

    ae_title: str
    host: str
    port: int
    calling_ae_title: str
    ssl_context: ssl.SSLContext | None = None
    connect_timeout: float = 10.0
    dimse_timeout: float = 120.0

    def describe(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class StudyMatch:
    """One study a C-FIND found. Its UID is identifying: never log it."""

    study_instance_uid: str
    #: Number of Study Related Instances, when the PACS returned it.
    instances: int | None = None


@dataclass(frozen=True)
class RetrieveOutcome:
    """The final response of a C-MOVE or C-GET."""

    status: int
    completed: int
    failed: int
    warning: int

    @property
    def ok(self) -> bool:
        return self.status == STATUS_SUCCESS and self.failed == 0

    def describe(self) -> str:
        if self.status == STATUS_SUCCESS:
            return "ok"
        text = _RETRIEVE_STATUS_TEXT.get(self.status, "failed")
        return f"{text} (status 0x{self.status:04X})"


def _ae(target: QueryTarget) -> AE:
    return client_ae(target)


def _associate(ae: AE, target: QueryTarget, **kwargs: Any) -> Any:
    hint = f" (does it know our AE title {target.calling_ae_title!r} and allow it to query?)"
    return associate(ae, target, QueryFailed, hint, **kwargs)


def _check_value(keyword: str, value: str) -> str:
    """A matching value that can only match exactly: no wildcard, no list, not empty (an empty
    value is universal matching: it would select every study on the PACS)."""
    value = value.strip()
    if not value:
        raise InvalidInputError(f"{keyword} is empty (that would match every study)")
    if any(c in value for c in "*?\\"):
        raise InvalidInputError(f"{keyword} contains a wildcard or a list separator (* ? \\)")
    return value


def find_studies(target: QueryTarget, keys: Mapping[str, str]) -> list[StudyMatch]:
    """C-FIND at STUDY level with the given exact keys (DICOM keywords, e.g. AccessionNumber,
    PatientID, StudyInstanceUID). Returns the distinct studies found."""
    if not keys:
        raise InvalidInputError("a query needs at least one matching key")
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword, value in keys.items():
        setattr(ds, keyword, _check_value(keyword, value))
    if "StudyInstanceUID" not in keys:
        ds.StudyInstanceUID = ""
    ds.NumberOfStudyRelatedInstances = ""
    ae = _ae(target)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = _associate(ae, target)
    found: dict[str, StudyMatch] = {}
    final: int | None = None
    try:
        for status, identifier in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind):
            if not status:  # no answer in time, or the association broke
                break
            code = int(status.Status)
            if code in (0xFF00, 0xFF01) and identifier is not None:
                uid = str(identifier.get("StudyInstanceUID", "") or "").strip()
                if uid:
                    found[uid] = StudyMatch(uid, _count(identifier))
            else:
                final = code
    finally:
        _close(assoc)
    if final is None:
        raise QueryFailed("aborted", f"{target.describe()} did not finish the C-FIND")
    if final != STATUS_SUCCESS:
        raise QueryFailed("refused", f"{target.describe()} failed the C-FIND (0x{final:04X})")
    return list(found.values())


def _count(identifier: Dataset) -> int | None:
    try:
        value = identifier.get("NumberOfStudyRelatedInstances")
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _close(assoc: Any) -> None:
    if assoc.is_established:
        assoc.release()
    else:
        assoc.abort()


def _identifier(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = _check_value("StudyInstanceUID", study_uid)
    return ds


def _outcome(responses: Any, target: QueryTarget, what: str) -> RetrieveOutcome:
    last: Any = None
    for status, _identifier in responses:
        if not status:
            raise QueryFailed("aborted", f"{target.describe()} did not finish the {what}")
        last = status
        if int(status.Status) not in (0xFF00, 0xFF01):
            break
    if last is None:
        raise QueryFailed("aborted", f"{target.describe()} did not answer the {what}")

    def n(keyword: str) -> int:
        value = last.get(keyword)
        return int(value) if value not in (None, "") else 0

    return RetrieveOutcome(
        status=int(last.Status),
        completed=n("NumberOfCompletedSuboperations"),
        failed=n("NumberOfFailedSuboperations"),
        warning=n("NumberOfWarningSuboperations"),
    )


def move_study(target: QueryTarget, study_uid: str, destination_ae: str) -> RetrieveOutcome:
    """C-MOVE one study to `destination_ae`; returns when the PACS reports the move done."""
    ae = _ae(target)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = _associate(ae, target)
    try:
        return _outcome(
            assoc.send_c_move(
                _identifier(study_uid), destination_ae, StudyRootQueryRetrieveInformationModelMove
            ),
            target,
            "C-MOVE",
        )
    finally:
        _close(assoc)


def get_study(
    target: QueryTarget,
    study_uid: str,
    sink: ReceiveSink,
    on_instance: Callable[[], None] | None = None,
) -> RetrieveOutcome:
    """C-GET one study; every instance the PACS sends back is stored through `sink` (durable
    before its C-STORE is answered, like the listener). `on_instance` is called after each."""
    ae = _ae(target)
    # the query context, plus every storage class in the SCP role for the instances coming back
    # (121 of the 128 contexts an association may propose)
    contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)]
    roles = []
    for cx in StoragePresentationContexts:
        assert cx.abstract_syntax is not None
        contexts.append(build_context(cx.abstract_syntax, GET_TRANSFER_SYNTAXES))
        roles.append(build_role(cx.abstract_syntax, scp_role=True))
    ae.requested_contexts = contexts
    info = AssociationInfo(
        association_id=uuid.uuid4().hex[:12],
        calling_ae=target.ae_title,  # the PACS sends the instances
        called_ae=target.calling_ae_title,
        peer_host=target.host,
        peer_port=target.port,
    )

    def on_store(event: Any) -> int:
        try:
            instance = instance_from_event(event, info, target.calling_ae_title)
        except InvalidInputError as exc:
            LOG.info("refused a malformed data set from a C-GET: %s", exc)
            return STATUS_CANNOT_UNDERSTAND
        try:
            sink.store(instance)
        except Exception as exc:
            status, _reason = status_for_error(exc)
            if status == STATUS_PROCESSING_FAILURE:
                LOG.exception("storing an instance from a C-GET failed unexpectedly")
            return status
        if on_instance is not None:
            on_instance()
        return STATUS_SUCCESS

    assoc = _associate(ae, target, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        return _outcome(
            assoc.send_c_get(_identifier(study_uid), StudyRootQueryRetrieveInformationModelGet),
            target,
            "C-GET",
        )
    finally:
        _close(assoc)
