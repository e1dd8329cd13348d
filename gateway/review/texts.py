"""Words the pages show for the gateway's fixed vocabularies (quarantine reasons, states)."""

from __future__ import annotations

from gateway.events import QuarantineReason

#: reason -> (short title, what it means for the reviewer)
REASONS: dict[str, tuple[str, str]] = {
    QuarantineReason.NO_ROUTE.value: (
        "No route matched",
        "No routing rule applies to this instance, so it was neither de-identified nor sent.",
    ),
    QuarantineReason.BURNED_IN_ANNOTATION.value: (
        "Burned-in annotation",
        "The instance declares text burned into its pixels (Burned In Annotation = YES), which "
        "may show the patient's name or other identifiers. Look at the image before releasing.",
    ),
    QuarantineReason.DEIDENTIFICATION_FAILED.value: (
        "De-identification failed",
        "The confidentiality profile could not be applied to the metadata; the finding below "
        "names the attribute or rule.",
    ),
    QuarantineReason.PIXEL_STEP_FAILED.value: (
        "Pixel step failed",
        "The route's pixel step (e.g. the photograph edit) failed on this instance.",
    ),
    QuarantineReason.LESION_VANISHED.value: (
        "Lesion vanished",
        "The lesion found in the original photograph is not found in the de-identified one.",
    ),
    QuarantineReason.LESION_IOU_BELOW_THRESHOLD.value: (
        "Lesion changed",
        "The lesion masks of the original and the de-identified photograph overlap too little "
        "(IoU below the route's threshold): the edit may have altered the pathology.",
    ),
    QuarantineReason.LESION_MASK_UNRELIABLE.value: (
        "Lesion mask unreliable",
        "The lesion mask could not be measured reliably, so the lesion check could not decide.",
    ),
    QuarantineReason.DEAD_LETTER.value: (
        "Not delivered",
        "The destination refused this de-identified copy or did not answer after every attempt.",
    ),
    QuarantineReason.UNREADABLE.value: (
        "Unreadable",
        "The received file could not be read as a DICOM instance with a study.",
    ),
    QuarantineReason.PHOTOGRAPH_NOT_TRANSFORMED.value: (
        "Photograph not edited",
        "A photograph on a route that requires the generative edit was about to leave without "
        "it. It cannot be released as it is: re-run it on its route, or purge it.",
    ),
    QuarantineReason.BURNED_IN_UNKNOWN.value: (
        "Burned-in annotation unknown",
        "The instance does not say whether text is burned into its pixels (Burned In Annotation "
        "absent) and its modality often has such text. Look at the image before releasing.",
    ),
    QuarantineReason.PROCESSING_ERROR.value: (
        "Processing error",
        "Processing this instance failed with an unexpected error (or ended the process) on "
        "every attempt; the finding names the error's kind and place, never a value. Re-run it "
        "once the cause is fixed, or purge it.",
    ),
    QuarantineReason.OUTBOX_FILE_MISSING.value: (
        "De-identified copy missing",
        "The de-identified copy waiting for the destination vanished from the outbox before it "
        "was sent. The received original is kept: releasing processes it again.",
    ),
}


def reason_title(reason: str) -> str:
    return REASONS.get(reason, (reason.replace("_", " ").capitalize(), ""))[0]


def reason_text(reason: str) -> str:
    return REASONS.get(reason, ("", ""))[1]
