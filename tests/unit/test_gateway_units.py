"""Unit tests of the gateway's pure parts: the receive-path scanner, routes, the spool, backoff."""

from __future__ import annotations

import io
import random
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from deid_core.errors import InvalidInputError
from dicom_io.header import encode_file_meta, read_file_meta, scan_dataset
from gateway.config import RetryPolicy, parse_config
from gateway.forwarder import backoff_delay
from gateway.routing import RouteContext, Router
from gateway.spool import Spool, SpoolFull


def _body(name: str) -> tuple[bytes, str]:
    raw = Path(get_testdata_file(name, download=False)).read_bytes()
    meta = read_file_meta(raw)
    return raw[meta.dataset_offset :], meta.transfer_syntax


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm"])
def test_scan_finds_the_study_of_well_formed_files(name: str) -> None:
    body, ts = _body(name)
    header = scan_dataset(body, ts)
    ds = pydicom.dcmread(get_testdata_file(name, download=False))
    assert header.study_instance_uid == ds.StudyInstanceUID
    assert header.sop_instance_uid == ds.SOPInstanceUID


@pytest.mark.parametrize("cut", [7, 400, 1000, 5000, -100])
def test_scan_refuses_truncated_data_naming_where(cut: int) -> None:
    body, ts = _body("CT_small.dcm")
    with pytest.raises(InvalidInputError, match="malformed data set"):
        scan_dataset(body[:cut], ts)


def test_file_meta_records_sender_and_reads_back() -> None:
    meta = encode_file_meta(
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.3",
        "1.2.840.10008.1.2.1",
        source_ae="GW",
        sending_ae="MOD",
        receiving_ae="GW",
        sending_address="dicom://h:1",
    )
    body, _ = _body("CT_small.dcm")
    ds = pydicom.dcmread(io.BytesIO(meta + body))
    assert ds.file_meta.SendingApplicationEntityTitle == "MOD"
    assert read_file_meta(meta + body).values["ReceivingApplicationEntityTitle"] == "GW"


def _router(tmp_path: Path, routes: list, default="quarantine") -> Router:  # type: ignore[no-untyped-def]
    (tmp_path / "k").write_text("x" * 40)
    cfg = parse_config(
        {
            "project": {"key": {"file": str(tmp_path / "k")}},
            "destinations": {"a": {"ae_title": "A", "host": "127.0.0.1", "port": 104}},
            "routes": routes,
            "default_route": default,
        }
    )
    return Router.from_config(cfg)


def test_first_matching_route_wins_and_unmatched_goes_to_quarantine(tmp_path: Path) -> None:
    router = _router(
        tmp_path,
        [
            {
                "name": "chest",
                "match": {
                    "modality": ["CT"],
                    "attributes": {"BodyPartExamined": {"regex": "CHE.*"}},
                },
                "destinations": ["a"],
            },
            {
                "name": "ct",
                "match": {"sop_class": ["CTImageStorage"], "calling_ae": ["SCANNER"]},
                "destinations": ["a"],
            },
        ],
    )
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    ds.BodyPartExamined = "CHEST"
    assert router.route(ds, RouteContext("SCANNER", "GW")).name == "chest"  # type: ignore[union-attr]
    ds.BodyPartExamined = "HEAD"
    assert router.route(ds, RouteContext("SCANNER", "GW")).name == "ct"  # type: ignore[union-attr]
    assert router.route(ds, RouteContext("OTHER", "GW")) is None


def test_route_config_errors_name_the_key(tmp_path: Path) -> None:
    from deid_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"routes\[0\].destinations: no destination named 'b'"):
        _router(tmp_path, [{"name": "x", "destinations": ["b"]}])
    with pytest.raises(ConfigError, match="not a DICOM attribute keyword"):
        _router(
            tmp_path,
            [{"name": "x", "match": {"attributes": {"Colour": "red"}}, "destinations": ["a"]}],
        )


def test_spool_writes_concurrently_and_refuses_past_high_water(tmp_path: Path) -> None:
    spool = Spool(tmp_path, high_water_percent=100, min_free_bytes=0)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(spool.write((b"a" * 1000, b"b"))))
        for _ in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.relative_path for r in results}) == 16
    assert all(spool.path(r.relative_path).stat().st_size == 1001 for r in results)
    full = Spool(tmp_path, min_free_bytes=1 << 62)
    with pytest.raises(SpoolFull):
        full.write((b"x",))


def test_backoff_grows_exponentially_within_jitter_and_cap() -> None:
    policy = RetryPolicy(initial_delay_s=1, multiplier=2, max_delay_s=10, jitter=0.1)
    rng = random.Random(0)
    delays = [backoff_delay(policy, n, rng) for n in range(1, 7)]
    for n, d in enumerate(delays, start=1):
        base = min(10, 2 ** (n - 1))
        assert base * 0.9 <= d <= base * 1.1
