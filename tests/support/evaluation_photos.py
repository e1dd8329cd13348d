"""Synthetic skin photographs with a lesion, made in the test: no data files, and every image
different enough (tone, shading, pores, hairs, freckles, lesion shape) for a linkage attack to tell
them apart, as real photographs are."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import color


def skin_photo(seed: int, height: int = 144, width: int = 176) -> tuple[np.ndarray, np.ndarray]:
    """An RGB uint8 skin photograph and its true lesion mask (bool)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    lab = np.empty((height, width, 3))
    lab[..., 0] = rng.uniform(55, 75)
    lab[..., 1] = rng.uniform(6, 12)
    lab[..., 2] = rng.uniform(14, 26)
    # shading and blotchiness at a random scale
    shade = ndimage.gaussian_filter(rng.normal(size=(height, width)), rng.uniform(6, 20))
    lab[..., 0] += 8 * shade / (np.abs(shade).max() + 1e-9)
    # pores: fine noise at a random grain
    pores = ndimage.gaussian_filter(rng.normal(size=(height, width)), rng.uniform(0.6, 1.6))
    lab[..., 0] += rng.uniform(2, 6) * pores / (pores.std() + 1e-9)
    # freckles
    for _ in range(rng.integers(5, 25)):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(1, 3)
        spot = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        lab[spot, 0] -= rng.uniform(8, 20)
        lab[spot, 2] += 6
    # lesion: a reddish blob with an irregular border
    cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width
    radius = rng.uniform(0.12, 0.22) * min(height, width)
    angle = np.arctan2(yy - cy, xx - cx)
    wobble = sum(
        rng.uniform(0.03, 0.12) * np.sin(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)
    )
    lesion = np.hypot(yy - cy, xx - cx) < radius * (1 + wobble)
    lab[lesion, 1] += rng.uniform(22, 32)
    lab[lesion, 0] -= rng.uniform(8, 16)
    lab[lesion, 2] += rng.uniform(-4, 6)
    # hairs: dark curved lines
    for _ in range(rng.integers(2, 9)):
        t = np.linspace(0, 1, 400)
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        dx, dy = rng.normal(scale=width / 1.5), rng.normal(scale=height / 1.5)
        bend = rng.normal(scale=15)
        xs = np.clip(x0 + dx * t + bend * np.sin(np.pi * t), 0, width - 1).astype(int)
        ys = np.clip(y0 + dy * t, 0, height - 1).astype(int)
        lab[ys, xs, 0] -= rng.uniform(25, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few out-of-gamut pixels are clipped, as intended
        rgb = color.lab2rgb(lab)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), lesion


def redness_mask(image: np.ndarray) -> np.ndarray:
    """A simple lesion finder for tests: smoothed a* clearly above the image's typical skin."""
    a = ndimage.gaussian_filter(color.rgb2lab(image)[..., 1], 1.0)
    return a > np.median(a) + 10.0


def random_images(images: np.ndarray, seeds: list[int] | tuple[int, ...]) -> np.ndarray:
    """A 'de-identification' that returns unrelated skin photographs of the same size."""
    out = np.empty_like(images)
    for i, seed in enumerate(seeds):
        out[i] = skin_photo(10_000 + 7919 * seed, images.shape[1], images.shape[2])[0]
    return out


def write_photo_folder(
    root: Path, n: int, *, size: tuple[int, int] = (144, 176), masks: bool = True
) -> tuple[Path, Path]:
    """A folder of PNG/JPEG skin photographs and a folder of expert masks in the public sets'
    naming styles (ISIC `_segmentation` 8-bit, DermSynth3D `_lesions` RGBA white)."""
    photos, mask_dir = root / "photos", root / "masks"
    photos.mkdir(parents=True)
    mask_dir.mkdir()
    for i in range(n):
        image, lesion = skin_photo(i, *size)
        if i % 3 == 2:
            Image.fromarray(image).save(photos / f"case{i:02d}.jpg", quality=95)
        else:
            Image.fromarray(image).save(photos / f"case{i:02d}.png")
        if not masks:
            continue
        if i % 2:
            rgba = np.zeros((*lesion.shape, 4), np.uint8)
            rgba[lesion] = 255
            Image.fromarray(rgba, "RGBA").save(mask_dir / f"case{i:02d}_lesions.png")
        else:
            Image.fromarray(lesion.astype(np.uint8) * 255).save(
                mask_dir / f"case{i:02d}_segmentation.png"
            )
    return photos, mask_dir
