"""Settling combined actions by the attribute's Type in the instance's IOD."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file

from deid_core import iod
from deid_core.actions import Action, resolve
from deid_core.deidentify import Deidentifier
from deid_core.keys import ProjectKey
from deid_core.options import ProfileOption
from deid_core.profile import ConfidentialityProfile

CT = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


@pytest.mark.parametrize(
    ("code", "t", "expected"),
    [
        ("X/Z", 3, Action.REMOVE),
        ("X/Z", 2, Action.ZERO),
        ("X/Z", None, Action.REMOVE),
        ("X/D", 3, Action.REMOVE),
        ("X/D", 1, Action.DUMMY),
        ("X/D", 2, Action.DUMMY),
        ("Z/D", 2, Action.ZERO),
        ("Z/D", 1, Action.DUMMY),
        ("Z/D", None, Action.ZERO),
        ("X/Z/D", 3, Action.REMOVE),
        ("X/Z/D", 2, Action.ZERO),
        ("X/Z/D", 1, Action.DUMMY),
        ("X/Z/U*", 3, Action.REMOVE),
        ("X/Z/U*", 2, Action.UID),
        ("X/Z/U*", 1, Action.UID),
        ("K", 1, Action.KEEP),
        ("C", None, Action.CLEAN),
        ("U", 3, Action.UID),
    ],
)
def test_combination_settled_by_type(code: str, t: int | None, expected: Action) -> None:
    assert resolve(code, t) is expected


def test_unknown_code_is_refused() -> None:
    with pytest.raises(ValueError):
        resolve("Q", 1)


def test_types_per_iod() -> None:
    ct = iod.iod_types(CT)
    sr = iod.iod_types(COMPREHENSIVE_SR)
    mr = iod.iod_types(ENHANCED_MR)
    assert ct is not None and sr is not None and mr is not None
    content_date, serial = 0x00080023, 0x00181000
    assert ct[content_date] == 2 and sr[content_date] == 1
    assert ct[serial] == 3 and mr[serial] == 1
    # Unknown IOD: the most demanding Type anywhere (conformance kept, no privacy cost).
    assert iod.attribute_type(content_date, None) == 1
    assert iod.attribute_type(serial, iod.iod_types("1.2.3.4")) == 1
    assert iod.attribute_type(0x00100010, ct) is None


def test_engine_uses_the_iod_of_the_instance() -> None:
    """Content Date is Z/D: Type 2 in CT (emptied), Type 1 in SR (dummy date)."""
    deid = Deidentifier(ConfidentialityProfile(), ProjectKey(b"k" * 40))
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    sr = pydicom.dcmread(get_testdata_file("test-SR.dcm"))
    # An SR is de-identified only by a profile that accepts cleaning its content.
    deid_sr = Deidentifier(
        ConfidentialityProfile(frozenset({ProfileOption.CLEAN_STRUCTURED_CONTENT})),
        ProjectKey(b"k" * 40),
    )
    out_ct, out_sr = deid.deidentify(ct), deid_sr.deidentify(sr)
    assert out_ct.ContentDate == ""
    assert out_sr.ContentDate == "19000101" and sr.ContentDate != "19000101"
    # Institution Name (X/Z/D) is Type 3 in CT: removed.
    assert "InstitutionName" in ct and "InstitutionName" not in out_ct
    explained = {d.keyword: d for d in deid.explain(ct)}
    assert "Type 3 in CT Image" in explained["InstitutionName"].reason
    assert explained["ContentDate"].action == "Z"
