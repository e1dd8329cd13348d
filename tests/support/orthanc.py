"""Orthanc as the research archive, in its own network namespace (it cannot bind to loopback only).

`Orthanc.start()` writes a configuration (DICOM and HTTP ports, storage and index under a test
folder, no authentication: it is reachable only through the namespace's veth from this machine),
runs `ip netns exec NS Orthanc config.json` with TCP_NODELAY=1, and waits for its REST API. The
REST API is used for assertions (`count_instances`, `instances`, `tags`).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.netns import NetNamespace, require_netns

ORTHANC = shutil.which("Orthanc")
#: No proxy, ever: the archive lives on a link-local address on this machine.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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
    ) -> None:
        self.folder = folder
        self.ns = ns
        self.ae_title = ae_title
        self.dicom_port = dicom_port
        self.http_port = http_port
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.config_path = folder / "orthanc.json"
        self.config_path.write_text(
            json.dumps(
                {
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
                },
                indent=2,
            )
        )

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

    def get(self, path: str) -> Any:
        with _OPENER.open(self.url + path, timeout=10) as rsp:
            return json.loads(rsp.read())

    def post(self, path: str, body: Any) -> Any:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST")
        with _OPENER.open(req, timeout=30) as rsp:
            return json.loads(rsp.read())

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
