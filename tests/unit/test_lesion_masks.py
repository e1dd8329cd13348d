"""Lesion masks on synthetic skin photographs with lesions of known shape, and on real ISIC
dermoscopy with expert masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deid_core.errors import InvalidInputError, PermanentError
from deid_core.lesion import (
    MaskCleanup,
    SkinRelativeParams,
    TwinMaskParams,
    clean_mask,
    dice,
    healthy_twins,
    iou,
    skin_relative_mask,
    twin_mask,
)
from tests.support.skin import SKIN_TONES, Erythema, blob, disc, ellipse, skin_photo

SHAPE = (240, 320)
ISIC = Path(__file__).resolve().parent.parent / "data" / "isic"


def _shapes() -> dict[str, np.ndarray]:
    several = disc(SHAPE, 70, 80, 28) | disc(SHAPE, 160, 230, 36) | disc(SHAPE, 60, 250, 18)
    return {
        "disc": disc(SHAPE, 120, 160, 45),
        "ellipse": ellipse(SHAPE, 110, 170, 30, 70, 25),
        "blob": blob(SHAPE, 125, 150, 50),
        "several": several,
        "off_centre": disc(SHAPE, 60, 90, 30),
    }


SHAPES = _shapes()


# --- overlap measures -----------------------------------------------------------------------------


def test_iou_and_dice_of_known_overlap() -> None:
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :6] = True  # 60 px
    b[:, 4:] = True  # 60 px, 20 shared
    assert iou(a, b) == pytest.approx(20 / 100)
    assert dice(a, b) == pytest.approx(40 / 120)
    assert iou(a, a) == 1.0
    assert iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    with pytest.raises(ValueError, match="shape"):
        iou(a, b[:5])


# --- synthesis-free mask --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("channels", ["ab", "a"])
def test_skin_relative_mask_recovers_clean_lesions(shape: str, channels: str) -> None:
    truth = SHAPES[shape]
    photo = skin_photo(truth, tone="II")
    mask = skin_relative_mask(photo, SkinRelativeParams(channels=channels))
    assert mask.shape == truth.shape
    assert iou(mask, truth) >= 0.9


@pytest.mark.parametrize("tone", sorted(SKIN_TONES))
def test_skin_relative_mask_across_skin_tones(tone: str) -> None:
    """Darker skin shows erythema with less a* contrast; still found."""
    truth = SHAPES["blob"]
    dark = tone in ("V", "VI")
    lesion = Erythema(delta_a=12.0, delta_l=-4.0) if dark else Erythema()
    photo = skin_photo(truth, tone=tone, lesion=lesion)
    assert iou(skin_relative_mask(photo), truth) >= 0.9


@pytest.mark.parametrize("tone", ["I", "IV", "VI"])
def test_skin_relative_mask_with_noise_and_illumination_gradient(tone: str) -> None:
    truth = SHAPES["several"]
    photo = skin_photo(truth, tone=tone, noise=3.0, gradient=8.0, seed=3)
    assert iou(skin_relative_mask(photo), truth) >= 0.85


@pytest.mark.parametrize("tone", ["I", "III", "VI"])
def test_healthy_skin_gives_an_empty_mask(tone: str) -> None:
    """Otsu always splits something; the absolute floor keeps noise and shading out."""
    photo = skin_photo(np.zeros(SHAPE, bool), tone=tone, noise=3.0, gradient=8.0, seed=5)
    for channels in ("ab", "a"):
        assert not skin_relative_mask(photo, SkinRelativeParams(channels=channels)).any()


def test_non_skin_background_is_ignored() -> None:
    """A blue drape and a black margin are not lesions, and do not pull the skin estimate."""
    truth = disc(SHAPE, 120, 170, 40)
    photo = skin_photo(truth, tone="III", noise=2.0).copy()
    photo[:, :50] = (40, 90, 200)  # blue drape
    photo[:20] = 5  # black margin
    mask = skin_relative_mask(photo)
    assert iou(mask, truth) >= 0.9


def test_skin_relative_mask_at_working_resolution_of_a_large_image() -> None:
    """A 1024 px photograph is analysed small and the mask is brought back to full size."""
    big = (768, 1024)
    truth = ellipse(big, 380, 520, 120, 200, -15)
    photo = skin_photo(truth, tone="IV", noise=2.0)
    mask = skin_relative_mask(photo)
    assert mask.shape == big
    assert iou(mask, truth) >= 0.9


def test_skin_relative_mask_is_deterministic() -> None:
    photo = skin_photo(SHAPES["blob"], noise=3.0, seed=9)
    assert np.array_equal(skin_relative_mask(photo), skin_relative_mask(photo))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((64, 64), np.uint8),
        np.zeros((64, 64, 4), np.uint8),
        np.zeros((64, 64, 3), np.float32),
        np.zeros((8, 64, 3), np.uint8),
    ],
)
def test_bad_images_are_refused_clearly(bad: np.ndarray) -> None:
    with pytest.raises(InvalidInputError, match="image"):
        skin_relative_mask(bad)


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="channels"):
        SkinRelativeParams(channels="L")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold"):
        TwinMaskParams(threshold="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        TwinMaskParams(threshold=-2.0)


# --- clean-up -------------------------------------------------------------------------------------


def test_cleanup_removes_specks_and_fills_holes() -> None:
    truth = disc((200, 200), 100, 100, 40)
    raw = truth.copy()
    raw[95:105, 95:105] = False  # a pale centre
    raw[10, 10] = raw[180, 20] = True  # specks
    cleaned = clean_mask(raw, MaskCleanup())
    assert not cleaned[10, 10] and not cleaned[180, 20]
    assert cleaned[100, 100]
    assert iou(cleaned, truth) >= 0.97


# --- twin mask ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["disc", "blob", "several"])
@pytest.mark.parametrize("threshold", ["otsu", 6.0])
def test_twin_mask_with_a_perfect_twin(shape: str, threshold: str | float) -> None:
    """The twin is the same photograph with the lesion painted out (same noise)."""
    truth = SHAPES[shape]
    photo = skin_photo(truth, tone="III", noise=2.0, gradient=6.0, seed=1)
    twin = skin_photo(np.zeros(SHAPE, bool), tone="III", noise=2.0, gradient=6.0, seed=1)
    mask = twin_mask(photo, twin, TwinMaskParams(threshold=threshold))
    assert iou(mask, truth) >= 0.9


def test_twin_mask_from_a_smaller_twin() -> None:
    """Twins are made at a lower resolution; the mask comes back at the image's size."""
    big = (600, 800)
    truth = blob(big, 300, 380, 130)
    photo = skin_photo(truth, tone="II", noise=2.0)
    twin = np.asarray(
        Image.fromarray(skin_photo(np.zeros(big, bool), tone="II", noise=2.0)).resize(
            (400, 300), Image.Resampling.BOX
        )
    )
    mask = twin_mask(photo, twin)
    assert mask.shape == big
    assert iou(mask, truth) >= 0.9


