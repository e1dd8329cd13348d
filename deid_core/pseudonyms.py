"""Keyed, deterministic pseudonyms: HMAC-SHA256 under the project key, no shared database.

The same input gives the same pseudonym on any machine that holds the key, so a UID referenced
from another instance (Referenced SOP Instance UID, Study Instance UID, Frame of Reference UID...)
maps to the same new UID in every file, and a re-sent instance gets the same output. Each kind of
value has
its own HMAC domain: a patient ID and a UID with the same text never give related outputs. Without
the key nothing can be reversed or linked across projects.
"""

from __future__ import annotations

import re

from deid_core.keys import ProjectKey

#: Characters allowed in the pseudonymous patient ID prefix (kept valid for LO and PN).
_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{0,16}$")


def _norm(value: str) -> bytes:
    """UIDs and IDs are compared without DICOM padding (trailing NUL or space)."""
    return value.strip(" \x00").encode("utf-8", errors="surrogateescape")


def _fields(*values: bytes) -> bytes:
    """Values joined unambiguously (length-prefixed): ("A", "BC") never keys like ("AB", "C")."""
    return b"".join(len(v).to_bytes(4, "big") + v for v in values)


class Pseudonymizer:
    """Every pseudonym the de-identifier writes. Pure functions of the key and the input."""

    def __init__(
        self, key: ProjectKey, patient_id_prefix: str = "SUBJ-", max_shift_days: int = 3652
    ) -> None:
        if not _PREFIX.match(patient_id_prefix):
            raise ValueError(
                "the patient ID prefix must be up to 16 letters, digits, '_', '.', '-'"
            )
        if max_shift_days < 1:
            raise ValueError("max_shift_days must be at least 1")
        self._key = key
        self.patient_id_prefix = patient_id_prefix
        self.max_shift_days = max_shift_days
        # Memo of UID pseudonyms: a study repeats the same few UIDs in every instance.
        self._uids: dict[str, str] = {}

    @property
    def key_fingerprint(self) -> str:
        return self._key.fingerprint()

    def _uid(self, domain: str, original: str) -> str:
        digest = self._key.hmac(domain, _norm(original))
        # 2.25 root: a UUID-sized integer (128 bits). At most 5 + 39 = 44 characters.
        return "2.25." + str(int.from_bytes(digest[:16], "big"))

    def uid(self, original_uid: str) -> str:
        """The pseudonym of a UID, identical wherever the UID appears; "" stays ""."""
        cached = self._uids.get(original_uid)
        if cached is not None:
            return cached
        norm = original_uid.strip(" \x00")
        new = self._uid("uid", norm) if norm else ""
        if len(self._uids) < 100_000:
            self._uids[original_uid] = new
        return new

    def derived_uid(self, original_uid: str, purpose: str) -> str:
        """A new UID for something made from the original (e.g. the SOP Instance UID of an edited
        photograph, purpose "flowedit"): stable for a retry, unrelated to `uid(original)`."""
        if not purpose:
            raise ValueError("derived_uid needs a purpose")
        return self._uid("derived-uid:" + purpose, original_uid)

    @staticmethod
    def patient_identity(
        pid: str,
        issuer: str = "",
        *,
        name: str = "",
        birth_date: str = "",
        study_uid: str = "",
    ) -> tuple[str, bytes]:
        """(HMAC domain, message) that identify one patient for every patient pseudonym.

        A patient ID only names a patient within its issuer: two hospitals' "12345" are two
        people, so the issuer (Issuer of Patient ID, or the site's configured default) is part
        of the key. Without a patient ID, the name and birth date together (with the issuer; the
        name compared without case) identify the patient; without both, nothing reliably links
        the instance to other studies, so it gets a pseudonym of its own study rather than one
        shared by every unidentified patient.
        Without an issuer, an ID keys exactly as before issuers were used."""
        pid_b, issuer_b = _norm(pid), _norm(issuer)
        if pid_b:
            if not issuer_b:
                return "patient-id", pid_b
            return "patient-id@issuer", _fields(issuer_b, pid_b)
        # Both are needed: a birth date alone, or a placeholder name ("UNKNOWN"), would merge
        # different people into one subject (the collision this keying exists to prevent).
        name_b, dob_b = _norm(name.rstrip("^= \x00").casefold()), _norm(birth_date)
        if name_b and dob_b:
            return "patient-name-birth", _fields(issuer_b, name_b, dob_b)
        return "patient-study", _fields(issuer_b, _norm(study_uid))

    def patient_id(
        self,
        pid: str,
        issuer: str = "",
        *,
        name: str = "",
        birth_date: str = "",
        study_uid: str = "",
    ) -> str:
        """Pseudonymous patient ID (also the Clinical Trial Subject ID): prefix + 16 hex digits.
        See `patient_identity` for what identifies the patient."""
        domain, message = self.patient_identity(
            pid, issuer, name=name, birth_date=birth_date, study_uid=study_uid
        )
        return self.patient_id_prefix + self._key.hmac(domain, message).hex()[:16].upper()

    def patient_name(
        self,
        patient_id: str,
        patient_name: str = "",
        issuer: str = "",
        *,
        birth_date: str = "",
        study_uid: str = "",
    ) -> str:
        """Pseudonymous patient name, as a PN family name equal to the pseudonymous patient ID, so
        that name and ID agree (the same fallbacks: see `patient_identity`)."""
        return self.patient_id(
            patient_id, issuer, name=patient_name, birth_date=birth_date, study_uid=study_uid
        )

    def date_shift_days(
        self,
        patient_id: str,
        issuer: str = "",
        *,
        name: str = "",
        birth_date: str = "",
        study_uid: str = "",
    ) -> int:
        """Per-patient shift in days, in [-max_shift_days, -1]: all dates of one patient move by the
        same amount, so intervals between them survive (Retain Longitudinal Modified Dates)."""
        domain, message = self.patient_identity(
            patient_id, issuer, name=name, birth_date=birth_date, study_uid=study_uid
        )
        if domain == "patient-id":
            digest = self._key.hmac("date-shift", message)
        else:
            digest = self._key.hmac("date-shift:" + domain, message)
        return -(1 + int.from_bytes(digest[:8], "big") % self.max_shift_days)

    def study_key(self, study_uid: str) -> str:
        """A short, non-reversible key of an original study for logs and grouping (16 hex)."""
        return self._key.hmac("study-key", _norm(study_uid)).hex()[:16]


__all__ = ["Pseudonymizer"]
