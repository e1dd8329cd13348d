"""Every text attribute of the DICOM dictionary, planted with a canary in one dataset: none may
survive de-identification except the documented allow-list of technical values."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from deid_core import ConfidentialityProfile, Deidentifier, ProjectKey
from deid_core.options import ProfileOption
from deid_core.profile import TECHNICAL_TEXT
from tests.support.canary import CANARY_PREFIX

KEY = ProjectKey(b"t" * 40)
TEXT_VRS = ("LO", "SH", "LT", "ST", "UT", "UC", "PN", "UR", "AE")
#: Attributes the test cannot plant: File Meta / command groups (rewritten, not part of a data
#: set) and the two attributes the de-identifier must read to know what it is de-identifying.
_SKIP_GROUPS = (0x0000, 0x0002)
CONTAINER = 0x00082218  # Anatomic Region Sequence: not in the table, kept with its items cleaned


def _text_tags() -> list[tuple[int, str, str]]:
    tags = []
    for tag, (vr, _vm, _name, _retired, keyword) in DicomDictionary.items():
        if vr in TEXT_VRS and tag >> 16 not in _SKIP_GROUPS:
            tags.append((tag, vr, keyword))
    return tags


def _plant(ds: Dataset, prefix: str) -> dict[str, str]:
    planted: dict[str, str] = {}
    for n, (tag, vr, keyword) in enumerate(_text_tags()):
        value = f"{CANARY_PREFIX}{prefix}{n:05d}"  # 13 characters: fits SH and AE
        ds[tag] = DataElement(tag, vr, value)
        planted[value] = keyword
    return planted


def _planted_dataset() -> tuple[Dataset, dict[str, str]]:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    planted = _plant(ds, "T")
    item = Dataset()
    planted.update(_plant(item, "N"))
    ds[CONTAINER] = DataElement(CONTAINER, "SQ", Sequence([item]))
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    assert all(value.encode() in data for value in planted)
    return pydicom.dcmread(io.BytesIO(data)), planted


@pytest.mark.parametrize(
    "options",
    [
        frozenset(),
        frozenset({ProfileOption.CLEAN_DESCRIPTORS}),
        frozenset({ProfileOption.CLEAN_DESCRIPTORS, ProfileOption.CLEAN_STRUCTURED_CONTENT}),
    ],
    ids=["basic", "clean_descriptors", "clean_structured_content"],
)
def test_no_text_attribute_keeps_its_canary(options: frozenset[ProfileOption]) -> None:
    ds, planted = _planted_dataset()
    assert len(planted) > 1000  # really every text attribute, twice
    out = Deidentifier(ConfidentialityProfile(options), KEY).deidentify(ds)
    buffer = io.BytesIO()
    out.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    survivors = {keyword for value, keyword in planted.items() if value.encode() in data}
    # Only the documented technical allow-list keeps its value, and nothing else at all.
    assert survivors <= TECHNICAL_TEXT, sorted(survivors - TECHNICAL_TEXT)
    rest = data
    for value, keyword in planted.items():
        if keyword in TECHNICAL_TEXT:
            rest = rest.replace(value.encode(), b"")
    assert CANARY_PREFIX.encode() not in rest


def test_encrypted_attributes_sequence_is_always_removed() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    item = Dataset()
    item.EncryptedContentTransferSyntaxUID = "1.2.840.10008.1.2.1"
    item.EncryptedContent = (CANARY_PREFIX + "ENCRYPTED").encode()
    ds.EncryptedAttributesSequence = Sequence([item])
    every = frozenset(ProfileOption) - {ProfileOption.RETAIN_LONGITUDINAL_FULL_DATES}
    for options in (frozenset(), every):
        out = Deidentifier(ConfidentialityProfile(options), KEY).deidentify(ds)
        assert "EncryptedAttributesSequence" not in out


def _code_item(scheme: str, value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def test_code_meaning_is_kept_only_when_it_is_the_standard_one() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.AnatomicRegionSequence = Sequence(
        [
            _code_item("SCT", "10200004", "Liver"),  # the standard meaning: kept
            _code_item("SCT", "10200004", f"Liver of {CANARY_PREFIX}SMITH"),  # replaced
            _code_item("SCT", "999999999999", f"{CANARY_PREFIX}JONES liver"),  # cleaned
            _code_item("UCUM", "mm", "mm"),  # a unit that is its own meaning
        ]
    )
    out = Deidentifier(ConfidentialityProfile(), KEY).deidentify(ds)
    meanings = [i.CodeMeaning for i in out.AnatomicRegionSequence]
    assert meanings == ["Liver", "Liver", "liver", "mm"]
    assert [i.CodeValue for i in out.AnatomicRegionSequence][:2] == ["10200004", "10200004"]
