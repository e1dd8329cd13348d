"""Synthetic skin photographs with red lesions of known shape, for the lesion-mask tests.

Colours are set in CIELAB: a skin tone per Fitzpatrick-like type (from very light to dark, by the
individual typology angle), a lesion that is redder (a* up), a little darker and yellower, with a
soft edge; optional illumination gradient (L* and a* drift across the frame) and sensor noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.color import lab2rgb

#: L*, a*, b* of normal skin by type (ITA from about +60 degrees down to about -50 degrees).
SKIN_TONES: dict[str, tuple[float, float, float]] = {
    "I": (72.0, 9.0, 14.0),
    "II": (65.0, 11.0, 17.0),
    "III": (58.0, 12.0, 19.0),
    "IV": (50.0, 13.0, 21.0),
    "V": (41.0, 12.0, 19.0),
    "VI": (32.0, 10.0, 14.0),
}


@dataclass(frozen=True)
class Erythema:
    """How a lesion departs from the skin around it (CIELAB units)."""

    delta_a: float = 18.0
    delta_l: float = -6.0
    delta_b: float = 2.0


def disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.asarray((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)


def ellipse(
    shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float, angle_deg: float
) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    t = np.deg2rad(angle_deg)
    u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
    v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
    return np.asarray((u / rx) ** 2 + (v / ry) ** 2 <= 1)


def blob(shape: tuple[int, int], cy: float, cx: float, r: float, phase: float = 0.7) -> np.ndarray:
    """An irregular, star-ish outline: r(theta) = r (1 + 0.25 sin(3 theta + phase)
    + 0.12 cos(5 theta))."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    theta = np.arctan2(yy - cy, xx - cx)
    radius = r * (1 + 0.25 * np.sin(3 * theta + phase) + 0.12 * np.cos(5 * theta))
    return np.asarray(np.hypot(yy - cy, xx - cx) <= radius)


def skin_photo(
    truth: np.ndarray,
    tone: str = "II",
    lesion: Erythema | None = None,
    noise: float = 0.0,
    gradient: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """uint8 RGB photograph of skin with a lesion where `truth` is set (none if all False).

    `gradient` tilts the light: L* drifts by +-gradient across the width and a* by
    +-gradient/4 down the height. `noise` is the SD of Gaussian sensor noise in 8-bit RGB units.
    """
    lesion = lesion or Erythema()
    h, w = truth.shape
    L0, a0, b0 = SKIN_TONES[tone]
    yy, xx = np.mgrid[0:h, 0:w]
    lab = np.empty((h, w, 3))
    lab[..., 0] = L0 + gradient * (xx / (w - 1) - 0.5) * 2
    lab[..., 1] = a0 + gradient / 4 * (yy / (h - 1) - 0.5) * 2
    lab[..., 2] = b0
    soft = ndi.gaussian_filter(truth.astype(float), 1.0)
    lab[..., 0] += soft * lesion.delta_l
    lab[..., 1] += soft * lesion.delta_a
    lab[..., 2] += soft * lesion.delta_b
    rgb = lab2rgb(lab) * 255
    if noise:
        rgb = rgb + np.random.default_rng(seed).normal(0, noise, rgb.shape)
    return np.asarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))


def red_stub_twin(images: np.ndarray, seeds: object) -> np.ndarray:
    """A stand-in healthy-twin generator for routing tests: paints every clearly red area with
    the image's median skin colour (what a perfect "pathological -> healthy" edit would do to
    these synthetic photographs)."""
    from skimage.color import lab2rgb as to_rgb
    from skimage.color import rgb2lab

    out = np.empty_like(images)
    for i, img in enumerate(images):
        lab = rgb2lab(img)
        red = lab[..., 1] > np.median(lab[..., 1]) + 6
        red = ndi.binary_dilation(red, iterations=2)
        lab[red] = np.median(lab[~red], axis=0) if (~red).any() else lab[red]
        out[i] = np.clip(to_rgb(lab) * 255 + 0.5, 0, 255).astype(np.uint8)
    return out
