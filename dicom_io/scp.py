"""The DICOM listener: C-ECHO and C-STORE for every storage SOP class, as received.

The listener knows nothing of spools, journals or routes. It checks who may associate, scans each
received data set for completeness (`dicom_io.header`), prefixes File Meta Information that records
the sender, and hands the bytes, never decoded, to a `ReceiveSink`. The sink decides; this module
maps its answer or its error to the DICOM status the sender sees (one adapter, `status_for_error`),
so the sender always learns whether its data was kept:

- success 0x0000 only after the sink returned, i.e. after the bytes are durable;
- 0xA700 (out of resources) for a temporary condition (disk past its high-water mark, write error):
  the sender keeps the instance and retries later;
- 0xC000 (cannot understand) for a data set that is truncated or malformed;
- 0xC211 for an unexpected error in the sink (a bug), as pynetdicom answers for a raising handler.

Callers are checked when the A-ASSOCIATE-RQ arrives (calling AE title with the caller's address,
called AE title, the association limit) and refused with an A-ASSOCIATE-RJ that says why.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from deid_core.errors import InvalidInputError, RetryableError
from dicom_io.header import DatasetHeader, encode_file_meta, scan_dataset
from dicom_io.net import nodelay_on_open

LOG = logging.getLogger("dicom_io.scp")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0xC211

#: Refusal reasons, the same values as gateway.events.RefusalReason.
UNKNOWN_CALLER = "unknown_caller"
CALLED_AE = "called_ae"
ASSOCIATION_LIMIT = "association_limit"
MALFORMED = "malformed"
WRITE_ERROR = "write_error"


class StoreRefused(Exception):
    """Raised by a sink to answer a C-STORE with a specific failure status."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.status = status
        self.reason = reason


def status_for_error(exc: BaseException) -> tuple[int, str]:
    """The DICOM status (and refusal reason) that answers a C-STORE whose storing raised `exc`."""
    if isinstance(exc, StoreRefused):
        return exc.status, exc.reason
    if isinstance(exc, InvalidInputError):
        return STATUS_CANNOT_UNDERSTAND, MALFORMED
    if isinstance(exc, RetryableError | OSError):
        return STATUS_OUT_OF_RESOURCES, WRITE_ERROR
    return STATUS_PROCESSING_FAILURE, WRITE_ERROR


@dataclass(frozen=True)
class CallerRule:
    """A calling AE title, allowed from one network (None: from anywhere)."""

    ae_title: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None

    def allows(self, calling_ae: str, host: str) -> bool:
        if calling_ae != self.ae_title:
            return False
        if self.network is None:
            return True
        try:
            return ipaddress.ip_address(host) in self.network
        except ValueError:
            return False


@dataclass(frozen=True)
class AccessPolicy:
    """Who may associate with the listener."""

    ae_title: str
    callers: tuple[CallerRule, ...] = ()
    allow_any_caller: bool = False
    check_called_ae: bool = True
    max_associations: int = 16

    def refusal(self, calling_ae: str, called_ae: str, host: str) -> str | None:
        """None when the caller may associate, otherwise the refusal reason."""
        if self.check_called_ae and called_ae.strip() != self.ae_title:
            return CALLED_AE
        if not self.allow_any_caller and not any(
            rule.allows(calling_ae.strip(), host) for rule in self.callers
        ):
            return UNKNOWN_CALLER
        return None


@dataclass(frozen=True)
class AssociationInfo:
    """An accepted association. The AE titles were checked against the allowlist, so they are
    configuration values, not data read from a data set."""

    association_id: str
    calling_ae: str
    called_ae: str
    peer_host: str
    peer_port: int


@dataclass(frozen=True)
class ReceivedInstance:
    """One C-STORE as received: File Meta Information we wrote plus the data set bytes exactly as
    the sender encoded them."""

    association: AssociationInfo
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    header: DatasetHeader
    file_meta: bytes
    dataset: bytes

    @property
    def size(self) -> int:
        return len(self.file_meta) + len(self.dataset)


class ReceiveSink(Protocol):
    """What the listener hands its work to. `store` must make the instance durable before it
    returns; raising refuses the instance (see `status_for_error`)."""

    def association_accepted(self, info: AssociationInfo) -> None: ...

    def association_rejected(self, reason: str) -> None: ...

    def association_closed(self, info: AssociationInfo, instances: int, aborted: bool) -> None: ...

    def store(self, instance: ReceivedInstance) -> None: ...

    def refused(self, info: AssociationInfo, reason: str, status: int) -> None: ...


@dataclass
class _Live:
    info: AssociationInfo
    instances: int = 0
    closed: bool = False
    #: The sink heard of this association (EVT_ACCEPTED); only then does it hear of its end.
    announced: bool = False


