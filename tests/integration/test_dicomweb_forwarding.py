"""Forwarding to a DICOMweb archive (STOW-RS) that misbehaves: a scripted HTTP server on loopback
answers 401, 503 with Retry-After, 500, and 202 with per-instance failures. The gateway must retry
what can heal, honour the archive's wait, dead-letter rejected credentials after a couple of
attempts with a reason an operator understands, and resend only what failed."""

from __future__ import annotations

import base64
from pathlib import Path

import pydicom
import pytest

from dicom_io.dicomweb import FAILURE_OUT_OF_RESOURCES
from dicom_io.scu import StoreTarget, send_files
from gateway.events import ForwardFailed, InstanceQuarantined, QuarantineReason
from tests.support.gateway import (
    GATEWAY_AE,
    MODALITY_AE,
    config_dict,
    make_key_file,
    parse,
    running_node,
    wait_until,
    write_instances,
)
from tests.support.stow_server import Answer, stow_archive

pytestmark = pytest.mark.network

TOKEN = "test-token-0123456789"


def _config(tmp_path: Path, url: str, **dest: object):  # type: ignore[no-untyped-def]
    token = tmp_path / "archive.token"
    token.write_text(TOKEN + "\n")
    retry = {"initial_delay_s": 0.1, "max_delay_s": 0.5, "max_attempts": 10, "jitter": 0.0}
    retry.update(dest.pop("retry", {}))  # type: ignore[arg-type]
    destination = {
        "type": "dicomweb",
        "url": url,
        "auth": {"type": "bearer", "token": {"file": str(token)}},
        "retry": retry,
        "timeout_s": 10,
        **dest,
    }
    return parse(
        config_dict(tmp_path / "gw", make_key_file(tmp_path), destinations={"web": destination})
    )


def _send(node, files):  # type: ignore[no-untyped-def]
    target = StoreTarget(GATEWAY_AE, *node.address, MODALITY_AE)
    assert send_files(target, files) == [0] * len(files)


def test_rejected_credentials_are_dead_lettered_after_a_couple_of_attempts(
    tmp_path: Path,
) -> None:
    files = next(iter(write_instances(tmp_path / "in", 1, 3).values()))
    with stow_archive([], default=Answer(401, {"WWW-Authenticate": "Bearer"})) as archive:
        cfg = _config(tmp_path, archive.url, auth_failure_attempts=2)
        with running_node(cfg) as (node, events):
            _send(node, files)
            quarantine = node.storage.quarantine  # type: ignore[union-attr]
            assert wait_until(lambda: len(quarantine.list()) == 3, 30)
            # the event follows the dead letters: wait for it
            assert wait_until(lambda: len(events.of(ForwardFailed)) == 2, 10)
            failures = events.of(ForwardFailed)
            assert [f.reason for f in failures] == ["auth", "auth"]
            assert [f.will_retry for f in failures] == [True, False]
            assert {e.reason for e in events.of(InstanceQuarantined)} == {
                QuarantineReason.DEAD_LETTER
            }
            entry = quarantine.show(quarantine.list()[0].id)
            assert entry.details["attempts"] == 2
            assert "rejected our credentials (HTTP 401)" in entry.details["last_error"]
            assert TOKEN not in str(entry.details)
        # two requests, no more (the policy would allow 10), each with our bearer token
        assert len(archive.requests) == 2
        assert {r.headers["authorization"] for r in archive.requests} == {f"Bearer {TOKEN}"}
        assert archive.requests[0].path == "/dicom-web/studies"
        assert archive.requests[0].content_type == "application/dicom"
        assert len(archive.requests[0].sop_instance_uids) == 3


def test_busy_and_failing_archive_is_retried_honouring_retry_after(tmp_path: Path) -> None:
    files = next(iter(write_instances(tmp_path / "in", 1, 4).values()))
    script = [
        Answer(500),
        Answer(503, {"Retry-After": "2"}),
        Answer(429, {"Retry-After": "1"}),
    ]
    with stow_archive(script) as archive:
        cfg = _config(tmp_path, archive.url)
        with running_node(cfg) as (node, events):
            _send(node, files)
            assert wait_until(lambda: node.backlog().journal_states["forwarded"] == 4, 30)
            assert [f.reason for f in events.of(ForwardFailed)] == [
                "server_error",
                "busy",
                "busy",
            ]
            assert all(f.will_retry for f in events.of(ForwardFailed))
            assert not node.storage.quarantine.list()  # type: ignore[union-attr]
    times = [r.at for r in archive.requests]
    assert len(times) == 4
    # backoff alone would wait 0.1-0.5 s; the archive asked for 2 s, then 1 s
    assert times[1] - times[0] < 1.5
    assert times[2] - times[1] >= 2.0
    assert times[3] - times[2] >= 1.0
    # every attempt carried the whole study
    assert all(len(r.sop_instance_uids) == 4 for r in archive.requests)


def test_instances_the_archive_failed_are_sent_again_alone(tmp_path: Path) -> None:
    files = next(iter(write_instances(tmp_path / "in", 1, 3).values()))
    script = [Answer(202, fail={1: FAILURE_OUT_OF_RESOURCES})]
    with stow_archive(script) as archive:
        cfg = _config(tmp_path, archive.url)
        with running_node(cfg) as (node, events):
            _send(node, files)
            assert wait_until(lambda: node.backlog().journal_states["forwarded"] == 3, 30)
            failures = events.of(ForwardFailed)
            assert [(f.reason, f.will_retry) for f in failures] == [("status", True)]
    first, second = archive.requests
    assert len(first.sop_instance_uids) == 3
    assert second.sop_instance_uids == [first.sop_instance_uids[1]]
    # what went out is the de-identified copy (pseudonymous UIDs), not what the modality sent
    originals = {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
    assert not originals & set(first.sop_instance_uids)


def test_basic_auth_from_an_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = next(iter(write_instances(tmp_path / "in", 1, 1).values()))
    monkeypatch.setenv("ARCHIVE_PASSWORD_TEST", "s3cret:with-colon")
    with stow_archive([]) as archive:
        cfg = _config(
            tmp_path,
            archive.url,
            auth={"type": "basic", "username": "gw", "password": {"env": "ARCHIVE_PASSWORD_TEST"}},
        )
        with running_node(cfg) as (node, _):
            _send(node, files)
            assert wait_until(lambda: node.backlog().journal_states["forwarded"] == 1, 30)
    expected = "Basic " + base64.b64encode(b"gw:s3cret:with-colon").decode()
    assert archive.requests[0].headers["authorization"] == expected


def test_missing_credentials_stop_the_start_with_the_key_named(tmp_path: Path) -> None:
    from deid_core.errors import ConfigError
    from gateway.node import GatewayNode
    from tests.support.gateway import KEY_TEXT

    cfg = _config(tmp_path, "http://127.0.0.1:9/dicom-web")
    (tmp_path / "archive.token").unlink()
    from deid_core.keys import ProjectKey

    node = GatewayNode(cfg, ProjectKey(KEY_TEXT.encode()), monitor=False)
    with pytest.raises(ConfigError, match=r"destinations\.web\.auth\.token: file .* does not"):
        node.start()
    node.shutdown()
