"""The gateway's STOW-RS endpoint (PS3.18 10.5), for senders that speak only DICOMweb.

``POST {base_path}/studies`` or ``POST {base_path}/studies/{StudyInstanceUID}`` with a
``multipart/related; type="application/dicom"`` body, one Part 10 instance per part. Each part
takes exactly the listener's path: the same fast header check, the same ingest (spool file and
directory fsynced, then the journal row) — and the answer is given only after that has happened
for every part:

- 200 with the response data set: every instance is stored;
- 202: some are stored, some failed (Failed SOP Sequence, with a Failure Reason each: 0xA700 when
  the spool is past its high-water mark or cannot be written, 0xC000 for a part that is not a
  readable DICOM instance, 0xA900 for an instance of another study than the URL names);
- 409: none could be stored (same data set);
- 400 for a body that is not well-formed multipart, 401 without valid credentials, 413 for a body
  larger than `max_request_bytes`, 415 for another media type, 503 (with Retry-After) when the
  body cannot even be buffered.

The body is buffered on the spool's own file system (streamed, never whole in memory) and parsed
from a memory map. Responses are DICOM JSON and name only what the sender sent; logs name the
request by a random id and counts, never a UID.

Instances appear to routes with the calling AE title `dicomweb_in.calling_ae_title`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import mmap
import os
import ssl
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from deid_core.errors import InvalidInputError
from dicom_io.dicomweb import (
    FAILURE_CANNOT_UNDERSTAND,
    FAILURE_PROCESSING,
    FAILURE_STUDY_UID_MISMATCH,
    Part,
    iter_parts,
    parse_content_type,
    stow_response,
)
from dicom_io.header import read_file_meta
from dicom_io.scp import (
    MALFORMED,
    STATUS_CANNOT_UNDERSTAND,
    STATUS_PROCESSING_FAILURE,
    AssociationInfo,
    ReceiveSink,
    instance_from_part10,
    status_for_error,
)
from gateway.config import BasicAuth, BearerAuth, DicomwebInConfig
from gateway.forwarder import http_authorization
from gateway.logs import get_logger
from gateway.spool import Spool, SpoolFull
from gateway.web import ThreadedWebServer, check_certificate

LOG = get_logger("gateway.stow")

DICOM_JSON = "application/dicom+json"
#: How long a sender is asked to wait when the body cannot be buffered.
BUSY_RETRY_AFTER_S = 60
_CHUNK = 1 << 20


@dataclass
class StowOutcome:
    stored: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def http_status(self) -> int:
        if self.failed and self.stored:
            return 202
        if self.failed:
            return 409
        return 200


def _failure_reason(status: int) -> int:
    """A C-STORE failure status as a STOW-RS Failure Reason."""
    if status == STATUS_PROCESSING_FAILURE:
        return FAILURE_PROCESSING
    return status


class StowReceiver:
    """Stores the parts of one buffered request through the listener's sink."""

    def __init__(self, sink: ReceiveSink, node_ae: str, calling_ae: str) -> None:
        self.sink = sink
        self.node_ae = node_ae
        self.calling_ae = calling_ae

    def receive(
        self,
        body: mmap.mmap | bytes,
        parts: list[Part],
        study_uid: str | None,
        peer: tuple[str, int],
        scheme: str,
        request_id: str,
    ) -> StowOutcome:
        info = AssociationInfo(
            association_id=request_id,
            calling_ae=self.calling_ae,
            called_ae=self.node_ae,
            peer_host=peer[0],
            peer_port=peer[1],
        )
        outcome = StowOutcome()
        for part in parts:
            data = memoryview(body)[part.start : part.end]
            try:
                self._store(data, part, info, study_uid, scheme, outcome)
            finally:
                data.release()
        return outcome

    def _store(
        self,
        data: memoryview,
        part: Part,
        info: AssociationInfo,
        study_uid: str | None,
        scheme: str,
        outcome: StowOutcome,
    ) -> None:
        sop_class, sop_instance = _uids_of(data)
        if part.content_type != "application/dicom":
            outcome.failed.append((sop_class, sop_instance, FAILURE_CANNOT_UNDERSTAND))
            self._notify_refused(info, MALFORMED, STATUS_CANNOT_UNDERSTAND)
            return
        try:
            instance = instance_from_part10(
                data, info, self.node_ae, f"{scheme}://{info.peer_host}:{info.peer_port}"
            )
        except InvalidInputError:
            outcome.failed.append((sop_class, sop_instance, FAILURE_CANNOT_UNDERSTAND))
            self._notify_refused(info, MALFORMED, STATUS_CANNOT_UNDERSTAND)
            return
        if study_uid is not None and instance.header.study_instance_uid != study_uid:
            outcome.failed.append(
                (instance.sop_class_uid, instance.sop_instance_uid, FAILURE_STUDY_UID_MISMATCH)
            )
            return
        try:
            self.sink.store(instance)
        except Exception as exc:
            status, reason = status_for_error(exc)
            if status == STATUS_PROCESSING_FAILURE:
                LOG.exception("stow_store_failed", request=info.association_id)
            outcome.failed.append(
                (instance.sop_class_uid, instance.sop_instance_uid, _failure_reason(status))
            )
            self._notify_refused(info, reason, status)
            return
        outcome.stored.append((instance.sop_class_uid, instance.sop_instance_uid))

    def _notify_refused(self, info: AssociationInfo, reason: str, status: int) -> None:
        with contextlib.suppress(Exception):
            self.sink.refused(info, reason, status)


