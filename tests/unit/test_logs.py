from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator

import pytest
import structlog

from gateway.events import EventBus, GatewayEvent, StudyRouted
from gateway.labels import Vocabulary
from gateway.logs import (
    REDACTED,
    EventLog,
    configure_logging,
    get_logger,
    is_identifying_key,
    reset_logging,
    scrub_text,
)
from tests.support.ops import DESTINATIONS, PLANTED_PHI, ROUTES, realistic_stream


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    yield stream
    reset_logging()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    parsed = []
    for line in text.splitlines():
        obj = json.loads(line)
        assert isinstance(obj, dict), line
        parsed.append(obj)
    return parsed


def test_each_log_call_is_one_json_object_on_one_line(log_stream: io.StringIO) -> None:
    log = get_logger("test")
    log.info("first", route="photos", count=3)
    log.warning("second\nwith a newline in the message", detail={"a": [1, 2]})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("third")
    records = lines(log_stream)
    assert [r["event"] for r in records] == [
        "first",
        "second\nwith a newline in the message",
        "third",
    ]
    assert records[0]["level"] == "info" and records[0]["count"] == 3
    assert "timestamp" in records[0]
    assert "ValueError" in str(records[2]["exception"])


def test_identifying_keys_are_blanked_whatever_their_value(log_stream: io.StringIO) -> None:
    log = get_logger("test").bind(PatientName="DOE^JOHN")
    structlog.contextvars.bind_contextvars(accession_number="ACC-778899")
    try:
        log.info(
            "careless_caller",
            patient_id="MRN0012345",
            study_uid="1.2.840.113619.2.55.3.604688119.868.1249000000.999",
            attributes={"PatientBirthDate": "19520317", "Modality": "XC"},
            mrn="MRN0012345",
            route="photos",
        )
    finally:
        structlog.contextvars.clear_contextvars()
    (record,) = lines(log_stream)
    text = log_stream.getvalue()
    for planted in PLANTED_PHI[:5]:
        assert planted not in text
    assert record["PatientName"] == REDACTED
    assert record["accession_number"] == REDACTED
    assert record["patient_id"] == REDACTED
    assert record["study_uid"] == REDACTED
    assert record["mrn"] == REDACTED
    assert record["attributes"] == {"PatientBirthDate": REDACTED, "Modality": "XC"}
    assert record["route"] == "photos"


@pytest.mark.parametrize(
    "key",
    [
        "patient_name",
        "PatientID",
        "OtherPatientIDs",
        "accession",
        "AccessionNumber",
        "patient-birth-date",
        "ReferringPhysicianName",
        "OperatorsName",
        "InstitutionName",
        "StudyInstanceUID",
        "sop_instance_uid",
        "StudyID",
        "ssn",
    ],
)
def test_identifying_keys(key: str) -> None:
    assert is_identifying_key(key)


@pytest.mark.parametrize(
    "key",
    ["route", "destination", "association_id", "study_key", "class_name", "reason", "seconds"],
)
def test_operational_keys_are_kept(key: str) -> None:
    assert not is_identifying_key(key)


def test_event_log_writes_one_line_per_event_without_planted_values(
    log_stream: io.StringIO,
) -> None:
    bus = EventBus()
    bus.subscribe(EventLog(Vocabulary(ROUTES, DESTINATIONS)))
    events: list[GatewayEvent] = realistic_stream(seed=5, studies=4)
    for event in events:
        bus.emit(event)
    records = lines(log_stream)
    assert len(records) == len(events)
    names = {r["event"] for r in records}
    assert {"instance_stored", "study_routed", "lesion_gate_decided", "forward_failed"} <= names
    stored = next(r for r in records if r["event"] == "instance_stored")
    assert {"association_id", "study_key", "size_bytes", "seconds"} <= set(stored)
    failed = next(r for r in records if r["event"] == "forward_failed")
    assert failed["level"] == "warning"
    assert failed["destination"] == "backup"
    text = log_stream.getvalue()
    for planted in PLANTED_PHI:
        assert planted not in text
    assert any(r.get("route") == "other" for r in records)
    assert any(r.get("destination") == "other" for r in records)


def test_without_a_vocabulary_the_event_log_writes_fields_as_they_are(
    log_stream: io.StringIO,
) -> None:
    EventLog().emit(StudyRouted(study_key="s", route="not-configured", instances=1))
    (record,) = lines(log_stream)
    assert record["route"] == "not-configured"


# ---- records of the standard logging module (pynetdicom, pydicom warnings, dicom_io) ---------


def test_library_records_are_json_lines_with_their_text_scrubbed(log_stream: io.StringIO) -> None:
    library = logging.getLogger("pynetdicom.acse")
    library.error("Non-conformant 'AE Title' value 'CNRYCALLER01'")
    library.error("TCP Initialisation Error: [Errno 111] Connection refused")
    library.info("Association Accepted")  # libraries are heard from warnings up only
    library.debug("PDU dump with DOE^JOHN")
    logging.getLogger("dicom_io.scp").info("refused a malformed data set: %s", "truncated")
    warnings.warn("Invalid value for VR PN: 'DOE^JOHN'", UserWarning, stacklevel=1)
    records = lines(log_stream)
    assert [r["logger"] for r in records] == [
        "pynetdicom.acse",
        "pynetdicom.acse",
        "dicom_io.scp",
        "py.warnings",
    ]
    assert records[0]["event"] == "Non-conformant '…' value '…'"
    assert records[0]["level"] == "error" and "timestamp" in records[0]
    assert records[1]["event"] == "TCP Initialisation Error: [Errno 111] Connection refused"
    assert records[2]["event"] == "refused a malformed data set: truncated"
    assert records[3]["level"] == "warning"
    text = log_stream.getvalue()
    assert "CNRYCALLER01" not in text and "DOE^JOHN" not in text


def test_exception_text_is_scrubbed_but_frames_are_kept(log_stream: io.StringIO) -> None:
    def choke(value: str) -> None:
        raise ValueError(f"Invalid value for VR UI: {value!r}")

    for log in (get_logger("gateway.pipeline"), logging.getLogger("pynetdicom.events")):
        try:
            choke("1.2.840.113619.2.55.3.604688119.868.1249000000.999")
        except ValueError:
            log.exception("assembler_error")
    records = lines(log_stream)
    assert len(records) == 2
    for record in records:
        exception = str(record["exception"])
        assert "1.2.840.113619" not in exception
        assert "ValueError: Invalid value for VR UI: '…'" in exception
        assert 'test_logs.py", line' in exception and "in choke" in exception


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("value 'DOE^JOHN' rejected", "value '…' rejected"),
        ('KeyError: "PatientName"', "KeyError: '…'"),
        ("uid 1.2.826.0.1.3680043.8.498.1 seen", "uid <uid> seen"),
        ("born 19520317, MRN 0012345", "born <number>, MRN <number>"),
        ("SMITH^JANE^^DR arrived", "<name> arrived"),
        ("cannot connect to ARCHIVE@169.254.3.2:4242: timed out", None),
        ("TCP Initialisation Error: [Errno 111] Connection refused", None),
        ("don't retry: it's permanent", None),
    ],
)
def test_scrub_text(text: str, expected: str | None) -> None:
    assert scrub_text(text) == (text if expected is None else expected)