def test_identical_or_globally_shifted_twin_gives_an_empty_mask() -> None:
    photo = skin_photo(SHAPES["disc"], noise=2.0)
    assert not twin_mask(photo, photo).any()
    # A generator that makes everything a little greener has not found a lesion.
    shifted = photo.copy()
    shifted[..., 0] = np.clip(photo[..., 0].astype(int) - 6, 0, 255).astype(np.uint8)
    assert iou(twin_mask(photo, shifted), np.zeros(SHAPE, bool)) == 1.0


def test_twin_of_another_aspect_ratio_is_refused() -> None:
    photo = skin_photo(SHAPES["disc"])
    with pytest.raises(InvalidInputError, match="aspect"):
        twin_mask(photo, photo[:, :100])


def test_healthy_twins_share_one_batch_at_the_twin_resolution() -> None:
    calls: list[tuple[tuple[int, ...], list[int]]] = []

    def generator(images: np.ndarray, seeds: list[int]) -> np.ndarray:
        calls.append((images.shape, list(seeds)))
        return images[:, :, :, :]

    a = skin_photo(disc((600, 1000), 300, 500, 100))
    b = a.copy()
    twins = healthy_twins(generator, [a, b], [7, 7], long_side=500)
    assert calls == [((2, 300, 500, 3), [7, 7])]
    assert [t.shape for t in twins] == [(300, 500, 3), (300, 500, 3)]


def test_a_twin_generator_returning_the_wrong_shape_is_an_error() -> None:
    photo = skin_photo(SHAPES["disc"])
    with pytest.raises(PermanentError, match="twin generator"):
        healthy_twins(lambda x, s: x[:, ::2], [photo], [0])


# --- real dermoscopy ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ISIC_0001852", "ISIC_0003805", "ISIC_0013127"])
def test_skin_relative_mask_on_isic_dermoscopy(name: str) -> None:
    """Three real images (CC-0, see tests/data/isic/README.md) with adhesive dots and ink marks as
    hard negatives; the mask must find the lesion and not the markers."""
    photo = np.asarray(Image.open(ISIC / f"{name}.jpg").convert("RGB"))
    truth = np.asarray(Image.open(ISIC / f"{name}_segmentation.png").convert("L")) > 127
    assert iou(skin_relative_mask(photo), truth) >= 0.75
