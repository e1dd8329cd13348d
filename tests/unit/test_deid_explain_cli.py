"""`deid-gateway explain`: narrowing by keyword or tag, and one clear line for an unknown one."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from deid_core.errors import InvalidInputError
from gateway.commands.deidentify import parse_attribute
from tests.conftest import run_cli


def test_attributes_are_parsed_from_keywords_and_tags() -> None:
    for text in ("PatientName", "(0010,0010)", "0010,0010", "00100010", "0x00100010"):
        assert parse_attribute(text) == 0x00100010
    assert parse_attribute("(0009,1010)") == 0x00091010  # private: explained as private
    for bad in ("PatientNmae", "(0011,00", "Patient Name", "(0044,9999)", ""):
        with pytest.raises(InvalidInputError):
            parse_attribute(bad)


def test_unknown_attribute_is_a_clear_error_not_a_traceback() -> None:
    ct = str(Path(get_testdata_file("CT_small.dcm")))  # type: ignore[arg-type]
    for args in (["--tag", "PatientNmae"], [ct, "--tag", "NoSuchKeyword"], []):
        proc = run_cli(["explain", *args])
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr and "KeyError" not in proc.stderr
        assert proc.stderr.startswith("error:"), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_tag_narrows_a_file_and_explains_rules_without_one() -> None:
    ct = str(Path(get_testdata_file("CT_small.dcm")))  # type: ignore[arg-type]
    proc = run_cli(["explain", ct, "--tag", "PatientName", "--tag", "(0008,0080)"])
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(("Inst", "Pat"))]
    assert sorted(r[1] for r in rows) == ["(0008,0080)", "(0010,0010)"]
    proc = run_cli(["explain", "--tag", "InstitutionName"])
    assert proc.returncode == 0, proc.stderr
    assert "(0008,0080)" in proc.stdout and "Table E.1-1" in proc.stdout
