"""A scripted STOW-RS archive on loopback: answers each request with the next scripted response
(status, headers, and optionally instances to report as failed), records what it received (time,
headers, the parts' SOP Instance UIDs), and parses the multipart body strictly, so a badly formed
request from the gateway fails the test."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dicom_io.dicomweb import iter_parts, parse_content_type, stow_response
from dicom_io.header import read_file_meta


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    #: Fail these parts (by position in the request) with this reason; the rest are stored.
    fail: dict[int, int] = field(default_factory=dict)


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    content_type: str
    sop_instance_uids: list[str]


class StowArchive:
    def __init__(self, script: list[Answer], default: Answer = Answer(200)) -> None:
        self.script = list(script)
        self.default = default
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/dicom-web"

    def _next(self) -> Answer:
        with self.lock:
            return self.script.pop(0) if self.script else self.default

    def handler(self) -> type[BaseHTTPRequestHandler]:
        archive = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # the readiness probe
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"[]")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                ctype = parse_content_type(self.headers.get("Content-Type", ""))
                uids, classes = [], []
                for part in iter_parts(body, ctype.boundary):
                    assert part.content_type == "application/dicom", part.headers
                    meta = read_file_meta(body[part.start : part.end]).values
                    uids.append(meta["MediaStorageSOPInstanceUID"])
                    classes.append(meta["MediaStorageSOPClassUID"])
                with archive.lock:
                    archive.requests.append(
                        Received(
                            time.monotonic(),
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            ctype.root_type,
                            uids,
                        )
                    )
                answer = archive._next()
                stored = [
                    (c, u)
                    for i, (c, u) in enumerate(zip(classes, uids, strict=False))
                    if i not in answer.fail
                ]
                failed = [(classes[i], uids[i], reason) for i, reason in answer.fail.items()]
                data = json.dumps(stow_response(stored, failed)).encode()
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


@contextmanager
def stow_archive(script: list[Answer], default: Answer = Answer(200)) -> Iterator[StowArchive]:
    archive = StowArchive(script, default)
    server = ThreadingHTTPServer(("127.0.0.1", 0), archive.handler())
    archive.server = server
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield archive
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
