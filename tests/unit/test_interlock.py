"""The photograph interlock: a photograph on a flowedit route never reaches the outbox without
the flowedit step's record, whatever the override or the step that ran."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset

from deid_core.deidentify import record_method
from deid_core.options import ProfileOption
from gateway.interlock import is_photograph
from gateway.pixels import _FACTORIES as PIXEL_STEP_FACTORIES
from gateway.pixels import PixelAccepted, PixelContext, PixelOutcome, register_pixel_step
from tests.unit.test_pixel_pipeline import Harness, ScriptedExecutor, _accepted

VL_PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4"
DERMOSCOPY = "1.2.840.10008.5.1.4.1.1.77.1.7"
VIDEO_PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
SC = "1.2.840.10008.5.1.4.1.1.7"
SC_MULTIFRAME_TRUE_COLOR = "1.2.840.10008.5.1.4.1.1.7.4"
CT = "1.2.840.10008.5.1.4.1.1.2"
US = "1.2.840.10008.5.1.4.1.1.6.1"
WHOLE_SLIDE = "1.2.840.10008.5.1.4.1.1.77.1.6"


@pytest.mark.parametrize(
    ("sop_class", "modality", "photograph"),
    [
        (VL_PHOTO, "XC", True),
        (VL_PHOTO, "", True),
        (DERMOSCOPY, "DMS", True),
        (VIDEO_PHOTO, "XC", True),
        (SC, "XC", True),
        (SC, "OT", True),
        (SC_MULTIFRAME_TRUE_COLOR, "OT", True),
        (CT, "XC", True),  # mislabelled, but the modality says camera: treated as a photograph
        (SC, "CT", False),
        (SC, "", False),
        (CT, "CT", False),
        (US, "US", False),
        (WHOLE_SLIDE, "SM", False),
    ],
)
def test_what_counts_as_a_photograph(sop_class: str, modality: str, photograph: bool) -> None:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    if modality:
        ds.Modality = modality
    assert is_photograph(ds) is photograph


def _quarantined_reasons(h: Harness) -> list[str]:
    return [row.reason for row in h.storage.quarantine.list()]


def test_accept_pixels_override_cannot_forward_a_photograph_on_a_flowedit_route(
    tmp_path: Path,
) -> None:
    """The override skips the pixel step (as a released burned-in entry would): the interlock
    still holds the unedited photograph back."""
    h = Harness(tmp_path, ScriptedExecutor(), photos=2, override={"accept_pixels": True})
    result = h.pipeline.process_study(h.study)
    assert (result.queued, result.editing, result.quarantined) == (0, 0, 2)
    assert h.outbox_datasets() == []
    assert h.executor.jobs == []
    assert _quarantined_reasons(h) == ["photograph_not_transformed"] * 2


def test_an_edited_and_checked_photograph_still_passes(tmp_path: Path) -> None:
    h = Harness(tmp_path, ScriptedExecutor(), photos=2)
    h.pipeline.process_study(h.study)
    for job in h.executor.jobs:
        h.pipeline.complete_pixel_job(_accepted(job))
    assert len(h.outbox_datasets()) == 2
    assert _quarantined_reasons(h) == []


class _CarelessStep:
    """A plug-in registered as `flowedit` that forgets part (or all) of the edit's record."""

    name = "flowedit"

    def __init__(self, new_uid: bool, cleaned_code: bool) -> None:
        self.new_uid = new_uid
        self.cleaned_code = cleaned_code

    def process(
        self, original: Dataset, deidentified: Dataset, context: PixelContext
    ) -> PixelOutcome:
        assert context.derived_uid is not None
        if self.new_uid:
            deidentified.SOPInstanceUID = context.derived_uid(original.SOPInstanceUID, "flowedit")
        if self.cleaned_code:
            record_method(deidentified, ProfileOption.CLEAN_RECOGNIZABLE_VISUAL_FEATURES)
        return PixelAccepted(deidentified)


@pytest.mark.parametrize(
    ("new_uid", "cleaned_code", "forwarded"),
    [(False, False, False), (True, False, False), (False, True, False), (True, True, True)],
)
def test_a_flowedit_step_must_leave_its_record_on_the_photograph(
    tmp_path: Path, new_uid: bool, cleaned_code: bool, forwarded: bool
) -> None:
    saved = dict(PIXEL_STEP_FACTORIES)
    register_pixel_step("flowedit", lambda cfg: _CarelessStep(new_uid, cleaned_code))
    try:
        h = Harness(tmp_path, ScriptedExecutor(), photos=2)
    finally:
        PIXEL_STEP_FACTORIES.clear()
        PIXEL_STEP_FACTORIES.update(saved)
    h.pipeline.process_study(h.study)
    if forwarded:
        assert len(h.outbox_datasets()) == 2 and _quarantined_reasons(h) == []
        # the step changed the UID but not the File Meta: the written file is consistent anyway
        for ds in h.outbox_datasets():
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    else:
        assert h.outbox_datasets() == []
        assert _quarantined_reasons(h) == ["photograph_not_transformed"] * 2