def _uids_of(data: memoryview) -> tuple[str, str]:
    """SOP class and instance of a part, from its file meta when readable (for the response)."""
    try:
        values = read_file_meta(data).values
    except (InvalidInputError, ValueError, IndexError):
        return "", ""
    return (
        values.get("MediaStorageSOPClassUID", ""),
        values.get("MediaStorageSOPInstanceUID", ""),
    )


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": detail}, status_code=status, headers=headers)


class StowEndpoint:
    """The STOW-RS web service, served by uvicorn in a thread of the gateway."""

    def __init__(
        self,
        cfg: DicomwebInConfig,
        node_ae: str,
        sink: ReceiveSink,
        spool: Spool,
    ) -> None:
        self.cfg = cfg
        self.spool = spool
        self.receiver = StowReceiver(sink, node_ae, cfg.calling_ae_title)
        self.buffer_dir = spool.root / "stow-buffer"
        self._authorization = self._expected_authorization(cfg.auth)
        self._slots: asyncio.Semaphore | None = None
        self.app = Starlette(
            routes=[
                Route(f"{cfg.base_path}/studies", self.store, methods=["POST"]),
                Route(f"{cfg.base_path}/studies/{{study}}", self.store, methods=["POST"]),
            ]
        )
        self._web = ThreadedWebServer(
            self.app, where="dicomweb_in", thread_name="stow-endpoint", graceful_s=30
        )
        self.address: tuple[str, int] | None = None

    @staticmethod
    def _expected_authorization(auth: BearerAuth | BasicAuth | None) -> bytes | None:
        value = http_authorization(auth, "dicomweb_in.auth")
        return value.encode() if value is not None else None

    # --- the request ---------------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        if self._authorization is None:
            return True
        given = request.headers.get("authorization", "").encode("latin-1", "replace")
        return hmac.compare_digest(given, self._authorization)

    async def store(self, request: Request) -> Response:
        if not self._authorized(request):
            scheme = "Bearer" if isinstance(self.cfg.auth, BearerAuth) else "Basic"
            return _problem(
                401, "authentication required", {"WWW-Authenticate": f'{scheme} realm="stow"'}
            )
        try:
            ctype = parse_content_type(request.headers.get("content-type", ""))
        except InvalidInputError as exc:
            return _problem(415, str(exc))
        if ctype.root_type and ctype.root_type != "application/dicom":
            return _problem(
                415, 'only type="application/dicom" is accepted (no metadata + bulk data)'
            )
        study = request.path_params.get("study")
        if study is not None and not all(p.isdigit() for p in study.split(".")):
            return _problem(400, "the study in the URL is not a UID")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > self.cfg.max_request_bytes:
                return _problem(413, f"larger than {self.cfg.max_request_bytes} bytes")
            try:
                self.spool.check_space(int(declared))
            except SpoolFull:
                return self._busy("the gateway's spool is full")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.cfg.max_concurrent_requests)
        async with self._slots:
            return await self._handle(request, ctype.boundary, study)

    def _busy(self, why: str) -> Response:
        return _problem(503, why, {"Retry-After": str(BUSY_RETRY_AFTER_S)})

    async def _handle(self, request: Request, boundary: bytes, study: str | None) -> Response:
        request_id = uuid.uuid4().hex[:12]
        started = time.perf_counter()
        try:
            path = await self._buffer(request)
        except _TooLarge:
            return _problem(413, f"larger than {self.cfg.max_request_bytes} bytes")
        except OSError:
            LOG.warning("stow_buffer_failed", request=request_id)
            return self._busy("the gateway cannot buffer the request now")
        try:
            client = request.client
            peer = (client.host, client.port) if client else ("unknown", 0)
            result = await run_in_threadpool(
                self._receive, path, boundary, study, peer, request.url.scheme, request_id
            )
        finally:
            path.unlink(missing_ok=True)
        if isinstance(result, Response):
            return result
        LOG.info(
            "stow_request",
            request=request_id,
            stored=len(result.stored),
            failed=len(result.failed),
            status=result.http_status,
            seconds=round(time.perf_counter() - started, 3),
        )
        return JSONResponse(
            stow_response(result.stored, result.failed),
            status_code=result.http_status,
            media_type=DICOM_JSON,
        )

    def _receive(
        self,
        path: Path,
        boundary: bytes,
        study: str | None,
        peer: tuple[str, int],
        scheme: str,
        request_id: str,
    ) -> StowOutcome | Response:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                return _problem(400, "the request has no body")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as body:
                try:
                    parts = list(iter_parts(body, boundary))
                except InvalidInputError as exc:
                    return _problem(400, f"not a well-formed multipart body: {exc}")
                if not parts:
                    return _problem(400, "the multipart body has no parts")
                return self.receiver.receive(body, parts, study, peer, scheme, request_id)

    async def _buffer(self, request: Request) -> Path:
        """Stream the body into a private file on the spool's file system."""
        self.buffer_dir.mkdir(mode=0o700, exist_ok=True)
        path = self.buffer_dir / (uuid.uuid4().hex + ".part")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.cfg.max_request_bytes:
                    raise _TooLarge()
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return path

    # --- serving -------------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> tuple[str, int]:
        """Listen and serve; returns the bound address. A port in use or an unreadable
        certificate stops the start with a ConfigError."""
        cfg = self.cfg
        # leftovers of requests a crash interrupted: never acknowledged, so delete them
        if self.buffer_dir.is_dir():
            for stale in self.buffer_dir.glob("*.part"):
                stale.unlink(missing_ok=True)
        tls = cfg.tls
        ssl_options: dict[str, Any] = {}
        if tls is not None:
            check_certificate(tls.cert_file, tls.key_file, "dicomweb_in.tls")
            ssl_options = {"ssl_certfile": str(tls.cert_file), "ssl_keyfile": str(tls.key_file)}
            if tls.client_ca_file is not None:
                ssl_options["ssl_ca_certs"] = str(tls.client_ca_file)
            if tls.require_client_cert:
                ssl_options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        self.address = self._web.start(cfg.address, cfg.port, ssl_options, timeout)
        LOG.info(
            "stow_listening",
            host=self.address[0],
            port=self.address[1],
            tls=tls is not None,
            auth=cfg.auth.type if cfg.auth is not None else "none",
        )
        return self.address

    @property
    def url(self) -> str:
        return self._web.url(self.cfg.tls is not None, self.cfg.base_path)

    @property
    def serving(self) -> bool:
        return self._web.serving

    def stop(self, timeout: float = 35.0) -> None:
        """Stop accepting; requests in flight finish (their answers wait for the spool and the
        journal as always). Safe to call twice."""
        self._web.stop(timeout)


class _TooLarge(Exception):
    pass
