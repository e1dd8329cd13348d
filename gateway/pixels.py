"""Pixel steps: what a route does to an instance's pixels after its metadata is de-identified.

A step receives the original and the de-identified data set and returns either an accepted data
set (possibly with edited pixels: a new instance) or a rejection with a `QuarantineReason`, figures
(`details`, e.g. the lesion IoU) and artifacts (e.g. a PNG panel) to keep with the quarantine entry.
Steps are looked up by the name a route gives (`pixels: none | quarantine_burned_in | flowedit`);
the FlowEdit engine registers "flowedit" with `register_pixel_step`.

A step must be deterministic for a given instance (a retry must give the same result): the context
carries a seed derived from the project key and the instance for steps that draw noise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pydicom import Dataset

from deid_core.errors import ConfigError
from gateway.config import GatewayConfig
from gateway.events import QuarantineReason


@dataclass(frozen=True)
class PixelContext:
    route: str
    study_key: str
    #: Deterministic per instance and project key, for steps that draw random noise:
    #: `deid_core.seeds.derive_seed(key, original SOP Instance UID, route)`.
    seed: int
    #: More seeds of this instance: derive_seed(key, original SOP Instance UID, route, *parts),
    #: e.g. ("identity", frame) for the edit and ("twin", frame) for the lesion gate's twins.
    derive_seed: Callable[..., int] | None = None
    #: The keyed UID of something made from an original UID (`derived_uid(uid, purpose)`, the
    #: pseudonymizer's mapping), e.g. the SOP Instance UID of an edited photograph.
    derived_uid: Callable[[str, str], str] | None = None
    #: A reviewer released this instance from quarantine accepting the step's result despite its
    #: gate (e.g. a lesion IoU below threshold): a gating step must still do its work (edit the
    #: pixels, deterministically as before) and accept the result instead of rejecting it.
    #: Steps without a gate ignore it; a step that rejects anyway sends it back to quarantine.
    waive_gate: bool = False


@dataclass(frozen=True)
class PixelAccepted:
    dataset: Dataset
    #: Figures worth logging (never PHI), e.g. {"iou": 0.83}.
    details: Mapping[str, float | int | str] = field(default_factory=dict)


@dataclass(frozen=True)
class PixelRejected:
    reason: QuarantineReason
    details: Mapping[str, float | int | str] = field(default_factory=dict)
    #: File name -> content, kept with the quarantine entry (e.g. "panel.png").
    artifacts: Mapping[str, bytes] = field(default_factory=dict)


PixelOutcome = PixelAccepted | PixelRejected


class PixelStep(Protocol):
    name: str

    def process(
        self, original: Dataset, deidentified: Dataset, context: PixelContext
    ) -> PixelOutcome: ...


class NoPixelStep:
    """Pixels pass unchanged (metadata de-identification only)."""

    name = "none"

    def process(
        self, original: Dataset, deidentified: Dataset, context: PixelContext
    ) -> PixelOutcome:
        return PixelAccepted(deidentified)


#: Modalities whose pixels often carry burned-in text (ultrasound and X-ray angiography /
#: fluoroscopy screens, endoscopy overlays, camera photographs, "other" screen captures).
BURNED_IN_COMMON_MODALITIES = frozenset({"US", "XA", "RF", "ES", "OT", "XC"})


def burned_in_common(ds: Dataset) -> bool:
    """Whether burned-in text is common for `ds`: one of BURNED_IN_COMMON_MODALITIES, or a
    Secondary Capture (any SC SOP class, whatever its modality)."""
    from gateway.interlock import SECONDARY_CAPTURE_SOP_CLASSES

    modality = str(ds.get("Modality", "") or "").strip().upper()
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    return modality in BURNED_IN_COMMON_MODALITIES or sop_class in SECONDARY_CAPTURE_SOP_CLASSES


class QuarantineBurnedIn:
    """Burned In Annotation (0028,0301) YES: the pixels may show identity, so the instance waits
    for a person in quarantine (burned_in_annotation). NO passes. Absent (or not YES/NO) passes
    only where burned-in text is rare (CT, MR, ...); on a modality where it is common
    (`burned_in_common`) the instance waits for a person too (burned_in_unknown)."""

    name = "quarantine_burned_in"

    def process(
        self, original: Dataset, deidentified: Dataset, context: PixelContext
    ) -> PixelOutcome:
        value = str(original.get("BurnedInAnnotation", "") or "").strip().upper()
        if value == "YES":
            return PixelRejected(
                QuarantineReason.BURNED_IN_ANNOTATION, {"BurnedInAnnotation": "YES"}
            )
        if value != "NO" and burned_in_common(original):
            return PixelRejected(
                QuarantineReason.BURNED_IN_UNKNOWN,
                {
                    "BurnedInAnnotation": value or "absent",
                    "modality": str(original.get("Modality", "") or ""),
                },
            )
        return PixelAccepted(deidentified)


PixelStepFactory = Callable[[GatewayConfig], PixelStep]


def _flowedit(cfg: GatewayConfig) -> PixelStep:
    from gateway.photo import build_flowedit_step  # torch and the models: only when a route asks

    return build_flowedit_step(cfg)


#: The built-in steps, which load no model. Any other step (e.g. "flowedit") is taken to load one
#: when it is built: the pipeline reports its load time (`ModelLoaded`) and the node adds a
#: `model_loaded` readiness check. A step may also offer its own readiness checks by defining
#: ``readiness_checks() -> Mapping[str, Callable[[], bool | None]]`` (e.g. ``{"model_loaded":
#: ...}`` for a model loaded in the background); the node registers them at start-up, replacing a
#: check of the same name.
MODEL_FREE_STEPS = frozenset({"none", "quarantine_burned_in"})

_FACTORIES: dict[str, PixelStepFactory] = {
    "none": lambda cfg: NoPixelStep(),
    "quarantine_burned_in": lambda cfg: QuarantineBurnedIn(),
    "flowedit": _flowedit,
}


def register_pixel_step(name: str, factory: PixelStepFactory) -> None:
    """Make a pixel step available to routes under `name` (e.g. the FlowEdit engine)."""
    _FACTORIES[name] = factory


def build_pixel_step(name: str, cfg: GatewayConfig) -> PixelStep:
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ConfigError(
            f"pixel step {name!r} is not available in this installation "
            f"(available: {', '.join(sorted(_FACTORIES))})"
        )
    return factory(cfg)
