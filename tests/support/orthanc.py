"""Orthanc as the research archive, in its own network namespace (it cannot bind to loopback only).

`Orthanc.start()` writes a configuration (DICOM and HTTP ports, storage and index under a test
folder, no authentication: it is reachable only through the namespace's veth from this machine),
runs `ip netns exec NS Orthanc config.json` with TCP_NODELAY=1, and waits for its REST API. The
REST API is used for assertions (`count_instances`, `instances`, `tags`).

Debian's plugins load on request: ``plugins=("dicomweb", "python")`` (the Python plugin needs
``extra={"PythonScript": ...}``); `extra` is merged into the configuration as given.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.netns import NetNamespace, require_netns

ORTHANC = shutil.which("Orthanc")
#: No proxy, ever: the archive lives on a link-local address on this machine.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
#: Debian's plugin libraries (packages orthanc-dicomweb and orthanc-python).
PLUGINS = {
    "dicomweb": Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    "python": Path("/usr/share/orthanc/plugins/libOrthancPython.so"),
}


def require_plugins(*names: str) -> None:
    for name in names:
        if not PLUGINS[name].exists():
            pytest.skip(f"Orthanc plugin {name} is not installed ({PLUGINS[name]})")


def require_orthanc() -> None:
    require_netns()
    if ORTHANC is None:
        pytest.skip("Orthanc is not installed (scripts/install-system-deps.sh installs it)")


class Orthanc:
    def __init__(
        self,
        folder: Path,
        ns: NetNamespace,
        ae_title: str = "ORTHANC",
        dicom_port: int = 4242,
        http_port: int = 8042,
        plugins: Sequence[str] = (),
        extra: dict[str, Any] | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        """`users`: turn on Orthanc's HTTP basic authentication with these users (the helper's
        own requests then sign in as the first)."""
        self.folder = folder
        self.ns = ns
        self.ae_title = ae_title
        self.dicom_port = dicom_port
        self.http_port = http_port
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.config_path = folder / "orthanc.json"
        self.config: dict[str, Any] = {
            "Name": "test-archive",
            "DicomAet": ae_title,
            "DicomPort": dicom_port,
            "HttpPort": http_port,
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "RemoteAccessAllowed": True,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "StorageCompression": False,
            "Plugins": [],
            "SaveJobs": False,
            "DicomThreadsCount": 4,
            "HttpThreadsCount": 4,
            "ConcurrentJobs": 1,
            "StableAge": 1,
        }
        self.config["Plugins"] = [str(PLUGINS[name]) for name in plugins]
        self._auth: str | None = None
        if users:
            self.config["AuthenticationEnabled"] = True
            self.config["RegisteredUsers"] = users
            user, password = next(iter(users.items()))
            self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.config.update(extra or {})
        self.config_path.write_text(json.dumps(self.config, indent=2))

    @property
    def host(self) -> str:
        return self.ns.inner_address

    @property
    def url(self) -> str:
        return f"http://{self.ns.inner_address}:{self.http_port}"

    def start(self, timeout: float = 30.0) -> None:
        assert ORTHANC is not None
        log = (self.folder / "orthanc.log").open("ab")
        self.proc = subprocess.Popen(
            [*self.ns.prefix(), "env", "TCP_NODELAY=1", ORTHANC, str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start; see {self.folder / 'orthanc.log'}")
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise RuntimeError("Orthanc did not answer in time")

    def stop(self) -> None:
        """SIGTERM, wait (Orthanc takes ~3 s), SIGKILL if it hangs."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def _open(self, req: urllib.request.Request | str, timeout: float) -> Any:
        if isinstance(req, str):
            req = urllib.request.Request(req)
        if self._auth:
            req.add_header("Authorization", self._auth)
        return _OPENER.open(req, timeout=timeout)

    def get(self, path: str) -> Any:
        with self._open(self.url + path, timeout=10) as rsp:
            return json.loads(rsp.read())

    def post(self, path: str, body: Any) -> Any:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST")
        with self._open(req, timeout=30) as rsp:
            return json.loads(rsp.read())

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> Any:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", content_type)
        with self._open(req, timeout=60) as rsp:
            data = rsp.read()
        return json.loads(data) if data.strip() else None

    def upload(self, path: Path) -> str:
        """Store a Part 10 file through the REST API; returns Orthanc's instance id."""
        answer = self.request("POST", "/instances", path.read_bytes(), "application/dicom")
        return str(answer["ID"])

    def put_modality(self, name: str, ae_title: str, host: str, port: int) -> None:
        """Declare a DICOM peer (for C-MOVE destinations and callers allowed to query)."""
        body = json.dumps({"AET": ae_title, "Host": host, "Port": port}).encode()
        self.request("PUT", f"/modalities/{name}", body)

    def studies(self) -> set[str]:
        return set(self.get("/studies"))

    def study_instances(self, study_id: str) -> list[str]:
        return [str(i["ID"]) for i in self.get(f"/studies/{study_id}/instances")]

    def file(self, instance_id: str) -> bytes:
        with self._open(self.url + f"/instances/{instance_id}/file", timeout=30) as rsp:
            return bytes(rsp.read())

    def log_text(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def count_instances(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def count_studies(self) -> int:
        return int(self.get("/statistics")["CountStudies"])

    def instances(self) -> list[str]:
        return list(self.get("/instances"))

    def tags(self, instance_id: str) -> dict[str, Any]:
        return dict(self.get(f"/instances/{instance_id}/simplified-tags"))

    def wait_for_instances(self, expected: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        count = self.count_instances()
        while count < expected and time.monotonic() < deadline:
            time.sleep(0.25)
            count = self.count_instances()
        return count
