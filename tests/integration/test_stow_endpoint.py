"""The gateway's STOW-RS endpoint, pushed to with httpx on loopback.

Success must mean durable: right after a 200 the journal (read by its own connection) has a row
per instance and the spool has the files; with the journal unwritable the same push gets 409 and
Failed SOP Sequence entries with 0xA700, and nothing is left behind. Bad payloads get the HTTP
status that says what is wrong, and one bad part fails alone. Instances pushed this way take the
routes like any other (here: forwarded by STOW-RS to a scripted archive).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from gateway.node import GatewayNode
from tests.support.gateway import (
    config_dict,
    destination,
    make_key_file,
    parse,
    running_node,
    wait_until,
    write_instances,
)
from tests.support.immutable import journal_files, unwritable
from tests.support.stow_server import stow_archive

pytestmark = pytest.mark.network

TOKEN = "stow-endpoint-token-abcdef"
FAILED_SOP = "00081198"
REFERENCED_SOP = "00081199"
SOP_INSTANCE = "00081155"
FAILURE_REASON = "00081197"


def _body(parts: Sequence[tuple[str, bytes]], boundary: str) -> bytes:
    out = b""
    for ctype, data in parts:
        out += f"--{boundary}\r\nContent-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _push(
    url: str,
    files: Sequence[Path] = (),
    *,
    parts: Sequence[tuple[str, bytes]] | None = None,
    token: str | None = TOKEN,
    content_type: str | None = None,
    body: bytes | None = None,
) -> httpx.Response:
    boundary = "b-" + uuid.uuid4().hex
    if body is None:
        body = _body(parts or [("application/dicom", f.read_bytes()) for f in files], boundary)
    headers = {
        "Content-Type": content_type
        or f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(url, content=body, headers=headers, timeout=30, trust_env=False)


def _uids(answer: dict[str, Any], tag: str) -> list[str]:
    return [item[SOP_INSTANCE]["Value"][0] for item in answer.get(tag, {}).get("Value", [])]


def _reasons(answer: dict[str, Any]) -> list[int]:
    return [
        item[FAILURE_REASON]["Value"][0] for item in answer.get(FAILED_SOP, {}).get("Value", [])
    ]


@contextmanager
def _node(tmp_path: Path, **sections: Any) -> Iterator[GatewayNode]:
    token = tmp_path / "stow.token"
    token.write_text(TOKEN)
    data = config_dict(tmp_path / "gw", make_key_file(tmp_path), **sections)
    # the journal alone in its folder, so that folder can be made unwritable
    data["storage"]["journal"] = str(tmp_path / "gw" / "journal" / "journal.sqlite")
    data["storage"].setdefault("study_stable_seconds", 0.5)
    data["dicomweb_in"] = {
        "enabled": True,
        "port": 0,
        "auth": {"type": "bearer", "token": {"file": str(token)}},
        "max_request_bytes": 4 << 20,
        **data.get("dicomweb_in", {}),
    }
    with running_node(parse(data)) as (node, _):
        yield node


def _rows(journal: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        return list(db.execute("SELECT calling_ae, spool_path FROM instances"))
    finally:
        db.close()


def test_success_only_after_spool_and_journal_have_every_instance(tmp_path: Path) -> None:
    files = next(iter(write_instances(tmp_path / "in", 1, 3).values()))
    uids = [str(pydicom.dcmread(f).SOPInstanceUID) for f in files]
    with _node(tmp_path, storage={"study_stable_seconds": 60}) as node:
        assert node.stow is not None
        url = node.stow.url + "/studies"
        rsp = _push(url, files)
        # the answer came after the rows: a separate reader sees them at once
        rows = _rows(node.cfg.storage.journal)
        assert rsp.status_code == 200, rsp.text
        assert rsp.headers["content-type"].startswith("application/dicom+json")
        assert _uids(rsp.json(), REFERENCED_SOP) == uids
        assert FAILED_SOP not in rsp.json()
        assert len(rows) == 3 and {r[0] for r in rows} == {"DICOMWEB"}
        spool = node.cfg.storage.spool_dir
        assert all((spool / path).is_file() for _, path in rows)
        # the spooled file is the instance as sent, behind file meta that names the sender
        spooled = pydicom.dcmread(spool / rows[0][1])
        assert spooled.file_meta.SendingApplicationEntityTitle == "DICOMWEB"
        assert str(spooled.SOPInstanceUID) in uids

        # the journal cannot be written: nothing is acknowledged, every instance failed 0xA700
        more = next(iter(write_instances(tmp_path / "more", 1, 2).values()))
        with unwritable(journal_files(node.cfg.storage.journal)):
            refused = _push(url, more)
        assert refused.status_code == 409, refused.text
        assert _reasons(refused.json()) == [0xA700, 0xA700]
        assert REFERENCED_SOP not in refused.json()
        assert len(_rows(node.cfg.storage.journal)) == 3
        assert len(list(spool.glob("incoming/*/*.dcm"))) == 3  # no orphan left behind
        assert not list((spool / "stow-buffer").glob("*"))  # the buffered body is gone


def test_bad_payloads_get_a_clear_status_and_bad_parts_fail_alone(tmp_path: Path) -> None:
    studies = write_instances(tmp_path / "in", 2, 1)
    (study_a, [file_a]), (_study_b, [file_b]) = studies.items()
    with _node(tmp_path, storage={"study_stable_seconds": 60}) as node:
        assert node.stow is not None
        url = node.stow.url + "/studies"
        assert _push(url, [file_a], token=None).status_code == 401
        assert _push(url, [file_a], token="wrong").status_code == 401
        assert _push(url, [file_a], content_type="application/dicom").status_code == 415
        assert _push(url, [file_a], content_type="multipart/related").status_code == 415
        xml = 'multipart/related; type="application/dicom+xml"; boundary=x'
        assert _push(url, [file_a], content_type=xml).status_code == 415
        assert _push(url, body=b"no boundary in here at all").status_code == 400
        truncated = _body([("application/dicom", file_a.read_bytes())], "cut")[:-20]
        cut = 'multipart/related; type="application/dicom"; boundary=cut'
        assert _push(url, body=truncated, content_type=cut).status_code == 400
        assert _push(url, body=b"x" * (5 << 20), content_type=cut).status_code == 413
        chunked = httpx.post(  # no Content-Length: the limit holds while streaming
            url,
            content=iter([b"x" * (1 << 20)] * 5),
            headers={"Content-Type": cut, "Authorization": f"Bearer {TOKEN}"},
            trust_env=False,
        )
        assert chunked.status_code == 413
        assert not list((node.cfg.storage.spool_dir / "stow-buffer").glob("*"))
        assert httpx.get(url, trust_env=False).status_code == 405
        assert _rows(node.cfg.storage.journal) == []

        # one good part, one that is not DICOM, one truncated, one of another study
        good = file_a.read_bytes()
        rsp = _push(
            f"{url}/{study_a}",
            parts=[
                ("application/dicom", good),
                ("application/dicom", b"\x00" * 128 + b"DICM garbage"),
                ("application/dicom", file_b.read_bytes()[:-4000]),
                ("application/dicom", file_b.read_bytes()),
            ],
        )
        assert rsp.status_code == 202, rsp.text
        answer = rsp.json()
        assert _uids(answer, REFERENCED_SOP) == [str(pydicom.dcmread(file_a).SOPInstanceUID)]
        assert _reasons(answer) == [0xC000, 0xC000, 0xA900]
        assert len(_rows(node.cfg.storage.journal)) == 1


def test_pushed_studies_take_the_routes(tmp_path: Path) -> None:
    files = next(iter(write_instances(tmp_path / "in", 1, 2).values()))
    with stow_archive([]) as archive:
        web = {"type": "dicomweb", "url": archive.url, "retry": {"initial_delay_s": 0.1}}
        routes = [{"name": "web", "match": {"calling_ae": ["DICOMWEB"]}, "destinations": ["web"]}]
        dead = destination("127.0.0.1", 9, "NOWHERE")
        with _node(
            tmp_path,
            destinations={"web": web, "dimse": dead},
            routes=[*routes, {"name": "rest", "destinations": ["dimse"]}],
        ) as node:
            assert node.stow is not None
            assert _push(node.stow.url + "/studies", files).status_code == 200
            assert wait_until(lambda: node.backlog().journal_states["forwarded"] == 2, 30)
    sent = archive.requests[0].sop_instance_uids
    originals = {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
    assert len(sent) == 2 and not originals & set(sent)


def test_endpoint_beyond_loopback_needs_tls_and_auth(tmp_path: Path) -> None:
    from deid_core.errors import ConfigError

    data = config_dict(tmp_path / "gw", make_key_file(tmp_path))
    data["dicomweb_in"] = {"enabled": True, "address": "0.0.0.0"}
    with pytest.raises(ConfigError, match=r"tls .* is required"):
        parse(data)
    data["dicomweb_in"]["tls"] = {"cert_file": "c.pem", "key_file": "k.pem"}
    with pytest.raises(ConfigError, match=r"auth .* is required"):
        parse(data)
