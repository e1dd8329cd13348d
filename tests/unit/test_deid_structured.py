"""Structured documents (SR, KOS with text, encapsulated PDF/CDA) whose clinical content
de-identification would destroy: refused with ClinicalContentLossError unless the profile
accepts it with clean_structured_content."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from deid_core import (
    ClinicalContentLossError,
    ConfidentialityProfile,
    Deidentifier,
    PermanentError,
    ProjectKey,
)
from deid_core.options import ProfileOption

KEY = ProjectKey(b"s" * 40)
PLAIN = Deidentifier(ConfidentialityProfile(), KEY)
ACCEPTING = Deidentifier(
    ConfidentialityProfile(frozenset({ProfileOption.CLEAN_STRUCTURED_CONTENT})), KEY
)
KOS = "1.2.840.10008.5.1.4.1.1.88.59"


def _document(sop_class: str) -> Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    return ds


def _pdf() -> Dataset:
    ds = _document("1.2.840.10008.5.1.4.1.1.104.1")
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = b"%PDF-1.4 clinical findings"
    return ds


def _kos(with_text: bool) -> Dataset:
    ds = _document(KOS)
    ds.ValueType = "CONTAINER"
    ref = Dataset()
    ref.RelationshipType = "CONTAINS"
    ref.ValueType = "IMAGE"
    items = [ref]
    if with_text:
        text = Dataset()
        text.RelationshipType = "CONTAINS"
        text.ValueType = "TEXT"
        text.TextValue = "Lesion grew since prior"
        items.append(text)
    ds.ContentSequence = Sequence(items)
    return ds


@pytest.mark.parametrize(
    "make",
    [
        lambda: pydicom.dcmread(get_testdata_file("test-SR.dcm")),  # Comprehensive SR
        lambda: pydicom.dcmread(get_testdata_file("reportsi.dcm")),  # Basic Text SR
        _pdf,
        lambda: _kos(True),
        lambda: _document("1.2.840.10008.5.1.4.1.1.104.2"),  # Encapsulated CDA
    ],
    ids=["comprehensive_sr", "basic_text_sr", "pdf", "kos_with_text", "cda"],
)
def test_structured_content_is_refused_unless_the_profile_accepts_it(make) -> None:  # type: ignore[no-untyped-def]
    ds = make()
    with pytest.raises(ClinicalContentLossError) as raised:
        PLAIN.deidentify(ds)
    assert isinstance(raised.value, PermanentError)  # the gateway quarantines, never retries
    message = str(raised.value)
    assert "clean_structured_content" in message
    assert str(ds.get("PatientName", "")) not in message or not ds.get("PatientName")
    out = ACCEPTING.deidentify(make())
    assert out.PatientIdentityRemoved == "YES"
    codes = {i.CodeValue for i in out.DeidentificationMethodCodeSequence}
    assert "113104" in codes  # Clean Structured Content Option recorded


def test_images_and_kos_without_text_are_not_refused() -> None:
    assert PLAIN.deidentify(_kos(False)).SOPClassUID == KOS
    assert PLAIN.deidentify(pydicom.dcmread(get_testdata_file("CT_small.dcm"))).PatientID
