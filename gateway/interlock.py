"""The photograph interlock: the last check before a copy of an instance enters the outbox.

The privacy rule: a photograph on a route that asks for the generative edit (`pixels: flowedit`)
is never forwarded with pixels that were not transformed and checked. The pixel step is meant to
enforce that, but routes, reviewer overrides (`accept_pixels`), a step registered by a plug-in or
a future code path could each get around it; this check does not depend on any of them. It looks
only at what is about to leave:

- the instance is a **photograph** (`is_photograph`): a photographic SOP class (VL Photographic
  Image, Video Photographic Image, Dermoscopic Photography Image, VL Endoscopic Image, Video
  Endoscopic Image), or any image of Modality XC (external-camera photography), DMS
  (dermoscopy) or ES (endoscopy), or a Secondary Capture (any SC SOP class) of Modality OT, which
  is how cameras and phone apps commonly label photographs. Radiology (CT, MR, US, ...) and slide
  microscopy are not photographs here;
- the route's pixel step is `flowedit`;
- then the outgoing data set must carry the flowedit step's record: its SOP Instance UID is the
  keyed UID the step gives its derived instance (`derived_uid(original UID, "flowedit")`, which
  the metadata profile never produces) **and** its De-identification Method Code Sequence holds
  113102 "Clean Recognizable Visual Features Option" (written by `gateway.photo` once the edit is
  written and its gate decided, or waived by a reviewer who saw the edit).

Otherwise the instance goes to quarantine as `photograph_not_transformed`, whatever the override.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping

import pydicom
from pydicom import Dataset

from deid_core.options import OPTION_CODES, ProfileOption
from gateway.config import GatewayConfig, RouteTarget
from gateway.events import QuarantineReason

#: Photographic SOP classes (PS3.4 B.5): the pixels are a picture of a person.
PHOTOGRAPHIC_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL Photographic Image
        "1.2.840.10008.5.1.4.1.1.77.1.4.1",  # Video Photographic Image
        "1.2.840.10008.5.1.4.1.1.77.1.7",  # Dermoscopic Photography Image
        "1.2.840.10008.5.1.4.1.1.77.1.1",  # VL Endoscopic Image
        "1.2.840.10008.5.1.4.1.1.77.1.1.1",  # Video Endoscopic Image
    }
)

#: Secondary Capture SOP classes (single-frame and the four multi-frame ones).
SECONDARY_CAPTURE_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.7.1",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
    }
)

#: Modalities whose images are photographs whatever the SOP class.
PHOTOGRAPHIC_MODALITIES = frozenset({"XC", "DMS", "ES"})

#: Modalities of a Secondary Capture that make it a photograph.
PHOTOGRAPHIC_SC_MODALITIES = PHOTOGRAPHIC_MODALITIES | {"OT"}

#: The purpose under which the flowedit step maps the original UID to its derived instance's.
FLOWEDIT_UID_PURPOSE = "flowedit"

_CLEANED_CODE = OPTION_CODES[ProfileOption.CLEAN_RECOGNIZABLE_VISUAL_FEATURES][0]


def is_photograph(ds: Dataset) -> bool:
    """Whether `ds` (the received original) is a photograph, as the module docstring defines."""
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if sop_class in PHOTOGRAPHIC_SOP_CLASSES or modality in PHOTOGRAPHIC_MODALITIES:
        return True
    return sop_class in SECONDARY_CAPTURE_SOP_CLASSES and modality in PHOTOGRAPHIC_SC_MODALITIES


def carries_flowedit_record(
    original: Dataset, outgoing: Dataset, derived_uid: Callable[[str, str], str]
) -> bool:
    """Whether `outgoing` is the flowedit step's derived instance of `original`."""
    uid = str(original.get("SOPInstanceUID", "") or "")
    if not uid or str(outgoing.get("SOPInstanceUID", "")) != derived_uid(uid, FLOWEDIT_UID_PURPOSE):
        return False
    codes = outgoing.get("DeidentificationMethodCodeSequence") or []
    return any(str(getattr(item, "CodeValue", "")) == _CLEANED_CODE for item in codes)


