"""DICOMweb pieces without a network: multipart encoding and parsing, the STOW-RS response in JSON
and XML, Retry-After, how each HTTP answer maps to per-instance statuses or a failure kind, and the
configuration of DICOMweb destinations and the STOW-RS endpoint."""

from __future__ import annotations

import email.utils
import json
import time
from pathlib import Path

import httpx
import pytest

from deid_core.errors import ConfigError, InvalidInputError
from dicom_io.dicomweb import (
    StowFailed,
    StowTarget,
    _retry_after,
    _statuses,
    basic_authorization,
    iter_parts,
    multipart_body,
    parse_content_type,
    parse_stow_response,
    stow_response,
)
from tests.support.gateway import config_dict, make_key_file, parse

TARGET = StowTarget("https://archive.example/dicom-web", authorization="Bearer SECRET-TOKEN")


def test_multipart_round_trip_with_empty_and_large_parts(tmp_path: Path) -> None:
    contents = [b"first", b"", bytes(range(256)) * 8000]
    files = []
    for i, content in enumerate(contents):
        files.append(tmp_path / f"{i}.dcm")
        files[-1].write_bytes(content)
    body = multipart_body(files)
    data = b"".join(body)
    assert len(data) == body.length()
    ctype = parse_content_type(body.content_type)
    assert ctype.root_type == "application/dicom"
    parts = list(iter_parts(data, ctype.boundary))
    assert [data[p.start : p.end] for p in parts] == contents
    assert {p.content_type for p in parts} == {"application/dicom"}


def test_parts_from_other_writers_preamble_padding_and_header_case() -> None:
    data = (
        b"preamble to ignore\r\n--XyZ  \r\ncontent-TYPE: Application/DICOM; charset=x\r\n"
        b"Content-Location: a\r\n\r\nAAA\r\n--XyZ\r\n\r\nBB\r\n--XyZ--\r\nepilogue"
    )
    parts = list(iter_parts(data, b"XyZ"))
    assert [data[p.start : p.end] for p in parts] == [b"AAA", b"BB"]
    assert parts[0].content_type == "application/dicom"
    assert parts[1].headers == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"nothing here", "does not contain its multipart boundary"),
        (b"--B\r\nContent-Type: application/dicom\r\n\r\nAAA", "not closed"),
        (b"--B\r\nno colon here\r\n\r\nAAA\r\n--B--", "without a colon"),
        (b"--B", "not terminated"),
    ],
)
def test_malformed_bodies_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        list(iter_parts(body, b"B"))


def test_content_type_parsing() -> None:
    quoted = parse_content_type('Multipart/Related; type="application/dicom"; boundary="a b"')
    assert quoted.boundary == b"a b" and quoted.root_type == "application/dicom"
    assert parse_content_type("multipart/related; boundary=x").root_type == ""
    with pytest.raises(InvalidInputError, match="takes multipart/related"):
        parse_content_type("application/dicom")
    with pytest.raises(InvalidInputError, match="no boundary"):
        parse_content_type('multipart/related; type="application/dicom"')


def test_stow_response_reads_json_and_xml() -> None:
    built = stow_response([("1.2", "1.2.3")], [("1.2", "1.2.4", 0xA700)])
    answer = parse_stow_response(json.dumps(built).encode(), "application/dicom+json")
    assert answer.failed == {"1.2.4": 0xA700} and answer.stored == {"1.2.3": 0}
    wrapped = parse_stow_response(json.dumps([built]).encode(), "application/json")
    assert wrapped.failed == {"1.2.4": 0xA700}
    xml = b"""<?xml version="1.0"?><NativeDicomModel>
      <DicomAttribute tag="00081198" vr="SQ"><Item number="1">
        <DicomAttribute tag="00081155" vr="UI"><Value number="1">1.2.9</Value></DicomAttribute>
        <DicomAttribute tag="00081197" vr="US"><Value number="1">49152</Value></DicomAttribute>
      </Item></DicomAttribute>
      <DicomAttribute tag="00081199" vr="SQ"><Item number="1">
        <DicomAttribute tag="00081155" vr="UI"><Value number="1">1.2.8</Value></DicomAttribute>
        <DicomAttribute tag="00081196" vr="US"><Value number="1">45056</Value></DicomAttribute>
      </Item></DicomAttribute></NativeDicomModel>"""
    parsed = parse_stow_response(xml, "application/dicom+xml")
    assert parsed.failed == {"1.2.9": 0xC000} and parsed.stored == {"1.2.8": 0xB000}
    with pytest.raises(InvalidInputError):
        parse_stow_response(b"{not json", "application/dicom+json")


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert _retry_after("120") == 120
    assert _retry_after("9999999") == 86400  # capped at a day
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= (_retry_after(date, now) or 0) <= 31
    assert _retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0
    assert _retry_after("soon") is None and _retry_after(None) is None


