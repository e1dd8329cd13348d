"""Private network namespaces for servers that cannot bind to loopback only (Orthanc, storescp).

Each namespace is joined to the host namespace by a veth pair with link-local addresses
(169.254.0.0/16) picked at random per namespace, so parallel test runs never clash and no traffic
leaves the machine. The host side reaches the server at `ns.inner_address`.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
from dataclasses import dataclass

import pytest


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def netns_available() -> str | None:
    """None when namespaces can be made here, otherwise why not."""
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    return None


def require_netns() -> None:
    why = netns_available()
    if why:
        pytest.skip(why)


def _used_addresses() -> set[str]:
    out = _ip("-4", "-o", "addr", "show", check=False).stdout
    return {line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3}


@dataclass
class NetNamespace:
    name: str
    host_if: str
    inner_if: str
    host_address: str
    inner_address: str

    @classmethod
    def create(cls) -> NetNamespace:
        tag = f"{os.getpid() % 100000:05d}{random.randrange(16**4):04x}"
        used = _used_addresses()
        for _ in range(100):
            block = ipaddress.ip_network(
                f"169.254.{random.randrange(1, 255)}.{random.randrange(0, 64) * 4}/30"
            )
            host, inner = (str(a) for a in block.hosts())
            if host not in used and inner not in used:
                break
        else:  # pragma: no cover - 16,000 blocks
            raise RuntimeError("no free link-local /30 block")
        ns = cls(f"dgw{tag}", f"dgh{tag}", f"dgn{tag}", host, inner)
        try:
            _ip("netns", "add", ns.name)
            _ip("link", "add", ns.host_if, "type", "veth", "peer", "name", ns.inner_if)
            _ip("link", "set", ns.inner_if, "netns", ns.name)
            _ip("addr", "add", f"{host}/30", "dev", ns.host_if)
            _ip("link", "set", ns.host_if, "up")
            ns.run("ip", "addr", "add", f"{inner}/30", "dev", ns.inner_if)
            ns.run("ip", "link", "set", ns.inner_if, "up")
            ns.run("ip", "link", "set", "lo", "up")
        except subprocess.CalledProcessError as exc:
            ns.destroy()
            raise RuntimeError(f"cannot create network namespace: {exc.stderr.strip()}") from None
        return ns

    def prefix(self) -> list[str]:
        """Command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix(), *args], capture_output=True, text=True, check=True, timeout=30
        )

    def link_down(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def link_up(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def destroy(self) -> None:
        _ip("link", "del", self.host_if, check=False)
        _ip("netns", "del", self.name, check=False)
