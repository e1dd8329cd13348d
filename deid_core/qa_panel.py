"""Visual QA panel of a lesion-gate decision: a PNG a reviewer can judge at a glance.

Layout: the original and the de-identified image side by side; below them the same two images
with both lesion masks drawn on each (original's mask cyan, de-identified's magenta: filled lightly
and outlined), so a reviewer sees whether the lesion kept its place and shape; a header with the
outcome, the IoU against its threshold and the mask areas.

The panel contains the original photograph, so it never leaves the site: it is kept with the
quarantine entry. It carries no other identifying data: no file names, no DICOM attributes.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from deid_core.lesion.gate import GateOutcome, GateResult
from deid_core.lesion.image import check_rgb, resize_mask

ORIGINAL_COLOUR = (0, 220, 255)  # cyan
CANDIDATE_COLOUR = (255, 0, 200)  # magenta
OUTCOME_COLOURS = {
    GateOutcome.ACCEPTED: (30, 150, 60),
    GateOutcome.NO_LESION_FOUND: (200, 130, 0),
}
REJECT_COLOUR = (200, 30, 30)
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
GAP = 8


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _tile(image: np.ndarray, long_side: int) -> Image.Image:
    tile = Image.fromarray(image)
    scale = min(1.0, long_side / max(tile.size))
    size = (max(1, round(tile.width * scale)), max(1, round(tile.height * scale)))
    return tile.resize(size, Image.Resampling.LANCZOS) if size != tile.size else tile


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    inner = ndi.binary_erosion(mask, iterations=width, border_value=0)
    return np.asarray(mask & ~inner)


def _overlay(
    tile: Image.Image, masks: list[tuple[np.ndarray, tuple[int, int, int]]]
) -> Image.Image:
    """Masks filled at 25 % and outlined in their colours on a copy of the tile."""
    rgb = np.asarray(tile, dtype=np.float32).copy()
    width = max(1, round(max(tile.size) / 200))
    for mask, colour in masks:
        m = resize_mask(mask, (tile.height, tile.width))
        rgb[m] = 0.75 * rgb[m] + 0.25 * np.asarray(colour, dtype=np.float32)
    for mask, colour in masks:
        m = resize_mask(mask, (tile.height, tile.width))
        rgb[_outline(m, width)] = colour
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def render_panel(
    original: np.ndarray,
    candidate: np.ndarray,
    result: GateResult,
    *,
    note: str | None = None,
    tile_long_side: int = 384,
) -> bytes:
    """The panel as PNG bytes. `note` is one extra line (e.g. that a test model made the twins);
    keep identifying text out of it."""
    check_rgb(original, "original")
    check_rgb(candidate, "candidate")
    if tile_long_side < 64:
        raise ValueError("tile_long_side must be at least 64")
    tiles = [_tile(original, tile_long_side), _tile(candidate, tile_long_side)]
    both = [(result.original_mask, ORIGINAL_COLOUR), (result.candidate_mask, CANDIDATE_COLOUR)]
    overlays = [_overlay(t, both) for t in tiles]

    font = _font(15)
    small = _font(13)
    iou_text = "n/a (no lesion in either image)" if result.iou is None else f"{result.iou:.3f}"
    verdict = "FORWARD" if result.accepted else "QUARANTINE"
    lines = [
        (f"Lesion gate: {verdict} - {result.outcome.value}", font),
        (f"IoU {iou_text}   threshold {result.iou_threshold:.2f}   method {result.method}", font),
        (
            f"lesion area: original {result.original_area} px "
            f"({100 * result.original_fraction:.1f}%), de-identified {result.candidate_area} px "
            f"({100 * result.candidate_fraction:.1f}%)",
            small,
        ),
    ]
    if result.cross_check_iou is not None:
        lines.append(
            (f"cross-check (twin vs synthesis-free mask) IoU {result.cross_check_iou:.3f}", small)
        )
    if note:
        lines.append((note, small))
    line_height = 20
    header = GAP + line_height * len(lines) + GAP
    caption = 18
    col_w = max(t.width for t in tiles)
    row_h = max(t.height for t in tiles)
    width = max(3 * GAP + 2 * col_w, 560)
    height = header + 2 * (caption + row_h + GAP) + caption
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    outcome_colour = OUTCOME_COLOURS.get(result.outcome, REJECT_COLOUR)
    draw.rectangle([0, 0, 6, header - GAP], fill=outcome_colour)
    y = GAP
    for i, (text, f) in enumerate(lines):
        draw.text((GAP + 8, y), text, fill=outcome_colour if i == 0 else TEXT, font=f)
        y += line_height

    captions = [("original", "de-identified"), ("original + masks", "de-identified + masks")]
    for row, (images, names) in enumerate(zip((tiles, overlays), captions, strict=True)):
        top = header + row * (caption + row_h + GAP)
        for col, (img, name) in enumerate(zip(images, names, strict=True)):
            left = GAP + col * (col_w + GAP)
            draw.text((left, top), name, fill=TEXT, font=small)
            canvas.paste(img, (left, top + caption))
    # Legend under the grid.
    y = height - caption
    x = GAP
    for label, colour in (
        ("original's mask", ORIGINAL_COLOUR),
        ("de-identified's mask", CANDIDATE_COLOUR),
    ):
        draw.rectangle([x, y + 3, x + 12, y + 15], fill=colour)
        draw.text((x + 18, y + 1), label, fill=TEXT, font=small)
        x += 200

    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
