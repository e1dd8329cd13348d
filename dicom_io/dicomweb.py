"""DICOMweb STOW-RS (PS3.18 10.5): the client the forwarder sends with, and the message parts the
gateway's own STOW-RS endpoint needs (multipart/related parsing, the response data set).

Sending: one ``POST {url}/studies`` per batch, ``Content-Type: multipart/related;
type="application/dicom"``, one Part 10 file per part, streamed from disk with a known length (no
chunked encoding, which some archives refuse). The answer is read per instance: 200 means every
instance was stored; 202 lists failures (Failed SOP Sequence, with a Failure Reason each) and
successes (Referenced SOP Sequence); 409 means none was stored. Whatever cannot succeed by
itself — rejected credentials (401/403), a request the archive cannot take (400, 413, 415) — and
whatever may succeed later — 408, 429, 5xx, a connection that fails or times out — raises
`StowFailed` with a `kind` from a small fixed set (safe as a metric label) and the server's
Retry-After when it gave one.

Error messages name the HTTP status and the kind of failure, never a response body (an archive may
echo identifying values in it) and never the credentials.
"""

from __future__ import annotations

import base64
import email.utils
import json
import mmap
import re
import ssl
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from deid_core.errors import InvalidInputError, RetryableError
from dicom_io.header import read_file_meta

#: STOW-RS Failure Reasons (PS3.18 Table 10.5.3-3, PS3.4 Annex B/GG statuses).
FAILURE_PROCESSING = 0x0110
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_SOP_CLASS_MISMATCH = 0xA900
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_SOP_CLASS_NOT_SUPPORTED = 0x0122
#: A data set that does not match the request (here: its study is not the one the URL names).
FAILURE_STUDY_UID_MISMATCH = FAILURE_SOP_CLASS_MISMATCH

#: Longest Retry-After honoured (a larger value is taken as this): one day.
MAX_RETRY_AFTER_S = 86400.0

_TAG_FAILED_SOP_SEQUENCE = "00081198"
_TAG_REFERENCED_SOP_SEQUENCE = "00081199"
_TAG_REFERENCED_SOP_CLASS = "00081150"
_TAG_REFERENCED_SOP_INSTANCE = "00081155"
_TAG_FAILURE_REASON = "00081197"
_TAG_WARNING_REASON = "00081196"
_TAG_RETRIEVE_URL = "00081190"


class StowFailed(RetryableError):
    """A STOW-RS request as a whole failed. `kind` is one of:

    - "auth": the archive rejected our credentials (401, 403): retrying will not help until an
      operator fixes them;
    - "status": the archive refused the request itself (400, 404, 405, 411, 413, 415 and other
      4xx): the batch is retried like a failed C-STORE and dead-lettered in the end;
    - "busy": the archive asked us to wait (408, 429, 503), with `retry_after` when it said how
      long;
    - "server_error": any other 5xx;
    - "unreachable", "timeout", "tls": no answer at all.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.http_status = http_status
        self.retry_after = retry_after


@dataclass(frozen=True)
class StowTarget:
    """Where and how to send. `authorization` is the complete Authorization header value (or
    None); it is kept out of the repr."""

    url: str
    authorization: str | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    connect_timeout: float = 10.0
    timeout: float = 120.0

    def describe(self) -> str:
        return self.url

    @property
    def stow_url(self) -> str:
        return self.url.rstrip("/") + "/studies"


def bearer_authorization(token: str) -> str:
    return "Bearer " + token


def basic_authorization(username: str, password: str) -> str:
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def client_ssl_context(
    ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> ssl.SSLContext:
    """A verifying TLS client context: the system's CAs, or `ca_file` alone when given."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None and key_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


def new_client(target: StowTarget) -> httpx.Client:
    """One client per destination worker: its connections are kept alive between batches.
    Proxy settings from the environment are ignored (`trust_env=False`): where images go is the
    configuration's business alone."""
    verify: ssl.SSLContext | bool = target.ssl_context if target.ssl_context else True
    return httpx.Client(
        verify=verify,
        trust_env=False,
        timeout=httpx.Timeout(target.timeout, connect=target.connect_timeout),
        follow_redirects=False,
    )


# --- multipart/related -------------------------------------------------------------------------

_CHUNK = 1 << 20


