"""Clinical fidelity of one de-identified image against its original.

- colour inside the lesion: CIEDE2000 difference of the mean CIELAB colour of the lesion region, and
  the signed change of its mean a* (redness, which is what dermatologists read and what the gate's
  masks are made of);
- structure: SSIM averaged inside the lesion region and over the rest of the picture separately, so
  that an edit which keeps the lesion and rewrites the surroundings shows as exactly that.

The lesion region is the expert mask when one is given, else the mask of the original.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage import color
from skimage.metrics import structural_similarity

from deid_core.evaluation.imaging import WorkingCopy, resize_mask

NAN = float("nan")


@dataclass(frozen=True)
class Fidelity:
    delta_e00: float  # CIEDE2000 between mean lesion colours
    delta_a: float  # mean a* in the lesion, de-identified minus original
    ssim_lesion: float
    ssim_rest: float
    ssim_image: float


def measure_fidelity(
    original: np.ndarray | WorkingCopy, edited: np.ndarray | WorkingCopy, region: np.ndarray
) -> Fidelity:
    """`original` and `edited`: working-size copies of the same shape; `region`: the lesion mask
    at any size (resized here). SSIM is taken on luminance (as Wang et al. define it); colour
    changes are what ΔE00 and Δa* measure."""
    o = original if isinstance(original, WorkingCopy) else WorkingCopy(original)
    e = edited if isinstance(edited, WorkingCopy) else WorkingCopy(edited)
    if o.shape != e.shape:
        raise ValueError("original and edited copies differ in shape")
    region = resize_mask(region, o.shape)
    ssim_map = structural_similarity(o.grey, e.grey, data_range=1.0, full=True)[1]
    rest = ~region
    ssim_rest = float(ssim_map[rest].mean()) if rest.any() else NAN
    if not region.any():
        return Fidelity(NAN, NAN, NAN, ssim_rest, float(ssim_map.mean()))
    lab_o = o.lab[region].mean(axis=0)
    lab_e = e.lab[region].mean(axis=0)
    return Fidelity(
        delta_e00=float(color.deltaE_ciede2000(lab_o, lab_e)),
        delta_a=float(lab_e[1] - lab_o[1]),
        ssim_lesion=float(ssim_map[region].mean()),
        ssim_rest=ssim_rest,
        ssim_image=float(ssim_map.mean()),
    )
