"""The methods compared in one evaluation: the route's de-identification and the classic baselines.

A method is a plain transform of a batch of same-size photographs with one seed each, so FlowEdit,
a blur and a test's random-image generator all plug in the same way. Baseline strengths are given
as a fraction of the image's long side, so "blur 2 %" means the same thing on a 400 px clinical
photo and a 2592 px dermoscopy image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

#: (N, H, W, 3) uint8 photographs and one seed each -> (N, H, W, 3) uint8.
Transform = Callable[[np.ndarray, Sequence[int]], np.ndarray]

BASELINE = "baseline"
DEIDENTIFICATION = "deidentification"

#: What `evaluate` compares FlowEdit against unless told otherwise.
#: Light, medium and heavy: on the shared lesion sets even the medium levels linked 100 %, so the
#: heavy ones (sigma 10 % of the long side, 12 % blocks) show whether anything blurry enough to
#: hide a photograph's origin keeps its lesion.
DEFAULT_BASELINES: tuple[str, ...] = (
    "none",
    "blur:0.01",
    "blur:0.03",
    "blur:0.1",
    "pixelate:0.02",
    "pixelate:0.05",
    "pixelate:0.12",
)


@dataclass(frozen=True)
class Method:
    """One row of the comparison."""

    name: str
    kind: str  # BASELINE or DEIDENTIFICATION
    transform: Transform = field(repr=False, compare=False)
    #: Everything needed to reproduce the method, written into the report.
    params: dict[str, Any] = field(default_factory=dict)
    #: True when the figures say nothing clinically (a test model made them).
    test_model: bool = False


def no_transform(images: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
    """The worst case for privacy: the photograph leaves as it came."""
    return images.copy()


class GaussianBlur:
    """Gaussian blur of the whole image, sigma as a fraction of the long side."""

    def __init__(self, fraction: float) -> None:
        if not 0 < fraction < 1:
            raise ValueError(f"blur strength must lie in (0, 1), got {fraction}")
        self.fraction = fraction

    def __call__(self, images: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        # Pillow's blur (three box passes, the usual approximation) is many times faster than an
        # exact kernel at the large sigmas of a heavy blur on a full-size photograph.
        radius = self.fraction * max(images.shape[1:3])
        out = np.empty_like(images)
        for i in range(images.shape[0]):
            pil = Image.fromarray(images[i])
            out[i] = np.asarray(pil.filter(ImageFilter.GaussianBlur(radius)))
        return out


class Pixelation:
    """Block averaging of the whole image, block edge as a fraction of the long side."""

    def __init__(self, fraction: float) -> None:
        if not 0 < fraction < 1:
            raise ValueError(f"pixelation strength must lie in (0, 1), got {fraction}")
        self.fraction = fraction

    def __call__(self, images: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        n, h, w = images.shape[:3]
        block = max(1, round(self.fraction * max(h, w)))
        small = (max(1, round(w / block)), max(1, round(h / block)))
        out = np.empty_like(images)
        for i in range(n):
            pil = Image.fromarray(images[i])
            out[i] = np.asarray(
                pil.resize(small, Image.Resampling.BOX).resize((w, h), Image.Resampling.NEAREST)
            )
        return out


def baseline(spec: str) -> Method:
    """A baseline from its short name: ``none``, ``blur:F`` or ``pixelate:F`` (F = fraction of the
    long side, e.g. ``blur:0.02``)."""
    name, _, value = spec.strip().partition(":")
    if name == "none" and not value:
        return Method("none", BASELINE, no_transform, {"baseline": "none"})
    if name in ("blur", "pixelate") and value:
        try:
            fraction = float(value)
        except ValueError:
            raise ValueError(f"baseline {spec!r}: strength must be a number") from None
        if not 0 < fraction < 1:
            raise ValueError(f"baseline {spec!r}: strength must lie in (0, 1)")
        pct = f"{fraction * 100:g}%"
        if name == "blur":
            return Method(
                f"blur {pct}",
                BASELINE,
                GaussianBlur(fraction),
                {"baseline": "gaussian_blur", "sigma_fraction_of_long_side": fraction},
            )
        return Method(
            f"pixelate {pct}",
            BASELINE,
            Pixelation(fraction),
            {"baseline": "pixelation", "block_fraction_of_long_side": fraction},
        )
    raise ValueError(
        f"unknown baseline {spec!r}: use none, blur:FRACTION or pixelate:FRACTION "
        "(FRACTION of the long side, e.g. blur:0.02)"
    )
