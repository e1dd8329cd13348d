"""Segment-by-synthesis: the lesion is where redness falls from an image to its healthy twin.

A *healthy twin* is the same photograph edited by a generative model with a "pathological →
healthy" prompt pair (FlowEdit in this project). Everything the edit leaves alone cancels out; what
it removes — erythema, a red plaque — shows as a drop in CIELAB a*. The generator is a plain
callable, so the gate works with `FlowEditor.edit` and with a stub in routing tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from deid_core.errors import InvalidInputError, PermanentError
from deid_core.lesion.cleanup import MaskCleanup, clean_mask
from deid_core.lesion.image import check_rgb, downscale, resize_mask, to_lab

#: Makes healthy twins: (N, H, W, 3) uint8 images and one seed each -> (N, H, W, 3) uint8.
TwinGenerator = Callable[[np.ndarray, Sequence[int]], np.ndarray]


@dataclass(frozen=True)
class TwinMaskParams:
    #: "otsu": split the a* drop by Otsu's method (never below `min_delta_a`);
    #: a number: a fixed a* drop in CIELAB units.
    threshold: Literal["otsu"] | float = "otsu"
    #: The smallest a* drop that counts as a lesion under "otsu": a twin that changed nothing
    #: must give an empty mask, not the larger half of its noise.
    min_delta_a: float = 4.0
    #: Gaussian smoothing of the a* drop, as a fraction of the longer side (about 2 px at 512).
    smoothing_fraction: float = 1 / 256
    #: Subtract the median a* drop first: a generator's global colour shift is not a lesion.
    remove_global_shift: bool = True
    cleanup: MaskCleanup = field(default_factory=MaskCleanup)

    def __post_init__(self) -> None:
        if isinstance(self.threshold, str):
            if self.threshold != "otsu":
                raise ValueError('threshold must be "otsu" or a number (a* units)')
        elif not float(self.threshold) > 0:
            raise ValueError("a fixed threshold must be a positive a* drop")
        if self.min_delta_a < 0 or self.smoothing_fraction < 0:
            raise ValueError("min_delta_a and smoothing_fraction must be >= 0")


def redness_drop(image: np.ndarray, twin: np.ndarray, params: TwinMaskParams) -> np.ndarray:
    """a*(image) - a*(twin) at the twin's resolution (the smaller one), smoothed."""
    check_rgb(image, "image")
    check_rgb(twin, "twin")
    ih, iw = image.shape[:2]
    th, tw = twin.shape[:2]
    if abs(ih / iw - th / tw) > 0.02 * (ih / iw) + 2 / min(th, tw):
        raise InvalidInputError(
            f"twin: aspect ratio of {tw}x{th} does not match the image's {iw}x{ih}"
        )
    long_side = min(max(ih, iw), max(th, tw))
    a_image = to_lab(downscale(image, long_side))[..., 1]
    a_twin = to_lab(downscale(twin, long_side))[..., 1]
    if a_image.shape != a_twin.shape:  # rounding of the downscale: one pixel either way
        a_twin = _fit(a_twin, a_image.shape)
    drop = a_image - a_twin
    sigma = params.smoothing_fraction * long_side
    if sigma > 0:
        drop = ndi.gaussian_filter(drop, sigma)
    if params.remove_global_shift:
        drop = drop - float(np.median(drop))
    return np.asarray(drop)


def _fit(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    zoom = (shape[0] / a.shape[0], shape[1] / a.shape[1])
    out = ndi.zoom(a, zoom, order=1)
    return np.asarray(out[: shape[0], : shape[1]])


def twin_mask(
    image: np.ndarray, twin: np.ndarray, params: TwinMaskParams | None = None
) -> np.ndarray:
    """Boolean lesion mask of `image`, same height and width, from its healthy `twin` (which may
    be smaller: twins are made at a lower resolution)."""
    params = params or TwinMaskParams()
    drop = redness_drop(image, twin, params)
    if params.threshold == "otsu":
        cut = params.min_delta_a
        if float(np.ptp(drop)) > 1e-6:
            cut = max(cut, float(threshold_otsu(drop)))
    else:
        cut = float(params.threshold)
    mask = clean_mask(drop > cut, params.cleanup)
    return resize_mask(mask, image.shape)


def healthy_twins(
    generator: TwinGenerator,
    images: Sequence[np.ndarray],
    seeds: Sequence[int],
    long_side: int = 512,
) -> list[np.ndarray]:
    """Twins of `images` at a longer side of at most `long_side` pixels.

    The twins only feed a mask, so they are made smaller than the de-identifying edit (512 px for a
    1024 px photograph costs about a quarter). Images of equal working size go to the generator as
    one batch (the original and its de-identified version normally do).
    """
    if len(images) != len(seeds):
        raise ValueError("one seed per image")
    small = [downscale(check_rgb(img, f"image {i}"), long_side) for i, img in enumerate(images)]
    twins: list[np.ndarray | None] = [None] * len(small)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(small):
        groups.setdefault(img.shape, []).append(i)
    for members in groups.values():
        batch = np.stack([small[i] for i in members])
        out = np.asarray(generator(batch, [int(seeds[i]) for i in members]))
        if out.shape != batch.shape or out.dtype != np.uint8:
            raise PermanentError(
                f"twin generator returned {out.dtype} {out.shape} for a batch of {batch.shape}"
            )
        for j, i in enumerate(members):
            twins[i] = out[j]
    return [t for t in twins if t is not None]
