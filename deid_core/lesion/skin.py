"""Synthesis-free lesion mask: colour relative to the surrounding skin.

No generative model: the lesion is where CIELAB chromaticity departs from the patient's own skin
in the same photograph. Steps, all at a small working resolution (fast, and it averages out skin
texture and hair):

1. *Skin region*: drop pixels that cannot be skin or lesion — dark vignetting and background,
   specular highlights and white paper, green or blue drapes and markers, which would otherwise
   dominate any colour statistic.
2. *Illumination*: a tilted light or vignetting shifts a* and b* smoothly across the frame; a
   plane fitted robustly (lesion side trimmed) is subtracted from each channel.
3. *Skin colour*: photographs are framed around the lesion, so the outer band of the frame is
   mostly normal skin. The skin colour and its spread come from a minimum-covariance fit (the most
   tightly clustered half of the band's pixels), so lesion pixels in the band and markers do not
   pull it.
4. *Score and threshold*: the Mahalanobis distance of each pixel's (a*, b*) from the skin colour
   (or, with ``channels="a"``, the redness excess alone); Otsu's threshold over the skin region,
   raised to an absolute floor so that healthy skin yields an empty mask rather than its noisier
   half.
5. Morphological clean-up and resize to the input size.

Measured against expert masks in ``benchmarks/lesion_masks.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from deid_core.lesion.cleanup import MaskCleanup, clean_mask
from deid_core.lesion.image import check_rgb, downscale, resize_mask, to_lab


@dataclass(frozen=True)
class SkinRelativeParams:
    #: "ab": departure in a* and b* together (red, brown, purple and pale lesions);
    #: "a": redness excess only (erythema, as the twin mask measures it).
    channels: Literal["ab", "a"] = "ab"
    #: Longer side of the working image in pixels.
    working_long_side: int = 256
    #: Gaussian smoothing of L*a*b* in working pixels (skin pores, hair, JPEG blocks).
    smoothing_sigma: float = 1.0
    #: Width of the outer band taken as surrounding skin, as a fraction of the shorter side.
    border_band: float = 0.2
    #: Share of the band's pixels that defines the skin colour (the most tightly clustered).
    core_fraction: float = 0.5
    #: A pixel must lie at least this many skin standard deviations from the skin colour ...
    min_distance: float = 3.0
    #: ... and at least this far in CIELAB units (a*b* plane, or a* alone), whatever Otsu says.
    min_delta: float = 4.0
    cleanup: MaskCleanup = field(default_factory=MaskCleanup)

    def __post_init__(self) -> None:
        if self.channels not in ("ab", "a"):
            raise ValueError('channels must be "ab" or "a"')
        if self.working_long_side < 32:
            raise ValueError("working_long_side must be at least 32")
        if not 0 < self.border_band <= 0.5:
            raise ValueError("border_band must be in (0, 0.5]")
        if not 0.1 <= self.core_fraction <= 1:
            raise ValueError("core_fraction must be in [0.1, 1]")
        if self.smoothing_sigma < 0 or self.min_distance < 0 or self.min_delta < 0:
            raise ValueError("smoothing_sigma, min_distance and min_delta must be >= 0")


@dataclass(frozen=True)
class SkinScore:
    """Intermediate maps at the working resolution, for QA and for the benchmark."""

    #: Departure from the skin colour (Mahalanobis distance, or z-scored a* excess).
    score: np.ndarray
    #: Pixels that may be skin or lesion (the statistics only look here).
    region: np.ndarray
    #: The threshold applied to `score` (Otsu, or the floor when that was higher).
    threshold: float
    #: Raw mask before clean-up.
    raw: np.ndarray


def skin_region(lab: np.ndarray) -> np.ndarray:
    """Pixels that may be skin or lesion, from their colour alone."""
    L, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    chroma = np.hypot(a, b)
    dark = L < 12  # background, vignetting corners of dermoscopy
    glare = (L > 90) & (chroma < 10)  # specular highlights, white paper
    green = a < -3  # drapes; skin and lesions are never greener than neutral
    # Drapes, blue markers and ink: hue beyond -50 degrees (violaceous lesions stay above it).
    blue = (b < -6) & (b < -1.2 * a)
    return np.asarray(~(dark | glare | green | blue))


def robust_plane(
    channel: np.ndarray, usable: np.ndarray, iterations: int = 4, max_samples: int = 16384
) -> np.ndarray:
    """Least-squares plane through `channel` over `usable` pixels, refitted after trimming
    outliers (|residual| > 1.5 robust SD) so a lesion does not tilt it. Fitted on a regular
    subsample of at most `max_samples` pixels: a plane needs few."""
    h, w = channel.shape
    step = max(1, int(np.sqrt(h * w / max_samples)))
    yy, xx = np.mgrid[0:h:step, 0:w:step]
    basis = np.stack([np.ones(xx.shape), xx / w - 0.5, yy / h - 0.5], axis=-1).reshape(-1, 3)
    values = channel[::step, ::step].reshape(-1)
    ok = usable[::step, ::step].reshape(-1)
    weights = ok.copy()
    coef = np.array([float(np.median(values[ok])) if ok.any() else 0.0, 0.0, 0.0])
    for _ in range(iterations):
        if np.count_nonzero(weights) < 10:
            break
        sel = basis[weights]
        coef = np.linalg.solve(sel.T @ sel + 1e-9 * np.eye(3), sel.T @ values[weights])
        resid = values - basis @ coef
        med = float(np.median(resid[ok]))
        spread = 1.4826 * float(np.median(np.abs(resid[ok] - med))) + 1e-6
        weights = ok & (np.abs(resid - med) <= 1.5 * spread)
    gy, gx = np.mgrid[0:h, 0:w]
    return np.asarray(coef[0] + coef[1] * (gx / w - 0.5) + coef[2] * (gy / h - 0.5))


def _minimum_covariance(
    x: np.ndarray, fraction: float, iterations: int = 6, max_samples: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the most tightly clustered `fraction` of the rows of x (concentration
    steps of the MCD estimator), with a small ridge so flat, uniform skin stays invertible."""
    if len(x) > max_samples:
        x = x[:: int(np.ceil(len(x) / max_samples))]
    ridge = np.eye(x.shape[1]) * 0.25
    mean = np.median(x, axis=0)
    cov = np.atleast_2d(np.cov(x.T)) + ridge
    for _ in range(iterations):
        diff = x - mean
        d2 = np.sum((diff @ np.linalg.inv(cov)) * diff, axis=1)
        core = d2 <= np.quantile(d2, fraction)
        if np.count_nonzero(core) <= x.shape[1] + 1:
            break
        mean = x[core].mean(axis=0)
        cov = np.atleast_2d(np.cov(x[core].T)) + ridge
    return mean, cov


