"""The de-identification engine on real files: structure, privates, pseudonyms, what it adds."""

from __future__ import annotations

import copy
import io

import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from deid_core import (
    ClinicalTrialSubject,
    ConfidentialityProfile,
    Deidentifier,
    InvalidInputError,
    ProjectKey,
    Pseudonymizer,
)
from deid_core.deidentify import IMPLEMENTATION_CLASS_UID, record_method
from deid_core.options import ProfileOption
from deid_core.private import SafePrivateElement
from dicom_io.files import encode_dataset, parse_dataset

KEY = ProjectKey(b"d" * 40)
O = ProfileOption  # noqa: E741


def _roundtrip(ds: Dataset) -> Dataset:
    """Write and read back, so the engine sees what a real file gives it (raw elements)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def _deid(*options: ProfileOption, **kw: object) -> Deidentifier:
    return Deidentifier(ConfidentialityProfile(frozenset(options), **kw), KEY)  # type: ignore[arg-type]


def _ct() -> Dataset:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def test_input_is_untouched_and_output_is_new() -> None:
    ds = _ct()
    before = encode_dataset(copy.deepcopy(ds))
    out = _deid(O.CLEAN_DESCRIPTORS).deidentify(ds)
    assert encode_dataset(copy.deepcopy(ds)) == before
    out.PatientID = "changed"
    assert ds.PatientID == "1CT1"


def test_file_meta_is_regenerated_and_consistent() -> None:
    ds = _ct()
    ds.file_meta.SourceApplicationEntityTitle = "HOSPITAL_PACS"
    out = _deid().deidentify(ds)
    meta = out.file_meta
    assert meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != ds.SOPInstanceUID
    assert meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert "SourceApplicationEntityTitle" not in meta
    back = parse_dataset(encode_dataset(out))
    assert back.SOPInstanceUID == out.SOPInstanceUID


def test_profile_attributes_are_written() -> None:
    trial = ClinicalTrialSubject("Sponsor", "PROT-7", "A protocol", "S01", "Site One")
    deid = Deidentifier(
        ConfidentialityProfile(frozenset({O.RETAIN_LONGITUDINAL_MODIFIED_DATES})), KEY, trial
    )
    ds = _ct()
    out = deid.deidentify(ds)
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107"]
    assert all(i.CodingSchemeDesignator == "DCM" for i in out.DeidentificationMethodCodeSequence)
    assert "PS3.15 2025e" in out.DeidentificationMethod[0]
    pid = Pseudonymizer(KEY).patient_id(ds.PatientID)
    assert out.PatientID == pid == out.ClinicalTrialSubjectID
    assert str(out.PatientName) == pid
    assert (out.ClinicalTrialSponsorName, out.ClinicalTrialProtocolID) == ("Sponsor", "PROT-7")
    assert (out.ClinicalTrialSiteID, out.ClinicalTrialSiteName) == ("S01", "Site One")
    assert _deid().deidentify(ds).LongitudinalTemporalInformationModified == "REMOVED"
    full = _deid(O.RETAIN_LONGITUDINAL_FULL_DATES).deidentify(ds)
    assert full.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert full.StudyDate == ds.StudyDate


def test_record_method_for_pixel_steps() -> None:
    out = _deid().deidentify(_ct())
    record_method(out, O.CLEAN_PIXEL_DATA, "burned-in text masked")
    record_method(out, O.CLEAN_PIXEL_DATA)
    record_method(out, O.CLEAN_RECOGNIZABLE_VISUAL_FEATURES)
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113101", "113102"]
    assert out.BurnedInAnnotation == "NO" and out.RecognizableVisualFeatures == "NO"
    assert any("burned-in text masked" in m for m in out.DeidentificationMethod)
    assert parse_dataset(encode_dataset(out)).BurnedInAnnotation == "NO"


def test_every_depth_is_de_identified() -> None:
    ds = _ct()
    level3 = Dataset()
    level3.PatientName = "Deep^Three"
    level3.ReferencedSOPInstanceUID = "1.2.3.4.5.6"
    level2 = Dataset()
    level2.AnatomicRegionSequence = Sequence([level3])  # not in the table: kept, cleaned
    level2.OperatorsName = "Deep^Two"
    level1 = Dataset()
    level1.AnatomicRegionModifierSequence = Sequence([level2])
    level1.OtherPatientIDsSequence = Sequence([Dataset()])  # X: removed whole
    level1.OtherPatientIDsSequence[0].PatientID = "OTHER-ID"
    ds.DerivationCodeSequence = Sequence([level1])
    out = _deid().deidentify(_roundtrip(ds))
    got1 = out.DerivationCodeSequence[0]
    assert "OtherPatientIDsSequence" not in got1
    got2 = got1.AnatomicRegionModifierSequence[0]
    assert got2.OperatorsName == ""  # X/Z/D; Type 2 in some IOD, nested: emptied
    got3 = got2.AnatomicRegionSequence[0]
    assert str(got3.PatientName) != "Deep^Three"
    assert got3.ReferencedSOPInstanceUID == Pseudonymizer(KEY).uid("1.2.3.4.5.6")


def test_private_attributes_removed_with_their_creators() -> None:
    ds = _ct()
    ds.add_new(0x00290010, "LO", "ACME 1.0")
    ds.add_new(0x00291001, "LO", "secret")
    item = Dataset()
    item.add_new(0x00110010, "LO", "INNER")
    item.add_new(0x00111001, "LT", "inner secret")
    item.PatientID = "X"
    ds.AnatomicRegionSequence = Sequence([item])
    out = _deid().deidentify(_roundtrip(ds))
    assert not any(t.is_private for t in out.keys())
    assert not any(t.is_private for t in out.AnatomicRegionSequence[0].keys())
    # CT_small has a GE private block: gone too.
    assert any(t.is_private for t in ds.keys())


def test_retain_safe_private_keeps_only_listed_numeric_elements() -> None:
    ds = _ct()
    # Block 0x11 of group 0019 (CT_small already uses block 0x10 for GE).
    ds.add_new(0x00190011, "LO", "SIEMENS MR HEADER")
    ds.add_new(0x0019110C, "IS", "1000")  # b-value: on the default list
    ds.add_new(0x0019110E, "LO", "John Smith")  # gradient direction slot holding text
    ds.add_new(0x00191110, "LO", "not listed")
    ds.add_new(0x00210010, "LO", "ACME")
    ds.add_new(0x00211001, "LO", "vendor text")
    out = _deid(O.RETAIN_SAFE_PRIVATE).deidentify(_roundtrip(ds))
    kept = {int(t) for t in out.keys() if t.is_private}
    assert kept == {0x00190011, 0x0019110C}
    configured = ConfidentialityProfile(
        frozenset({O.RETAIN_SAFE_PRIVATE}),
        safe_private=(SafePrivateElement("ACME", frozenset({0x01}), 0x0021),),
    )
    out = Deidentifier(configured, KEY).deidentify(_roundtrip(ds))
    assert {int(t) for t in out.keys() if t.is_private} == {0x00210010, 0x00211001}


def test_huge_private_block_is_removed() -> None:
    ds = _ct()
    for block in range(0x10, 0x30):
        ds.add_new(0x00330000 | block, "LO", f"VENDOR {block}")
        for e in range(0x100):
            ds.add_new(0x00330000 | (block << 8) | e, "LO", "x" * 32)
    out = _deid().deidentify(_roundtrip(ds))
    assert not any(t.is_private for t in out.keys())
    assert len(list(ds.keys())) > 8000


def test_overlays_and_curves() -> None:
    ds = pydicom.dcmread(get_testdata_file("examples_overlay.dcm"))
    ds.add_new(0x60004000, "LT", "overlay comment")
    ds.add_new(0x50000022, "LO", "curve description")
    ds.add_new(0x50003000, "OB", b"\x01\x02")
    ds = _roundtrip(ds)
    assert 0x60003000 in ds
    basic = _deid().deidentify(ds)
    assert not any(0x5000 <= t.group <= 0x60FF for t in basic.keys())
    clean = _deid(O.CLEAN_GRAPHICS).deidentify(ds)
    assert clean[0x60003000].value == bytes(len(ds[0x60003000].value))
    assert clean[0x60000010].value == ds[0x60000010].value  # overlay rows kept
    # A comment with no known words cleans to nothing: the basic action (X) applies.
    assert 0x60004000 not in clean
    assert clean[0x50003000].value == b"\x00\x00"


@pytest.mark.parametrize(
    "path", [p for p in get_charset_files() if p.endswith(".dcm")], ids=lambda p: p.split("/")[-1]
)
def test_character_sets_stay_valid(path: str) -> None:
    ds = pydicom.dcmread(path)
    if "SOPClassUID" not in ds:
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.SOPInstanceUID = "1.2.3.4"
        ds = _roundtrip(ds)
    out = _deid(O.CLEAN_DESCRIPTORS).deidentify(ds)
    back = parse_dataset(encode_dataset(out))
    back.decode()  # every text value decodes under the kept Specific Character Set
    assert back.get("SpecificCharacterSet") == ds.get("SpecificCharacterSet")
    names = [str(e.value) for e in ds.iterall() if e.VR == "PN" and e.value]
    assert names
    for elem in back.iterall():
        if elem.VR == "PN":
            assert str(elem.value).isascii() and str(elem.value) not in names


def test_dates_shift_per_patient_and_keep_intervals() -> None:
    deid = _deid(O.RETAIN_LONGITUDINAL_MODIFIED_DATES)
    a, b = _ct(), _ct()
    a.StudyDate, b.StudyDate = "20200101", "20200311"
    a.AcquisitionDateTime = "20200101235959.5+0100"
    out_a, out_b = deid.deidentify(a), deid.deidentify(b)
    shift = Pseudonymizer(KEY).date_shift_days(a.PatientID)
    assert out_a.StudyDate != "20200101"
    import datetime as dt

    da = dt.datetime.strptime(out_a.StudyDate, "%Y%m%d")
    db = dt.datetime.strptime(out_b.StudyDate, "%Y%m%d")
    assert (db - da).days == 70
    assert (dt.datetime(2020, 1, 1) - da).days == -shift
    assert out_a.AcquisitionDateTime.endswith("235959.5+0100")
    assert out_a.StudyTime == a.StudyTime  # times of day survive a whole-day shift
    # Another patient's dates move by that patient's own shift (a different one under this key):
    # the same original date no longer lines up across patients.
    other = _ct()
    other.PatientID = "someone else"
    other.StudyDate = "20200101"
    other_shift = Pseudonymizer(KEY).date_shift_days("someone else")
    assert other_shift != shift
    out_other = dt.datetime.strptime(deid.deidentify(other).StudyDate, "%Y%m%d")
    assert (dt.datetime(2020, 1, 1) - out_other).days == -other_shift
    assert out_other != da


def test_same_key_same_output_different_key_unrelated() -> None:
    ds = _ct()
    one = encode_dataset(_deid(O.CLEAN_DESCRIPTORS).deidentify(ds))
    two = encode_dataset(_deid(O.CLEAN_DESCRIPTORS).deidentify(_ct()))
    assert one == two
    other = Deidentifier(ConfidentialityProfile(), ProjectKey(b"e" * 40)).deidentify(ds)
    mine = _deid().deidentify(ds)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID"):
        assert getattr(other, keyword) != getattr(mine, keyword)


def test_explain_lists_every_attribute_without_values() -> None:
    ds = _ct()
    ds.PatientName = "Visible^Secret"
    ds.ImageComments = "comment with a secret"
    decisions = _deid().explain(_roundtrip(ds))
    paths = {d.path for d in decisions}
    for elem in ds:
        name = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        assert name in paths, name
    text = repr(decisions)
    assert "Secret" not in text and "secret" not in text and "1CT1" not in text
    by_name = {d.path: d for d in decisions}
    assert by_name["ImageComments"].action == "X"
    assert by_name["PatientIdentityRemoved"].action == "set"
    assert all(d.reason for d in decisions)


def test_not_an_instance_is_refused() -> None:
    ds = _ct()
    del ds.SOPInstanceUID
    with pytest.raises(InvalidInputError, match=r"SOP Instance UID \(0008,0018\)"):
        _deid().deidentify(ds)
    dicomdir = pydicom.dcmread(get_testdata_file("DICOMDIR"))
    with pytest.raises(InvalidInputError, match="DICOMDIR"):
        _deid().deidentify(dicomdir)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the values planted here
def test_wrong_vr_and_bad_values_give_valid_output() -> None:
    ds = _ct()
    ds.StudyDate = "not a date"
    ds[0x00080021] = DataElement(0x00080021, "LO", "2020-13-45")  # Series Date with a wrong VR
    ds[0x00081030] = DataElement(0x00081030, "UN", b"Study of Mr X")
    raw = _roundtrip(ds)
    out = _deid(O.RETAIN_LONGITUDINAL_MODIFIED_DATES, O.CLEAN_DESCRIPTORS).deidentify(raw)
    back = parse_dataset(encode_dataset(out))
    assert back.StudyDate == ""  # unreadable date: the basic action (Z) instead of a shift
    assert "Mr X" not in str(back.get("StudyDescription", ""))
    assert b"2020-13-45" not in encode_dataset(out)


def _pids(deid: Deidentifier, *datasets: Dataset) -> list[str]:
    outs = [deid.deidentify(ds) for ds in datasets]
    for out in outs:
        assert out.PatientID == out.PatientName
    return [str(out.PatientID) for out in outs]


def test_same_patient_id_from_two_issuers_gives_two_subjects() -> None:
    a, b, again = _ct(), _ct(), _ct()
    a.IssuerOfPatientID, b.IssuerOfPatientID, again.IssuerOfPatientID = "HOSP_A", "HOSP_B", "HOSP_A"
    pa, pb, pa2 = _pids(_deid(), a, b, again)
    assert pa != pb
    assert pa == pa2
    # No issuer in the data: the configured default issuer (the site) separates two sites.
    site_a = Deidentifier(ConfidentialityProfile(), KEY, default_issuer="Site A")
    site_b = Deidentifier(ConfidentialityProfile(), KEY, default_issuer="Site B")
    assert _pids(site_a, _ct()) != _pids(site_b, _ct())
    # An issuer in the data wins over the default.
    assert _pids(site_b, copy.deepcopy(a)) == [pa]
    # Via the qualifiers sequence (Universal Entity ID) when (0010,0021) is absent.
    q = _ct()
    item = Dataset()
    item.UniversalEntityID = "HOSP_A"
    item.UniversalEntityIDType = "DNS"
    q.IssuerOfPatientIDQualifiersSequence = Sequence([item])
    assert _pids(_deid(), q) == [pa]


def test_patients_without_id_do_not_share_one_pseudonym() -> None:
    def no_id(name: str, dob: str, study: str) -> Dataset:
        ds = _ct()
        ds.PatientID = ""
        ds.PatientName = name
        ds.PatientBirthDate = dob
        ds.StudyInstanceUID = study
        return ds

    deid = _deid()
    doe, roe, doe_again = _pids(
        deid,
        no_id("Doe^John", "19700101", "1.2.3.1"),
        no_id("Roe^Jane", "19700101", "1.2.3.2"),
        no_id("Doe^John", "19700101", "1.2.3.3"),
    )
    assert doe != roe
    assert doe == doe_again  # name + birth date link one patient's studies
    s1, s2, s1_again = _pids(
        deid, no_id("", "", "1.2.3.1"), no_id("", "", "1.2.3.2"), no_id("", "", "1.2.3.1")
    )
    assert s1 != s2
    assert s1 == s1_again
    assert len({doe, roe, s1, s2}) == 4
