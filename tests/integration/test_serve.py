"""`deid-gateway serve` on the repository's default configuration, and its graceful stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_cli
from tests.support.gateway import KEY_TEXT, wait_until

pytestmark = pytest.mark.network


def test_serve_runs_on_the_default_config_and_stops_on_sigterm(tmp_path: Path) -> None:
    data = yaml.safe_load((REPO / "gateway/defaults/gateway.yaml").read_text())
    data["node"]["port"] = 0  # the default 11112 may be taken on a shared machine
    data["metrics"]["port"] = 0  # ... and 9477 too
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(data))
    (tmp_path / "var").mkdir()
    (tmp_path / "var/project.key").write_text(KEY_TEXT + "\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        cwd=tmp_path,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        assert wait_until(lambda: b"gateway_listening" in log.read_bytes(), 30), log.read_text()
        assert (tmp_path / "var/journal.sqlite").exists()
        assert (tmp_path / "var/spool/incoming").is_dir()
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)  # a second signal during shutdown is harmless
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert '"event": "shutdown_complete"' in text
    # the destination at 127.0.0.1:4242 need not be up for the gateway to run
    assert "Traceback" not in text


def test_serve_refuses_a_config_where_nobody_may_call(tmp_path: Path) -> None:
    (tmp_path / "k").write_text(KEY_TEXT)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"project": {"key": {"file": str(tmp_path / "k")}}}))
    result = run_cli(["serve", "--config", str(config)], cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "node.allowed_callers" in result.stderr
