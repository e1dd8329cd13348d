"""The QA panel: a decodable PNG that shows both images, both masks and the decision."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from deid_core.lesion import GateMethod, LesionGateParams
from deid_core.lesion.gate import decide
from deid_core.qa_panel import CANDIDATE_COLOUR, ORIGINAL_COLOUR, render_panel
from tests.support.skin import disc, skin_photo

SHAPE = (240, 320)
Pair = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _colour_count(img: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int(np.count_nonzero(np.all(img == np.asarray(colour, np.uint8), axis=-1)))


@pytest.fixture(scope="module")
def pair() -> Pair:
    truth_o = disc(SHAPE, 120, 140, 40)
    truth_c = disc(SHAPE, 120, 190, 40)
    return skin_photo(truth_o), skin_photo(truth_c), truth_o, truth_c


def test_panel_is_a_png_with_both_images_and_both_masks(pair: Pair) -> None:
    original, candidate, mask_o, mask_c = pair
    result = decide(mask_o, mask_c, LesionGateParams(method=GateMethod.SYNTHESIS_FREE))
    png = render_panel(original, candidate, result)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.mode == "RGB"
    # Two tiles side by side and two rows (plain, then with masks), each at full size here.
    assert img.width >= 2 * SHAPE[1] and img.height >= 2 * SHAPE[0]
    pixels = np.asarray(img)
    # Both outlines are drawn, in their own colours.
    assert _colour_count(pixels, ORIGINAL_COLOUR) > 100
    assert _colour_count(pixels, CANDIDATE_COLOUR) > 100
    # The plain original is in the panel unchanged (top-left tile).
    assert any(
        np.array_equal(pixels[y : y + SHAPE[0], x : x + SHAPE[1]], original)
        for y in range(0, 120)
        for x in range(0, 16)
    )


def test_panel_tiles_are_bounded_for_large_images() -> None:
    big = (1500, 2000)
    mask = disc(big, 700, 1000, 200)
    photo = np.full((*big, 3), (200, 160, 140), np.uint8)
    photo[mask] = (200, 90, 90)
    result = decide(mask, mask, LesionGateParams(method="synthesis_free"))
    img = Image.open(io.BytesIO(render_panel(photo, photo, result, tile_long_side=300)))
    assert img.width <= 2 * 300 + 100 and img.height <= 2 * 300 + 200


def test_panel_differs_with_the_outcome_and_the_note(pair: Pair) -> None:
    original, candidate, mask_o, mask_c = pair
    params = LesionGateParams(method="synthesis_free")
    rejected = render_panel(original, candidate, decide(mask_o, mask_c, params))
    accepted = render_panel(original, candidate, decide(mask_o, mask_o, params))
    noted = render_panel(original, candidate, decide(mask_o, mask_c, params), note="test model")
    assert len({rejected, accepted, noted}) == 3


def test_panel_is_deterministic(pair: Pair) -> None:
    original, candidate, mask_o, mask_c = pair
    result = decide(mask_o, mask_c, LesionGateParams(method="synthesis_free"))
    assert render_panel(original, candidate, result) == render_panel(original, candidate, result)