def _answer(status: int, body: object = None, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    content = json.dumps(body).encode() if body is not None else b""
    return httpx.Response(status, headers=headers or {}, content=content)


def test_http_answers_map_to_statuses_or_failure_kinds() -> None:
    uids = ["1.1", "1.2", "1.3"]
    assert _statuses(_answer(200, {}), uids, TARGET) == [0, 0, 0]
    partial = stow_response([("c", "1.1")], [("c", "1.2", 0xA700)])
    # 202: listed failures fail, listed successes pass, an instance not named is not stored
    assert _statuses(_answer(202, partial), uids, TARGET) == [0, 0xA700, 0x0110]
    assert _statuses(_answer(409, stow_response([], [])), uids, TARGET) == [0x0110] * 3
    cases = {
        401: "auth",
        403: "auth",
        408: "busy",
        429: "busy",
        503: "busy",
        500: "server_error",
        502: "server_error",
        400: "status",
        413: "status",
        415: "status",
    }
    for code, kind in cases.items():
        with pytest.raises(StowFailed) as err:
            _statuses(_answer(code, headers={"Retry-After": "7"}), uids, TARGET)
        assert err.value.kind == kind, code
        assert err.value.http_status == code
        assert "SECRET-TOKEN" not in str(err.value)
        if kind in ("busy", "server_error"):
            assert err.value.retry_after == 7


def test_credentials_stay_out_of_reprs() -> None:
    assert "SECRET" not in repr(TARGET)
    assert basic_authorization("gw", "pw") == "Basic Z3c6cHc="


def _cfg(tmp_path: Path, **dest: object):  # type: ignore[no-untyped-def]
    return config_dict(
        tmp_path / "gw", make_key_file(tmp_path), destinations={"web": {"type": "dicomweb", **dest}}
    )


@pytest.mark.parametrize(
    ("dest", "message"),
    [
        ({"url": "ftp://a/b"}, "must be an http:// or https:// URL"),
        ({"url": "https://u:p@a/b"}, "credentials go in 'auth'"),
        ({"url": "https://a/b?x=1"}, "takes no query"),
        ({"url": "http://10.0.0.1/dw"}, "allow_plain_http"),
        ({"url": "http://127.0.0.1/dw", "tls": {}}, "use https://"),
        (
            {"url": "https://a", "auth": {"type": "bearer", "token": {"file": "f", "env": "E"}}},
            "exactly one of 'file' or 'env'",
        ),
        (
            {
                "url": "https://a",
                "auth": {"type": "basic", "username": "a:b", "password": {"env": "E"}},
            },
            "destinations.web.auth.basic.username",
        ),
        ({"url": "https://a", "auth": {"type": "digest"}}, "destinations.web.auth"),
    ],
)
def test_dicomweb_destination_configuration_errors(
    tmp_path: Path, dest: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(_cfg(tmp_path, **dest))


def test_plain_http_on_a_closed_network_when_asked(tmp_path: Path) -> None:
    cfg = parse(_cfg(tmp_path, url="http://10.0.0.1/dicom-web/", allow_plain_http=True))
    assert cfg.destinations["web"].url == "http://10.0.0.1/dicom-web"  # type: ignore[union-attr]
    assert cfg.dimse_destinations() == {}