def _border_band(shape: tuple[int, int], band: float) -> np.ndarray:
    h, w = shape
    width = max(2, int(band * min(h, w)))
    m = np.zeros(shape, dtype=bool)
    m[:width] = m[-width:] = True
    m[:, :width] = m[:, -width:] = True
    return m


def skin_relative_score(image: np.ndarray, params: SkinRelativeParams | None = None) -> SkinScore:
    """The departure-from-skin map at the working resolution (see the module docstring)."""
    params = params or SkinRelativeParams()
    small = downscale(check_rgb(image), params.working_long_side)
    lab = to_lab(small)
    if params.smoothing_sigma > 0:
        lab = np.stack(
            [ndi.gaussian_filter(lab[..., i], params.smoothing_sigma) for i in range(3)], axis=-1
        )
    region = skin_region(lab)
    empty = np.zeros(region.shape, dtype=bool)
    # Too little skin to estimate anything: nothing found (an all-drape or all-black frame).
    if np.count_nonzero(region) < 0.05 * region.size:
        return SkinScore(np.zeros(region.shape), region, float("inf"), empty)
    # Pixels at the rim of the region mix skin with background: keep them out of the statistics.
    inner = ndi.binary_erosion(region, iterations=1, border_value=1)
    if np.count_nonzero(inner) >= 0.05 * region.size:
        region = inner

    chans = (1, 2) if params.channels == "ab" else (1,)
    feats = np.stack([lab[..., c] - robust_plane(lab[..., c], region) for c in chans], axis=-1)
    band = _border_band(region.shape, params.border_band) & region
    reference = feats[band] if np.count_nonzero(band) >= 100 else feats[region]
    mean, cov = _minimum_covariance(reference, params.core_fraction)
    diff = feats - mean
    if params.channels == "ab":
        score = np.sqrt(np.sum((diff @ np.linalg.inv(cov)) * diff, axis=-1))
        delta = np.hypot(diff[..., 0], diff[..., 1])
    else:
        score = diff[..., 0] / np.sqrt(cov[0, 0])  # signed: only redder than skin counts
        delta = diff[..., 0]
    values = score[region]
    if float(np.ptp(values)) < 1e-6:
        return SkinScore(score, region, float("inf"), empty)
    threshold = max(float(threshold_otsu(values)), params.min_distance)
    raw = (score > threshold) & (delta >= params.min_delta) & region
    return SkinScore(score, region, threshold, raw)


def skin_relative_mask(image: np.ndarray, params: SkinRelativeParams | None = None) -> np.ndarray:
    """Boolean lesion mask of `image` (uint8 RGB), same height and width, without synthesis."""
    params = params or SkinRelativeParams()
    result = skin_relative_score(image, params)
    mask = clean_mask(result.raw, params.cleanup)
    return resize_mask(mask, image.shape)