def untransformed_photograph(
    pixels: str,
    original: Dataset,
    outgoing: Dataset,
    derived_uid: Callable[[str, str], str],
) -> dict[str, str] | None:
    """None when `outgoing` may enter the outbox; otherwise the quarantine details (no PHI) of a
    photograph on a flowedit route whose pixels were not transformed and checked."""
    if pixels != "flowedit" or not is_photograph(original):
        return None
    if carries_flowedit_record(original, outgoing, derived_uid):
        return None
    return {
        "error": "a photograph on a flowedit route lacks the flowedit step's record "
        "(derived SOP Instance UID and Clean Recognizable Visual Features); not forwarded",
        "sop_class": str(original.get("SOPClassUID", "")),
        "modality": str(original.get("Modality", "")),
    }


# --- releases from quarantine ------------------------------------------------------------------

#: How much a pixel step does to the pixels; a re-run onto a route with a smaller number needs an
#: explicit force. A step not named here (a plug-in) counts as editing.
PIXEL_STEP_STRENGTH = {"none": 0, "quarantine_burned_in": 1, "flowedit": 2}

#: The only quarantine reasons whose entries may be released with their pixels as they are: the
#: instance's pixels were held back because of text a person can check by looking.
ACCEPT_PIXELS_REASONS = frozenset(
    {QuarantineReason.BURNED_IN_ANNOTATION.value, QuarantineReason.BURNED_IN_UNKNOWN.value}
)


#: The only quarantine reasons whose entries may be released with the gate waived: a person saw
#: the gate's QA panel of this very edit (the step runs again deterministically: the same edit).
WAIVE_GATE_REASONS = frozenset(
    {
        QuarantineReason.LESION_VANISHED.value,
        QuarantineReason.LESION_IOU_BELOW_THRESHOLD.value,
        QuarantineReason.LESION_MASK_UNRELIABLE.value,
    }
)


def route_pixel_steps(cfg: GatewayConfig) -> dict[str, str]:
    """Route name -> its pixel step (the default route is named "default", as the router names
    it)."""
    steps: dict[str, str] = {r.name: r.pixels for r in cfg.routes}
    if isinstance(cfg.default_route, RouteTarget):
        steps["default"] = cfg.default_route.pixels
    return steps


def _strength(step: str | None) -> int:
    return PIXEL_STEP_STRENGTH.get(step, 2) if step else 2


def weaker_route(route: str, quarantined_on: str, route_pixels: Mapping[str, str] | None) -> bool:
    """Whether re-running on `route` would do less to the pixels than `quarantined_on` did."""
    if not quarantined_on or route == quarantined_on:
        return False
    steps = route_pixels or {}
    return _strength(steps.get(route)) < _strength(steps.get(quarantined_on))


def release_refusal(
    *,
    reason: str,
    quarantined_on: str,
    data: bytes,
    route: str | None,
    accept_pixels: bool,
    force: bool,
    route_pixels: Mapping[str, str] | None,
    waive_gate: bool = False,
) -> str | None:
    """Why a release from quarantine must not be carried out as asked (None: it may). `route` is
    the route forced for the re-run (None: the routes are matched again); `quarantined_on` is the
    route the entry was quarantined on ("" when none). Without `route_pixels` every route counts as
    editing (the strictest reading)."""
    steps = route_pixels or {}
    target = route or quarantined_on
    if accept_pixels:
        if reason not in ACCEPT_PIXELS_REASONS:
            return (
                f"accept-pixels is only for entries quarantined for burned-in annotation "
                f"({', '.join(sorted(ACCEPT_PIXELS_REASONS))}); this entry's reason is {reason}"
            )
        if _strength(steps.get(target)) >= PIXEL_STEP_STRENGTH["flowedit"] and _photograph(data):
            return (
                f"accept-pixels is refused for a photograph on route {target or '(matched)'}, "
                "which requires the generative edit: re-run it without accept-pixels"
            )
    if waive_gate and reason not in WAIVE_GATE_REASONS:
        return (
            f"waive-gate is only for lesion-gate rejections "
            f"({', '.join(sorted(WAIVE_GATE_REASONS))}); this entry's reason is {reason}"
        )
    if route and not force and weaker_route(route, quarantined_on, route_pixels):
        before, after = steps.get(quarantined_on), steps.get(route)
        return (
            f"route {route} does a weaker pixel step ({after}) than route {quarantined_on}, "
            f"on which the entry was quarantined ({before}); an operator must force it "
            "(deid-gateway quarantine release --route ... --force)"
        )
    return None


def _photograph(data: bytes) -> bool:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except Exception:
        return True  # cannot tell: the strict answer
    return is_photograph(ds)
