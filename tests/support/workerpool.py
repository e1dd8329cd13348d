"""A real worker pool for tests: RabbitMQ at 127.0.0.1:5672 and `deid-gateway worker` processes.

Queue names carry the test run's pid and a random tag, so parallel runs share the broker safely;
`WorkerPool.close` stops the workers and deletes every queue and exchange the run declared.
`broker_bounce` stops and starts the broker's application (`rabbitmqctl stop_app` / `start_app`)
and always starts it again, even when the test fails in between.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
RABBITMQCTL = shutil.which("rabbitmqctl")


def broker_answers(timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=timeout):
            return True
    except OSError:
        return False


def require_rabbitmq() -> None:
    if not broker_answers():
        pytest.skip("RabbitMQ is not answering at 127.0.0.1:5672 (scripts/start-services.sh)")


def unique_queue(prefix: str = "deidgw.test") -> str:
    return f"{prefix}.{os.getpid()}.{secrets.token_hex(3)}"


def rabbitmqctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    assert RABBITMQCTL is not None
    return subprocess.run(
        [RABBITMQCTL, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@contextlib.contextmanager
def broker_stopped() -> Iterator[None]:
    """The broker's application is stopped inside the block and started again after it, even on
    failure; returns once the broker answers again."""
    if RABBITMQCTL is None:
        pytest.skip("rabbitmqctl is not installed")
    stopped = rabbitmqctl("stop_app")
    assert stopped.returncode == 0, stopped.stderr
    try:
        yield
    finally:
        started = rabbitmqctl("start_app")
        deadline = time.monotonic() + 60
        while not broker_answers() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert started.returncode == 0, started.stderr


def delete_broker_objects(queues: list[str], exchanges: list[str]) -> None:
    from kombu import Connection

    if not broker_answers():
        return
    with Connection(BROKER_URL, connect_timeout=5) as conn:
        for name in queues:
            with contextlib.suppress(Exception):
                conn.channel().queue_delete(name)
        for name in exchanges:
            with contextlib.suppress(Exception):
                conn.channel().exchange_delete(name)


class WorkerPool:
    """`deid-gateway worker` processes on one jobs queue, with the tiny model."""

    def __init__(self, folder: Path, worker_config: dict[str, Any]) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.config_path = folder / "worker.yaml"
        self.config_path.write_text(yaml.safe_dump(worker_config))
        self.queue: str = worker_config["executor"]["queue"]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._count = 0

    def spawn(self) -> str:
        self._count += 1
        name = f"w{self._count}-{os.getpid()}"
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        log = (self.folder / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "worker",
                "--config",
                str(self.config_path),
                "--threads",
                "1",
                "--name",
                name,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.folder,
        )
        return name

    def alive(self) -> list[str]:
        return [name for name, p in self.procs.items() if p.poll() is None]

    def kill(self, name: str) -> None:
        """SIGKILL: no warm shutdown, no acknowledgement of the job in hand."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
