"""The quarantine_burned_in pixel step: YES quarantines, NO passes, and an absent value passes
only where burned-in text is rare."""

from __future__ import annotations

import pytest
from pydicom import Dataset

from gateway.events import QuarantineReason
from gateway.pixels import PixelAccepted, PixelContext, PixelRejected, QuarantineBurnedIn

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
US = "1.2.840.10008.5.1.4.1.1.6.1"
XA = "1.2.840.10008.5.1.4.1.1.12.1"
RF = "1.2.840.10008.5.1.4.1.1.12.2"
ENDOSCOPY = "1.2.840.10008.5.1.4.1.1.77.1.1"
PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4"
SC = "1.2.840.10008.5.1.4.1.1.7"
SC_MULTIFRAME_GREY = "1.2.840.10008.5.1.4.1.1.7.2"

CONTEXT = PixelContext(route="r", study_key="s" * 64, seed=1)


def _instance(sop_class: str, modality: str, burned_in: str | None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    return ds


def _outcome(ds: Dataset) -> QuarantineReason | None:
    outcome = QuarantineBurnedIn().process(ds, Dataset(), CONTEXT)
    if isinstance(outcome, PixelAccepted):
        return None
    assert isinstance(outcome, PixelRejected)
    return outcome.reason


COMMON = [
    (US, "US"),
    (XA, "XA"),
    (RF, "RF"),
    (ENDOSCOPY, "ES"),
    (PHOTO, "XC"),
    (SC, "OT"),
    (SC, "CT"),  # a secondary capture whatever its modality
    (SC_MULTIFRAME_GREY, "MR"),
    (CT, "OT"),
]
RARE = [(CT, "CT"), (MR, "MR")]


@pytest.mark.parametrize(("sop_class", "modality"), COMMON)
def test_absent_on_a_modality_with_common_burned_in_text_is_quarantined(
    sop_class: str, modality: str
) -> None:
    assert _outcome(_instance(sop_class, modality, None)) is QuarantineReason.BURNED_IN_UNKNOWN
    assert _outcome(_instance(sop_class, modality, "")) is QuarantineReason.BURNED_IN_UNKNOWN
    assert _outcome(_instance(sop_class, modality, "NO")) is None
    assert _outcome(_instance(sop_class, modality, "YES")) is (
        QuarantineReason.BURNED_IN_ANNOTATION
    )


@pytest.mark.parametrize(("sop_class", "modality"), RARE)
def test_absent_where_burned_in_text_is_rare_passes(sop_class: str, modality: str) -> None:
    assert _outcome(_instance(sop_class, modality, None)) is None
    assert _outcome(_instance(sop_class, modality, "NO")) is None
    assert _outcome(_instance(sop_class, modality, "YES")) is (
        QuarantineReason.BURNED_IN_ANNOTATION
    )


def test_the_unknown_entry_says_what_was_missing_and_no_phi() -> None:
    ds = _instance(US, "US", None)
    ds.PatientName = "DOE^JANE"
    outcome = QuarantineBurnedIn().process(ds, Dataset(), CONTEXT)
    assert isinstance(outcome, PixelRejected)
    assert dict(outcome.details) == {"BurnedInAnnotation": "absent", "modality": "US"}
