"""A minimal lesion gate, standing in until issue 5's `deid_core.lesion.LesionGate` lands.

TEMPORARY: the gateway's photograph path must never forward a photograph whose pathology was not
checked, so the `flowedit` step needs *a* gate today. This one implements the outcomes issue 5
defines with the simplest masks that mean something; it is not measured against expert masks.
Replace every use by the real gate (one call site: `gateway.photo.PhotoRoute.gate`) and delete
this module when issue 5 is on main.

Masks (both on CIELAB a*, redness, at the gate's working size):

- twin: where a* drops by more than `twin_delta` from the image to its counterfactual healthy twin
  (a FlowEdit with a "pathological -> healthy" prompt pair; the twins of the original and of the
  de-identified image are made in one batch with the same noise seed);
- synthesis-free: where a* exceeds the image's median (the surrounding skin) by more than
  `max(min_delta, k * MAD)`.

Outcomes: both masks empty -> "no_lesion_found" (forwarded, flagged); a mask covering more than
`max_coverage` of the image -> "lesion_mask_unreliable"; lesion in the original but none after ->
"lesion_vanished"; IoU below the threshold -> "lesion_iou_below_threshold"; else "accepted".
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: Makes healthy twins of (N, H, W, 3) uint8 images with one seed each (FlowEditor.edit).
TwinGenerator = Callable[[np.ndarray, Sequence[int]], np.ndarray]

ACCEPTED = "accepted"
NO_LESION_FOUND = "no_lesion_found"
LESION_VANISHED = "lesion_vanished"
LESION_IOU_BELOW_THRESHOLD = "lesion_iou_below_threshold"
LESION_MASK_UNRELIABLE = "lesion_mask_unreliable"
#: Outcomes that let the photograph go on.
PASSING = frozenset({ACCEPTED, NO_LESION_FOUND})


@dataclass(frozen=True)
class GateDecision:
    outcome: str
    #: IoU of the two masks; None when it means nothing (both empty, unreliable mask)
    iou: float | None
    original_mask: np.ndarray
    edited_mask: np.ndarray

    @property
    def passed(self) -> bool:
        return self.outcome in PASSING

    def figures(self) -> dict[str, float | int | str]:
        """Numbers for logs and quarantine entries (no pixels, no PHI)."""
        out: dict[str, float | int | str] = {
            "gate_outcome": self.outcome,
            "original_mask_fraction": round(float(self.original_mask.mean()), 4),
            "edited_mask_fraction": round(float(self.edited_mask.mean()), 4),
        }
        if self.iou is not None:
            out["iou"] = round(self.iou, 4)
        return out


def _resize(images: np.ndarray, max_side: int) -> np.ndarray:
    """(N, H, W, 3) uint8 scaled so that the longer side is at most `max_side` (area average)."""
    from PIL import Image

    _, h, w, _ = images.shape
    if max(h, w) <= max_side:
        return images
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.stack(
        [np.asarray(Image.fromarray(im).resize(size, Image.Resampling.BOX)) for im in images]
    )


def _a_star(images: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return np.stack([rgb2lab(im)[..., 1] for im in images]).astype(np.float32)


def _clean(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """Morphological opening, then drop specks smaller than `min_fraction` of the image."""
    from scipy.ndimage import binary_opening
    from skimage.morphology import disk, remove_small_objects

    opened = binary_opening(mask, structure=disk(1))
    min_size = max(2, int(min_fraction * mask.size))
    return np.asarray(remove_small_objects(opened, max_size=min_size - 1), dtype=bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


class StandInLesionGate:
    """The gate of one route. `twin=None` uses the synthesis-free mask."""

    def __init__(
        self,
        threshold: float = 0.67,
        *,
        twin: TwinGenerator | None = None,
        max_side: int = 512,
        twin_delta: float = 6.0,
        min_delta: float = 10.0,
        mad_factor: float = 4.0,
        min_fraction: float = 0.002,
        max_coverage: float = 0.6,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError("threshold must be in [0, 1]")
        self.threshold = threshold
        self.twin = twin
        self.max_side = max_side
        self.twin_delta = twin_delta
        self.min_delta = min_delta
        self.mad_factor = mad_factor
        self.min_fraction = min_fraction
        self.max_coverage = max_coverage

    @property
    def method(self) -> str:
        return "twin" if self.twin is not None else "synthesis_free"

    def masks(self, images: np.ndarray, twin_seeds: Sequence[int] | None = None) -> np.ndarray:
        """Lesion masks (N, h, w) bool of (N, H, W, 3) uint8 images at the gate's working size."""
        small = _resize(images, self.max_side)
        a = _a_star(small)
        if self.twin is not None:
            if twin_seeds is None:
                raise ValueError("the twin mask needs one seed per image")
            twins = self.twin(small, list(twin_seeds))
            raw = (a - _a_star(twins)) > self.twin_delta
        else:
            med = np.median(a, axis=(1, 2), keepdims=True)
            mad = np.median(np.abs(a - med), axis=(1, 2), keepdims=True)
            raw = a > med + np.maximum(self.min_delta, self.mad_factor * 1.4826 * mad)
        return np.stack([_clean(m, self.min_fraction) for m in raw])

    def decide(self, original_mask: np.ndarray, edited_mask: np.ndarray) -> GateDecision:
        coverage = max(float(original_mask.mean()), float(edited_mask.mean()))
        if coverage > self.max_coverage:
            return GateDecision(LESION_MASK_UNRELIABLE, None, original_mask, edited_mask)
        has_original, has_edited = bool(original_mask.any()), bool(edited_mask.any())
        if not has_original and not has_edited:
            return GateDecision(NO_LESION_FOUND, None, original_mask, edited_mask)
        if has_original and not has_edited:
            return GateDecision(LESION_VANISHED, 0.0, original_mask, edited_mask)
        iou = _iou(original_mask, edited_mask)
        outcome = ACCEPTED if iou >= self.threshold else LESION_IOU_BELOW_THRESHOLD
        return GateDecision(outcome, iou, original_mask, edited_mask)

    def check(
        self,
        originals: np.ndarray,
        edited: np.ndarray,
        twin_seeds: Sequence[int] | None = None,
    ) -> list[GateDecision]:
        """One decision per image pair. With twins, the twins of the originals and of the edited
        images are made in one batch, each pair with the same seed."""
        if originals.shape != edited.shape:
            raise ValueError("originals and edited images differ in shape")
        n = originals.shape[0]
        seeds = None if twin_seeds is None else [*twin_seeds, *twin_seeds]
        masks = self.masks(np.concatenate([originals, edited]), seeds)
        return [self.decide(masks[i], masks[n + i]) for i in range(n)]


