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
    # Without a patient ID the name decides; different names give different pseudonyms.
    assert p.patient_name("", "Doe^John") != p.patient_name("", "Roe^Jane")


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