@dataclass
class StorageSCP:
    """A Storage SCP bound to one address. `start()` returns the bound (host, port)."""

    policy: AccessPolicy
    sink: ReceiveSink
    host: str = "127.0.0.1"
    port: int = 0
    max_pdu_size: int = 262144
    network_timeout: float = 60.0
    ssl_context: ssl.SSLContext | None = None
    #: Called on every turn of the accept loop (about every half second): a liveness
    #: heartbeat. Must be quick and must not raise.
    heartbeat: Callable[[], None] | None = None
    _server: ThreadedAssociationServer | None = field(default=None, init=False, repr=False)
    _live: dict[int, _Live] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _accepting: bool = field(default=False, init=False)

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.policy.ae_title)
        # Our own limit (with its reason) is checked first; pynetdicom's is only a backstop.
        ae.maximum_associations = self.policy.max_associations * 2 + 4
        ae.maximum_pdu_size = self.max_pdu_size
        ae.network_timeout = self.network_timeout
        ae.acse_timeout = min(30.0, self.network_timeout)
        ae.dimse_timeout = self.network_timeout
        # AE-title and caller checks are ours (EVT_REQUESTED), with the caller's address.
        ae.require_called_aet = False
        transfer_syntaxes = [str(ts) for ts in AllTransferSyntaxes]
        for cx in AllStoragePresentationContexts:
            assert cx.abstract_syntax is not None
            ae.add_supported_context(cx.abstract_syntax, transfer_syntaxes)
        ae.add_supported_context(Verification)
        return ae

    def start(self) -> tuple[str, int]:
        if self._server is not None:
            raise RuntimeError("listener already started")
        ae = self._make_ae()
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, nodelay_on_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
            (evt.EVT_C_STORE, self._on_store),
        ]
        server = ae.start_server(
            (self.host, self.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=self.ssl_context,
        )
        assert server is not None
        if self.heartbeat is not None:
            # socketserver's serve_forever calls service_actions() after every poll (0.5 s) and
            # every accepted connection; pynetdicom uses it for garbage collection, so chain it.
            beat, original = self.heartbeat, server.service_actions

            def service_actions() -> None:
                beat()
                original()

            server.service_actions = service_actions  # type: ignore[method-assign]
        self._server = server
        self._accepting = True
        host, port = server.server_address[:2]
        return str(host), int(port)

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("listener not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def accepting(self) -> bool:
        """Whether the listener takes new associations (false once `stop_accepting` ran)."""
        return self._accepting and self._server is not None

    def active_associations(self) -> int:
        with self._lock:
            return sum(1 for live in self._live.values() if not live.closed)

    def stop_accepting(self) -> None:
        """Close the listening socket; associations already open carry on. Safe to call twice."""
        self._accepting = False
        server, self._server = self._server, None
        if server is not None:
            self._active_server = server
            server.shutdown()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no accepted association is open; True when none remain. Connections that
        never became an association (garbage, or negotiation after `stop_accepting`, which is
        refused) hold no data and are not waited for."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.active_associations() == 0:
                return True
            time.sleep(0.05)
        return self.active_associations() == 0

    def abort_all(self) -> None:
        """Abort associations still open (after the drain timeout)."""
        server = getattr(self, "_active_server", None)
        if server is not None:
            for assoc in server.active_associations:
                assoc.abort()

    # --- handlers (run on each association's thread) -------------------------------------

    def _on_requested(self, event: Any) -> None:
        assoc = event.assoc
        rq = assoc.requestor
        calling = str(rq.primitive.calling_ae_title).strip()
        called = str(rq.primitive.called_ae_title).strip()
        host = str(rq.address)
        reason = self.policy.refusal(calling, called, host)
        if reason is None and (not self._accepting):
            reason = ASSOCIATION_LIMIT
        if reason is None:
            with self._lock:
                open_now = sum(1 for live in self._live.values() if not live.closed)
                if open_now >= self.policy.max_associations:
                    reason = ASSOCIATION_LIMIT
                else:
                    info = AssociationInfo(
                        association_id=uuid.uuid4().hex[:12],
                        calling_ae=calling,
                        called_ae=called,
                        peer_host=host,
                        peer_port=int(rq.port),
                    )
                    self._live[id(assoc)] = _Live(info)
        if reason is None:
            return
        if reason == ASSOCIATION_LIMIT:
            assoc.acse.send_reject(0x02, 0x03, 0x02)  # transient, local limit exceeded
        elif reason == CALLED_AE:
            assoc.acse.send_reject(0x01, 0x01, 0x07)  # permanent, called AE not recognised
        else:
            assoc.acse.send_reject(0x01, 0x01, 0x03)  # permanent, calling AE not recognised
        self._notify(self.sink.association_rejected, reason)
        assoc.kill()

    def _on_accepted(self, event: Any) -> None:
        live = self._live.get(id(event.assoc))
        if live is not None:
            live.announced = True
            self._notify(self.sink.association_accepted, live.info)

    def _close(self, event: Any, aborted: bool) -> None:
        with self._lock:
            live = self._live.pop(id(event.assoc), None)
            if live is None or live.closed:
                return
            live.closed = True
        if not live.announced:  # never accepted (e.g. negotiation failed): nothing to close
            return
        self._notify(self.sink.association_closed, live.info, live.instances, aborted)

    def _on_released(self, event: Any) -> None:
        self._close(event, aborted=False)

    def _on_aborted(self, event: Any) -> None:
        self._close(event, aborted=True)

    def _on_conn_close(self, event: Any) -> None:
        # A connection that closes without a release (peer vanished) counts as aborted.
        self._close(event, aborted=True)

    def _on_store(self, event: Any) -> int:
        live = self._live.get(id(event.assoc))
        if live is None:  # cannot happen for an accepted association
            return STATUS_PROCESSING_FAILURE
        info = live.info
        try:
            instance = instance_from_event(event, info, self.policy.ae_title)
        except InvalidInputError as exc:
            LOG.info("refused a malformed data set: %s", exc)
            self._notify(self.sink.refused, info, MALFORMED, STATUS_CANNOT_UNDERSTAND)
            return STATUS_CANNOT_UNDERSTAND
        try:
            self.sink.store(instance)
        except Exception as exc:
            status, reason = status_for_error(exc)
            if status == STATUS_PROCESSING_FAILURE:
                LOG.exception("storing an instance failed unexpectedly")
            self._notify(self.sink.refused, info, reason, status)
            return status
        live.instances += 1
        return STATUS_SUCCESS

    @staticmethod
    def _notify(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # observers never decide the protocol answer
            LOG.exception("receive sink notification failed")


def instance_from_event(event: Any, info: AssociationInfo, ae_title: str) -> ReceivedInstance:
    """The instance of a C-STORE request (pynetdicom's EVT_C_STORE), bytes as sent, with File
    Meta Information recording who sent it to whom. InvalidInputError when the data set is
    truncated or malformed. `ae_title`: ours (the receiving application)."""
    request = event.request
    transfer_syntax = str(event.context.transfer_syntax)
    dataset = request.DataSet.getvalue()
    header = scan_dataset(dataset, transfer_syntax)
    sop_class = str(request.AffectedSOPClassUID)
    sop_instance = str(request.AffectedSOPInstanceUID)
    meta = encode_file_meta(
        sop_class,
        sop_instance,
        transfer_syntax,
        source_ae=ae_title,
        sending_ae=info.calling_ae,
        receiving_ae=info.called_ae,
        sending_address=f"dicom://{info.peer_host}:{info.peer_port}",
    )
    return ReceivedInstance(
        association=info,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        transfer_syntax=transfer_syntax,
        header=header,
        file_meta=meta,
        dataset=dataset,
    )


def instance_from_part10(
    data: bytes | memoryview,
    info: AssociationInfo,
    ae_title: str,
    sending_address: str,
) -> ReceivedInstance:
    """The instance in a Part 10 file received by other means than C-STORE (a STOW-RS part, a
    file handed over by Orthanc): the data set's bytes as they are, behind File Meta Information
    of our own that records the sender. InvalidInputError when the file or its data set is
    malformed, or lacks its SOP Class or SOP Instance UID."""
    from dicom_io.header import read_file_meta

    meta = read_file_meta(data)
    transfer_syntax = meta.transfer_syntax
    dataset = bytes(memoryview(data)[meta.dataset_offset :])
    header = scan_dataset(dataset, transfer_syntax)
    sop_class = header.sop_class_uid or meta.values.get("MediaStorageSOPClassUID", "")
    sop_instance = header.sop_instance_uid or meta.values.get("MediaStorageSOPInstanceUID", "")
    if not sop_class or not sop_instance:
        raise InvalidInputError("the data set has no SOP Class UID or SOP Instance UID")
    file_meta = encode_file_meta(
        sop_class,
        sop_instance,
        transfer_syntax,
        source_ae=ae_title,
        sending_ae=info.calling_ae,
        receiving_ae=info.called_ae,
        sending_address=sending_address,
    )
    return ReceivedInstance(
        association=info,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        transfer_syntax=transfer_syntax,
        header=header,
        file_meta=file_meta,
        dataset=dataset,
    )


def caller_rules(entries: Sequence[tuple[str, str | None]]) -> tuple[CallerRule, ...]:
    """Rules from (AE title, host or CIDR or None) pairs."""
    return tuple(
        CallerRule(ae, ipaddress.ip_network(host, strict=False) if host else None)
        for ae, host in entries
    )