@dataclass(frozen=True)
class MultipartBody:
    """A multipart/related body of Part 10 files, produced lazily from disk."""

    files: tuple[Path, ...]
    boundary: str

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    def _head(self) -> bytes:
        return f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")

    def _tail(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode("ascii")

    def length(self) -> int:
        head = len(self._head())
        return sum(head + p.stat().st_size + 2 for p in self.files) + len(self._tail())

    def __iter__(self) -> Iterator[bytes]:
        head = self._head()
        for path in self.files:
            yield head
            with path.open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    yield chunk
            yield b"\r\n"
        yield self._tail()


def multipart_body(files: Sequence[Path]) -> MultipartBody:
    return MultipartBody(tuple(files), "deidgw-" + uuid.uuid4().hex)


# --- sending -----------------------------------------------------------------------------------


def _retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    wait = when.timestamp() - (time.time() if now is None else now)
    return min(max(wait, 0.0), MAX_RETRY_AFTER_S)


def _sop_instance_uid(path: Path) -> str:
    with path.open("rb") as fh:
        head = fh.read(4096)
    uid = read_file_meta(head).values.get("MediaStorageSOPInstanceUID", "")
    if not uid:
        raise InvalidInputError(f"{path.name}: file meta has no Media Storage SOP Instance UID")
    return uid


def stow_files(
    target: StowTarget,
    files: Sequence[Path],
    client: httpx.Client,
    progress: Callable[[], None] | None = None,
) -> list[int | None]:
    """Store `files` with one STOW-RS request. Returns one entry per file: 0x0000 when the
    archive stored it (possibly with a warning), otherwise its failure reason. Raises StowFailed
    when the request as a whole failed (see the class), InvalidInputError for a file that is not a
    Part 10 file of ours."""
    if not files:
        return []
    uids = [_sop_instance_uid(p) for p in files]
    body = multipart_body(files)
    headers = {
        "Content-Type": body.content_type,
        "Content-Length": str(body.length()),
        "Accept": "application/dicom+json, application/dicom+xml;q=0.5, application/json;q=0.4",
    }
    if target.authorization:
        headers["Authorization"] = target.authorization
    try:
        rsp = client.post(target.stow_url, content=iter(body), headers=headers)
    except httpx.ConnectTimeout:
        raise StowFailed("timeout", f"connecting to {target.describe()} timed out") from None
    except httpx.TimeoutException:
        raise StowFailed("timeout", f"{target.describe()} did not answer in time") from None
    except httpx.ConnectError as exc:
        if (
            isinstance(exc.__cause__, ssl.SSLError)
            or "SSL" in str(exc)
            or "certificate" in str(exc)
        ):
            raise StowFailed("tls", f"TLS with {target.describe()} failed") from None
        raise StowFailed("unreachable", f"cannot connect to {target.describe()}") from None
    except (httpx.TransportError, OSError) as exc:
        raise StowFailed(
            "unreachable", f"connection to {target.describe()} failed ({type(exc).__name__})"
        ) from None
    if progress is not None:
        progress()
    return _statuses(rsp, uids, target)


def _statuses(rsp: httpx.Response, uids: Sequence[str], target: StowTarget) -> list[int | None]:
    code = rsp.status_code
    where = target.describe()
    if code in (401, 403):
        raise StowFailed(
            "auth",
            f"{where} rejected our credentials (HTTP {code}); fix the destination's auth, then "
            "release the dead-lettered copies",
            http_status=code,
        )
    if code in (408, 429, 503):
        raise StowFailed(
            "busy",
            f"{where} is busy (HTTP {code})",
            http_status=code,
            retry_after=_retry_after(rsp.headers.get("Retry-After")),
        )
    if code >= 500:
        raise StowFailed(
            "server_error",
            f"{where} failed (HTTP {code})",
            http_status=code,
            retry_after=_retry_after(rsp.headers.get("Retry-After")),
        )
    if code not in (200, 202, 409):
        raise StowFailed("status", f"{where} refused the request (HTTP {code})", http_status=code)
    try:
        answer = parse_stow_response(rsp.content, rsp.headers.get("Content-Type", ""))
    except InvalidInputError:
        answer = StowResponse({}, {})
    out: list[int | None] = []
    for uid in uids:
        if uid in answer.failed:
            out.append(answer.failed[uid])
        elif code == 200 or uid in answer.stored:
            out.append(0x0000)
        else:
            # 409 (nothing stored), or a 202 that does not name this instance: not stored.
            out.append(FAILURE_PROCESSING)
    return out


@dataclass(frozen=True)
class StowResponse:
    """SOP Instance UID -> Failure Reason, and SOP Instance UID -> Warning Reason (0 if none)."""

    failed: Mapping[str, int]
    stored: Mapping[str, int]


def _json_items(ds: Mapping[str, Any], tag: str) -> list[Mapping[str, Any]]:
    element = ds.get(tag) or {}
    value = element.get("Value") if isinstance(element, Mapping) else None
    return [v for v in value or [] if isinstance(v, Mapping)]


def _json_value(item: Mapping[str, Any], tag: str) -> Any:
    element = item.get(tag) or {}
    value = element.get("Value") if isinstance(element, Mapping) else None
    return value[0] if value else None


def _xml_items(root: ET.Element, tag: str) -> list[ET.Element]:
    for attr in root.findall("DicomAttribute"):
        if attr.get("tag", "").upper() == tag:
            return attr.findall("Item")
    return []


def _xml_value(item: ET.Element, tag: str) -> str | None:
    for attr in item.findall("DicomAttribute"):
        if attr.get("tag", "").upper() == tag:
            value = attr.find("Value")
            return value.text if value is not None else None
    return None


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _parse_xml(body: bytes, failed: dict[str, int], stored: dict[str, int]) -> None:
    root = ET.fromstring(body)
    for node in _xml_items(root, _TAG_FAILED_SOP_SEQUENCE):
        uid = _xml_value(node, _TAG_REFERENCED_SOP_INSTANCE)
        if uid:
            failed[uid] = _int(_xml_value(node, _TAG_FAILURE_REASON), FAILURE_PROCESSING)
    for node in _xml_items(root, _TAG_REFERENCED_SOP_SEQUENCE):
        uid = _xml_value(node, _TAG_REFERENCED_SOP_INSTANCE)
        if uid:
            stored[uid] = _int(_xml_value(node, _TAG_WARNING_REASON), 0)


def _parse_json(body: bytes, failed: dict[str, int], stored: dict[str, int]) -> None:
    data = json.loads(body)
    if isinstance(data, list):  # some servers wrap the data set in a list
        data = data[0] if data else {}
    if not isinstance(data, Mapping):
        raise InvalidInputError("a STOW-RS response that is not a data set")
    for item in _json_items(data, _TAG_FAILED_SOP_SEQUENCE):
        uid = _json_value(item, _TAG_REFERENCED_SOP_INSTANCE)
        if uid:
            failed[str(uid)] = _int(_json_value(item, _TAG_FAILURE_REASON), FAILURE_PROCESSING)
    for item in _json_items(data, _TAG_REFERENCED_SOP_SEQUENCE):
        uid = _json_value(item, _TAG_REFERENCED_SOP_INSTANCE)
        if uid:
            stored[str(uid)] = _int(_json_value(item, _TAG_WARNING_REASON), 0)


def parse_stow_response(body: bytes, content_type: str) -> StowResponse:
    """Read the Failed and Referenced SOP Sequences of a STOW-RS response (DICOM JSON or XML)."""
    failed: dict[str, int] = {}
    stored: dict[str, int] = {}
    if not body.strip():
        return StowResponse(failed, stored)
    kind = content_type.split(";")[0].strip().lower()
    try:
        if "xml" in kind or body.lstrip().startswith(b"<"):
            _parse_xml(body, failed, stored)
        else:
            _parse_json(body, failed, stored)
    except (ValueError, ET.ParseError):
        raise InvalidInputError("a STOW-RS response that cannot be read") from None
    return StowResponse(failed, stored)


def reachable(target: StowTarget, timeout: float, client: httpx.Client | None = None) -> None:
    """Whether the archive answers HTTP at its base URL within `timeout` (any answer below 500
    except 401/403 counts: the service is there and takes our credentials). Raises StowFailed."""
    own = client is None
    client = client or new_client(target)
    headers = {"Accept": "application/dicom+json"}
    if target.authorization:
        headers["Authorization"] = target.authorization
    try:
        rsp = client.get(
            target.url.rstrip("/") + "/studies",
            params={"limit": "1", "StudyInstanceUID": "1.2.3.4.5.6.7.8.9.0"},
            headers=headers,
            timeout=timeout,
        )
    except httpx.TimeoutException:
        raise StowFailed("timeout", f"{target.describe()} did not answer in time") from None
    except (httpx.TransportError, OSError):
        raise StowFailed("unreachable", f"cannot connect to {target.describe()}") from None
    finally:
        if own:
            client.close()
    if rsp.status_code in (401, 403):
        raise StowFailed("auth", f"{target.describe()} rejected our credentials")
    if rsp.status_code >= 500:
        raise StowFailed("server_error", f"{target.describe()} failed (HTTP {rsp.status_code})")


# --- receiving (the gateway's endpoint) -----------------------------------------------------------

_BOUNDARY_RE = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)
_TYPE_RE = re.compile(r'[;\s]type\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)


@dataclass(frozen=True)
class MultipartRelated:
    boundary: bytes
    #: The `type` parameter (the root part's media type), lower case; "" when absent.
    root_type: str


def parse_content_type(value: str) -> MultipartRelated:
    """The boundary and type of a ``multipart/related`` Content-Type; InvalidInputError for any
    other media type or a missing boundary."""
    media = value.split(";")[0].strip().lower()
    if media != "multipart/related":
        raise InvalidInputError(
            f"STOW-RS takes multipart/related; this request is {media or 'untyped'}"
        )
    match = _BOUNDARY_RE.search(value)
    if not match:
        raise InvalidInputError("the multipart/related Content-Type has no boundary")
    boundary = (match.group(1) or match.group(2)).strip()
    if not 1 <= len(boundary) <= 70:
        raise InvalidInputError("a multipart boundary has 1 to 70 characters")
    root = _TYPE_RE.search(value)
    root_type = ((root.group(1) or root.group(2)) if root else "").strip().lower()
    return MultipartRelated(boundary.encode("latin-1"), root_type)


@dataclass(frozen=True)
class Part:
    """One body part: its headers (names in lower case) and where its content lies."""

    headers: Mapping[str, str]
    start: int
    end: int

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


def iter_parts(data: mmap.mmap | bytes, boundary: bytes) -> Iterator[Part]:
    """The parts of a multipart body (RFC 2046 5.1), by position in `data`, so that a large body
    can be read from a memory-mapped file. InvalidInputError when the body is not well formed
    (no first boundary, a part without its header block, no closing boundary)."""
    delimiter = b"--" + boundary
    first = data.find(delimiter)
    if first < 0:
        raise InvalidInputError("the body does not contain its multipart boundary")
    pos = first + len(delimiter)
    while True:
        if data[pos : pos + 2] == b"--":
            return  # the close delimiter
        line_end = data.find(b"\r\n", pos)  # after optional transport padding
        if line_end < 0:
            raise InvalidInputError("a multipart boundary line is not terminated")
        headers_start = line_end + 2
        if data[headers_start : headers_start + 2] == b"\r\n":
            raw_headers, start = b"", headers_start + 2
        else:
            header_end = data.find(b"\r\n\r\n", headers_start)
            if header_end < 0:
                raise InvalidInputError("a body part has no complete header block")
            raw_headers, start = bytes(data[headers_start:header_end]), header_end + 4
        headers: dict[str, str] = {}
        for line in raw_headers.split(b"\r\n") if raw_headers else ():
            name, sep, value = line.partition(b":")
            if not sep:
                raise InvalidInputError("a body part header line without a colon")
            headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
        end = data.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise InvalidInputError("the body is not closed by its multipart boundary")
        yield Part(headers, start, end)
        pos = end + 2 + len(delimiter)


def stow_response(
    stored: Sequence[tuple[str, str]],
    failed: Sequence[tuple[str, str, int]],
) -> dict[str, Any]:
    """A STOW-RS response data set in the DICOM JSON model: (SOP class, SOP instance) of each
    stored instance, and (SOP class, SOP instance, failure reason) of each failed one. No
    Retrieve URL: the gateway does not offer WADO-RS."""
    out: dict[str, Any] = {}

    def ref(sop_class: str, sop_instance: str) -> dict[str, Any]:
        item: dict[str, Any] = {}
        if sop_class:
            item[_TAG_REFERENCED_SOP_CLASS] = {"vr": "UI", "Value": [sop_class]}
        if sop_instance:
            item[_TAG_REFERENCED_SOP_INSTANCE] = {"vr": "UI", "Value": [sop_instance]}
        return item

    if failed:
        items = []
        for sop_class, sop_instance, reason in failed:
            item = ref(sop_class, sop_instance)
            item[_TAG_FAILURE_REASON] = {"vr": "US", "Value": [reason]}
            items.append(item)
        out[_TAG_FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": items}
    if stored:
        out[_TAG_REFERENCED_SOP_SEQUENCE] = {
            "vr": "SQ",
            "Value": [ref(c, i) for c, i in stored],
        }
    return out
