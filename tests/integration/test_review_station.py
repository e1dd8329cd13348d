"""The review station as a real server on loopback: TLS, the trusted-proxy check against the real
TCP peer, start-up errors of `deid-gateway serve`, and the user commands."""

from __future__ import annotations

import ssl
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.node import Storage
from gateway.review.station import ReviewStation
from tests.conftest import run_cli
from tests.support.gateway import config_dict, make_key_file, parse
from tests.support.review import self_signed_certificate, write_users

pytestmark = pytest.mark.network


def _station(tmp_path: Path, **review: Any) -> tuple[ReviewStation, Storage]:
    data = config_dict(
        tmp_path / "gw",
        make_key_file(tmp_path),
        review={"enabled": True, "port": 0, **review},
    )
    cfg = parse(data)
    storage = Storage.open(cfg)
    station = ReviewStation(cfg, storage)
    station.start()
    return station, storage


@pytest.fixture
def tls_station(tmp_path: Path) -> Iterator[tuple[ReviewStation, Path]]:
    cert, key = self_signed_certificate(tmp_path)
    users = write_users(tmp_path / "users")
    station, storage = _station(
        tmp_path,
        users_file=str(users),
        tls={"cert_file": str(cert), "key_file": str(key)},
    )
    try:
        yield station, cert
    finally:
        station.stop()
        storage.close()


def test_the_station_speaks_tls_with_its_certificate_and_nothing_else(
    tls_station: tuple[ReviewStation, Path],
) -> None:
    station, cert = tls_station
    assert station.url.startswith("https://127.0.0.1:")
    context = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(verify=context) as client:
        page = client.get(station.url + "/login")
    assert page.status_code == 200 and "Sign in" in page.text
    assert page.http_version == "HTTP/1.1"
    cookie = page.headers["set-cookie"].lower()
    assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    # an unverified certificate is refused by a client that checks, and plain HTTP gets nothing
    with pytest.raises(httpx.ConnectError), httpx.Client() as client:
        client.get(station.url + "/login")
    with pytest.raises(httpx.HTTPError), httpx.Client() as client:
        client.get(station.url.replace("https://", "http://") + "/login", timeout=5)


def test_forwarded_for_headers_cannot_impersonate_the_trusted_proxy(tmp_path: Path) -> None:
    station, storage = _station(
        tmp_path,
        auth="trusted_header",
        trusted_header={"proxies": ["10.9.9.9"], "reviewer_groups": ["privacy"]},
    )
    headers = {
        "X-Forwarded-User": "mallory",
        "X-Forwarded-Groups": "privacy",
        "X-Forwarded-For": "10.9.9.9",
        "X-Real-IP": "10.9.9.9",
        "Forwarded": "for=10.9.9.9",
    }
    try:
        with httpx.Client() as client:
            response = client.get(station.url + "/quarantine", headers=headers)
        assert response.status_code == 403
        assert "mallory" not in response.text
    finally:
        station.stop()
        storage.close()


def _serve_config(tmp_path: Path, **review: Any) -> Path:
    data = config_dict(tmp_path / "gw", make_key_file(tmp_path), review=review)
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(data))
    return config


@pytest.mark.parametrize(
    ("review", "message"),
    [
        ({"users_file": "missing-users"}, "users file not found"),
        (
            {"users_file": "users", "tls": {"cert_file": "nope.crt", "key_file": "nope.key"}},
            "review.tls: cannot load the certificate",
        ),
    ],
)
def test_serve_stops_at_start_with_a_clear_error_for_a_bad_station(
    tmp_path: Path, review: dict[str, Any], message: str
) -> None:
    write_users(tmp_path / "users")
    config = _serve_config(tmp_path, enabled=True, port=0, **review)
    result = run_cli(["serve", "--config", str(config)], cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_user_commands_manage_the_file_and_refuse_bad_input(tmp_path: Path) -> None:
    users = tmp_path / "users"
    bad_role = run_cli(
        ["review", "add-user", str(users), "bob", "--role", "admin", "--password-stdin"],
        input="a long password\n",
    )
    assert bad_role.returncode == 2 and "--role must be reviewer or viewer" in bad_role.stderr
    short = run_cli(
        ["review", "add-user", str(users), "bob", "--role", "viewer", "--password-stdin"],
        input="short\n",
    )
    assert short.returncode == 2 and "at least 12 characters" in short.stderr
    assert not users.exists()
    no_tty = run_cli(["review", "add-user", str(users), "bob"], input="")
    assert no_tty.returncode == 2 and "--password-stdin" in no_tty.stderr
    added = run_cli(
        ["review", "add-user", str(users), "bob", "--role", "viewer", "--password-stdin"],
        input="a long password\n",
    )
    assert added.returncode == 0, added.stderr
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    assert "a long password" not in users.read_text()
    listed = run_cli(["review", "list-users", str(users)])
    assert listed.stdout.split() == ["bob", "viewer"]
    assert run_cli(["review", "remove-user", str(users), "bob"]).returncode == 0
    gone = run_cli(["review", "remove-user", str(users), "bob"])
    assert gone.returncode == 2 and "no user named 'bob'" in gone.stderr
