from __future__ import annotations

import re

import pytest

from deid_core.keys import ProjectKey
from deid_core.pseudonyms import Pseudonymizer

KEY_A = ProjectKey(b"a" * 40)
KEY_B = ProjectKey(b"b" * 40)
UID = "1.2.840.113619.2.55.3.604688119.971.1048092346.34"


def test_uid_is_a_valid_2_25_uid_and_deterministic() -> None:
    first = Pseudonymizer(KEY_A).uid(UID)
    again = Pseudonymizer(ProjectKey(b"a" * 40)).uid(UID)  # a fresh instance: no shared memo
    assert first == again
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", first)
    assert len(first) <= 64
    assert int(first[5:]) < 2**128


def test_uid_padding_does_not_change_the_pseudonym() -> None:
    p = Pseudonymizer(KEY_A)
    assert p.uid(UID + "\x00") == p.uid(UID) == p.uid(" " + UID + " ")
    assert p.uid("") == ""


def test_different_keys_give_unrelated_outputs() -> None:
    a, b = Pseudonymizer(KEY_A), Pseudonymizer(KEY_B)
    assert a.uid(UID) != b.uid(UID)
    assert a.patient_id("PAT-1") != b.patient_id("PAT-1")
    # Unrelated: the two 128-bit integers share no more leading digits than chance allows.
    ua, ub = a.uid(UID)[5:], b.uid(UID)[5:]
    common = next((i for i, (x, y) in enumerate(zip(ua, ub, strict=False)) if x != y), 0)
    assert common < 6


def test_distinct_inputs_give_distinct_uids() -> None:
    p = Pseudonymizer(KEY_A)
    outputs = {p.uid(f"1.2.3.{i}") for i in range(2000)}
    assert len(outputs) == 2000


def test_derived_uid_depends_on_purpose_and_differs_from_uid() -> None:
    p = Pseudonymizer(KEY_A)
    edited = p.derived_uid(UID, "flowedit")
    assert edited != p.uid(UID)
    assert edited != p.derived_uid(UID, "thumbnail")
    assert edited == Pseudonymizer(KEY_A).derived_uid(UID, "flowedit")
    with pytest.raises(ValueError):
        p.derived_uid(UID, "")


def test_patient_id_and_name_agree_and_fit_their_vrs() -> None:
    p = Pseudonymizer(KEY_A, patient_id_prefix="ST01-")
    pid = p.patient_id("12345")
    assert re.fullmatch(r"ST01-[0-9A-F]{16}", pid)
    assert p.patient_name("12345", "Doe^John") == pid
    assert len(pid) <= 64
    # Without a patient ID name and birth date decide; different names give different pseudonyms.
    dob = "19700101"
    assert p.patient_name("", "Doe^John", birth_date=dob) != p.patient_name(
        "", "Roe^Jane", birth_date=dob
    )


def test_date_shift_is_per_patient_stable_and_in_range() -> None:
    p = Pseudonymizer(KEY_A, max_shift_days=365)
    shifts = {p.date_shift_days(f"P{i}") for i in range(300)}
    assert all(-365 <= s <= -1 for s in shifts)
    assert len(shifts) > 100  # spread out, not one constant
    assert p.date_shift_days("P1") == Pseudonymizer(KEY_A, max_shift_days=365).date_shift_days("P1")


def test_study_key_is_short_and_keyed() -> None:
    a, b = Pseudonymizer(KEY_A), Pseudonymizer(KEY_B)
    assert re.fullmatch(r"[0-9a-f]{16}", a.study_key(UID))
    assert a.study_key(UID) != b.study_key(UID)
    assert UID not in a.study_key(UID)


def test_bad_prefix_is_refused() -> None:
    with pytest.raises(ValueError):
        Pseudonymizer(KEY_A, patient_id_prefix="has space")


def test_patient_id_is_keyed_on_issuer_and_id() -> None:
    p = Pseudonymizer(KEY_A)
    a, b = p.patient_id("12345", issuer="HOSP_A"), p.patient_id("12345", issuer="HOSP_B")
    assert a != b  # two hospitals' patient 12345 are two research subjects
    assert a == Pseudonymizer(KEY_A).patient_id("12345", issuer=" HOSP_A ")  # padding aside
    # Issuer and ID are joined unambiguously.
    assert p.patient_id("BC", issuer="A") != p.patient_id("C", issuer="AB")
    # Without an issuer the pseudonym is what it always was (existing projects keep theirs).
    legacy = "SUBJ-" + KEY_A.hmac("patient-id", b"12345").hex()[:16].upper()
    assert p.patient_id("12345") == legacy
    assert p.patient_id("12345") not in (a, b)


def test_patient_without_id_falls_back_to_name_and_birth_date_then_study() -> None:
    p = Pseudonymizer(KEY_A)
    doe = p.patient_id("", name="Doe^John", birth_date="19700101")
    assert doe == p.patient_id("", name="DOE^JOHN^^^", birth_date="19700101")
    assert doe != p.patient_id("", name="Roe^Jane", birth_date="19700101")
    assert doe != p.patient_id("", name="Doe^John", birth_date="19700102")
    # Nothing identifies the patient: one pseudonym per study, never one for all of them.
    s1 = p.patient_id("", study_uid="1.2.3.1")
    s2 = p.patient_id("", study_uid="1.2.3.2")
    assert s1 != s2
    assert s1 == p.patient_id("", study_uid="1.2.3.1")
    assert len({doe, s1, s2, p.patient_id("", name="Roe^Jane")}) == 4
    # A birth date or a name alone would merge strangers: they key per study instead.
    assert p.patient_id("", birth_date="19700101", study_uid="1.2.3.1") == s1
    assert p.patient_id("", name="UNKNOWN", study_uid="1.2.3.2") == s2
    # The name pseudonym agrees with the ID pseudonym.
    assert p.patient_name("", "Doe^John", birth_date="19700101") == doe
    assert p.date_shift_days("", name="Doe^John") == p.date_shift_days("", name="Doe^John")