def render_panel(original: np.ndarray, edited: np.ndarray, decision: GateDecision) -> bytes:
    """A PNG for a reviewer: original, de-identified, each with its lesion mask outlined in
    colour, and the outcome with the IoU. It shows the original photograph: it never leaves the
    site (quarantine only)."""
    from PIL import Image, ImageDraw

    h, w = original.shape[:2]

    def overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> Image.Image:
        base = Image.fromarray(image).convert("RGB")
        m = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)
        tint = Image.new("RGB", (w, h), colour)
        return Image.composite(Image.blend(base, tint, 0.45), base, m)

    tiles = [
        Image.fromarray(original).convert("RGB"),
        Image.fromarray(edited).convert("RGB"),
        overlay(original, decision.original_mask, (0, 255, 255)),
        overlay(edited, decision.edited_mask, (255, 255, 0)),
    ]
    band = 14
    panel = Image.new("RGB", (4 * w, h + band), (0, 0, 0))
    for i, tile in enumerate(tiles):
        panel.paste(tile, (i * w, band))
    iou = "n/a" if decision.iou is None else f"{decision.iou:.3f}"
    ImageDraw.Draw(panel).text((2, 1), f"{decision.outcome}  IoU {iou}", fill=(255, 255, 255))
    buf = io.BytesIO()
    panel.save(buf, format="PNG")
    return buf.getvalue()


def png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 as PNG bytes (the quarantine keeps the original and the edit beside the
    panel)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
