"""The linkage attack: can an attacker who holds the original photographs tell which one a
de-identified photograph was made from?

For every de-identified image the attacker ranks all N originals by similarity. The descriptors
need no trained weights, so the attack runs anywhere and nobody can argue that a different network
would have done worse:

- ``orb``: ORB keypoints (scikit-image) matched with Lowe's ratio test and a mutual nearest
  neighbour check; the score is the number of matches. Finds shared local structure (hair,
  pores, borders, rulers, dots).
- ``colour``: joint CIELAB histogram, Bhattacharyya coefficient. Survives blur and pixelation.
- ``lbp``: local-binary-pattern histograms (8 neighbours) at two radii, chi-square distance.
  Skin texture.
- ``glcm``: grey-level co-occurrence statistics, Euclidean distance after standardising over the
  originals. Coarser texture.
- ``layout``: a 32x32 colour thumbnail, normalised correlation. The global arrangement of the
  picture; blur and pixelation keep it by construction.

Scores of different descriptors live on different scales, so each query's row is turned into
robust z-scores (median and MAD) before they are averaged into ``fused``. The report's headline is
the strongest attack (the highest rate over every descriptor and the fusion): a conservative figure
for privacy, slightly optimistic for the attacker because the best of six is picked afterwards.

Ties are scored as if broken at random: a true original that ties with two others counts one third
of a top-1 hit. A transform that outputs the same picture for every input therefore links exactly at
chance, not at 100 % or 0 %.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from skimage import feature

from deid_core.evaluation.imaging import WorkingCopy

#: The descriptors, in the order the report lists them; "fused" combines all of them.
ATTACKS: tuple[str, ...] = ("orb", "colour", "lbp", "glcm", "layout")
FUSED = "fused"

_LAB_RANGES = ((0.0, 100.0), (-60.0, 80.0), (-60.0, 80.0))
_LAB_BINS = 8
_LBP_SETTINGS = ((8, 1.0), (8, 2.0))
_GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
_GLCM_DISTANCES = (1, 2, 4)
_LAYOUT_SIDE = 32


@dataclass(frozen=True)
class AttackSettings:
    """Knobs of the attack. The defaults keep one image's descriptors near 0.2 s on one core."""

    n_keypoints: int = 300
    fast_threshold: float = 0.05
    #: Lowe's ratio: a match counts when the nearest descriptor is clearly nearer than the second.
    ratio: float = 0.8
    #: Matches farther than this many of the 256 bits are never counted.
    max_hamming: int = 80


@dataclass(frozen=True)
class ImageDescriptors:
    """What the attacker extracts from one image (originals and de-identified alike)."""

    keypoints: np.ndarray  # (K, 256) bool ORB descriptors, K may be 0
    colour: np.ndarray  # joint CIELAB histogram, sums to 1
    lbp: np.ndarray  # concatenated LBP histograms, each sums to 1
    glcm: np.ndarray  # co-occurrence statistics
    layout: np.ndarray  # zero-mean, unit-norm thumbnail


def describe(
    image: np.ndarray | WorkingCopy, settings: AttackSettings | None = None
) -> ImageDescriptors:
    """Descriptors of one image at working size (long side <= 512 px)."""
    settings = settings or AttackSettings()
    copy = image if isinstance(image, WorkingCopy) else WorkingCopy(image)
    grey8 = np.clip(copy.grey * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return ImageDescriptors(
        keypoints=_orb(copy.grey, settings),
        colour=_colour_histogram(copy.lab.reshape(-1, 3)),
        lbp=_lbp_histograms(grey8),
        glcm=_glcm_statistics(grey8),
        layout=_layout(copy.rgb),
    )


def _orb(grey: np.ndarray, settings: AttackSettings) -> np.ndarray:
    orb = feature.ORB(n_keypoints=settings.n_keypoints, fast_threshold=settings.fast_threshold)
    try:
        orb.detect_and_extract(grey)
    except (RuntimeError, ValueError, IndexError):
        # A flat image (heavy blur, pixelation, an edit that wiped the picture) has no corners:
        # nothing for this attack to match, which is a result, not an error.
        return np.zeros((0, 256), dtype=bool)
    descriptors = getattr(orb, "descriptors", None)
    if descriptors is None or len(descriptors) == 0:
        return np.zeros((0, 256), dtype=bool)
    return np.asarray(descriptors, dtype=bool)


def _colour_histogram(lab: np.ndarray) -> np.ndarray:
    hist, _ = np.histogramdd(lab, bins=_LAB_BINS, range=_LAB_RANGES)
    flat = hist.ravel()
    return flat / max(flat.sum(), 1.0)


def _lbp_histograms(grey8: np.ndarray) -> np.ndarray:
    parts = []
    for points, radius in _LBP_SETTINGS:
        codes = feature.local_binary_pattern(grey8, points, radius, method="uniform")
        hist, _ = np.histogram(codes, bins=points + 2, range=(0, points + 2))
        parts.append(hist / max(hist.sum(), 1))
    return np.concatenate(parts)


def _glcm_statistics(grey8: np.ndarray) -> np.ndarray:
    levels = 32
    quantised = (grey8 // (256 // levels)).astype(np.uint8)
    angles = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
    matrix = feature.graycomatrix(
        quantised, _GLCM_DISTANCES, angles, levels=levels, symmetric=True, normed=True
    )
    stats = [feature.graycoprops(matrix, prop).mean(axis=1) for prop in _GLCM_PROPS]
    return np.nan_to_num(np.concatenate(stats), nan=0.0)


def _layout(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    thumb = Image.fromarray(image).resize((_LAYOUT_SIDE, _LAYOUT_SIDE), Image.Resampling.BOX)
    vec = np.asarray(thumb, dtype=np.float64).ravel()
    vec = vec - vec.mean()
    norm = np.linalg.norm(vec)
    return vec / norm if norm > 0 else vec


# --- similarity of every query to every original ------------------------------------------------


def similarity_matrices(
    queries: Sequence[ImageDescriptors],
    originals: Sequence[ImageDescriptors],
    settings: AttackSettings | None = None,
) -> dict[str, np.ndarray]:
    """Per attack, an (n_queries, n_originals) matrix: higher means "more likely the same photo"."""
    settings = settings or AttackSettings()
    out = {
        "orb": _keypoint_scores(queries, originals, settings),
        "colour": _stack(queries, "colour") ** 0.5 @ (_stack(originals, "colour") ** 0.5).T,
        "lbp": -_chi_square(_stack(queries, "lbp"), _stack(originals, "lbp")),
        "glcm": -_standardised_distance(_stack(queries, "glcm"), _stack(originals, "glcm")),
        "layout": _stack(queries, "layout") @ _stack(originals, "layout").T,
    }
    assert tuple(out) == ATTACKS
    return out


def _stack(items: Sequence[ImageDescriptors], field: str) -> np.ndarray:
    return np.stack([getattr(item, field) for item in items]).astype(np.float64)


def _chi_square(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a[:, None, :] - b[None, :, :]) ** 2
    den = a[:, None, :] + b[None, :, :]
    return 0.5 * np.divide(num, den, out=np.zeros_like(num), where=den > 0).sum(axis=2)


def _standardised_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mean = b.mean(axis=0)
    std = b.std(axis=0)
    std[std == 0] = 1.0
    za, zb = (a - mean) / std, (b - mean) / std
    return np.sqrt(((za[:, None, :] - zb[None, :, :]) ** 2).sum(axis=2))


#: Upper bound on the distance block of one query against a chunk of originals (float32 cells):
#: ~100 MB, so that a site's thousand photographs do not need gigabytes.
_BLOCK_CELLS = 25_000_000


def _keypoint_scores(
    queries: Sequence[ImageDescriptors],
    originals: Sequence[ImageDescriptors],
    settings: AttackSettings,
    block_cells: int = _BLOCK_CELLS,
) -> np.ndarray:
    """Mutual, ratio-tested ORB matches between each query and each original, vectorised over
    chunks of originals: all are padded to the same keypoint count with an impossible distance."""
    n_orig = len(originals)
    width = max((len(o.keypoints) for o in originals), default=0)
    scores = np.zeros((len(queries), n_orig))
    if width == 0:
        return scores
    gallery = np.zeros((n_orig, width, 256), dtype=np.float32)
    valid = np.zeros((n_orig, width), dtype=bool)
    for j, original in enumerate(originals):
        k = len(original.keypoints)
        gallery[j, :k] = original.keypoints
        valid[j, :k] = True
    bits = gallery.sum(axis=2)
    for i, query in enumerate(queries):
        q = query.keypoints.astype(np.float32)
        if len(q) == 0:
            continue
        chunk = max(1, block_cells // (len(q) * width))
        for start in range(0, n_orig, chunk):
            stop = min(n_orig, start + chunk)
            scores[i, start:stop] = _mutual_matches(
                q, gallery[start:stop], bits[start:stop], valid[start:stop], settings
            )
    return scores


def _mutual_matches(
    q: np.ndarray,
    gallery: np.ndarray,
    bits: np.ndarray,
    valid: np.ndarray,
    settings: AttackSettings,
) -> np.ndarray:
    n, width = valid.shape
    far = 1e6
    # Hamming distance of 0/1 vectors: |a| + |b| - 2 a.b
    flat = gallery.reshape(n * width, 256)
    dist = q.sum(axis=1)[:, None] + bits.reshape(1, -1) - 2.0 * (q @ flat.T)
    dist = dist.reshape(len(q), n, width)
    dist[:, ~valid] = far
    if width >= 2:
        two = np.partition(dist, 1, axis=2)[:, :, :2]
        best, second = two[:, :, 0], two[:, :, 1]
    else:
        best, second = dist[:, :, 0], np.full_like(dist[:, :, 0], far)
    nearest = dist.argmin(axis=2)  # (Kq, n): nearest original keypoint per query keypoint
    back = dist.argmin(axis=0)  # (n, width): nearest query keypoint per original keypoint
    mutual = back[np.arange(n)[None, :], nearest] == np.arange(len(q))[:, None]
    good = mutual & (best <= settings.max_hamming) & (best < settings.ratio * second) & (best < far)
    return good.sum(axis=0)


# --- ranking ------------------------------------------------------------------------------------


def robust_z(scores: np.ndarray) -> np.ndarray:
    """Row-wise robust z-scores (median, 1.4826 MAD; the standard deviation where the MAD is 0,
    e.g. a row of mostly zero keypoint matches; all zeros where the row is constant)."""
    med = np.median(scores, axis=1, keepdims=True)
    dev = scores - med
    scale = 1.4826 * np.median(np.abs(dev), axis=1, keepdims=True)
    std = scores.std(axis=1, keepdims=True)
    scale = np.where(scale > 0, scale, std)
    return np.divide(dev, scale, out=np.zeros_like(dev), where=scale > 0)


def fuse(matrices: dict[str, np.ndarray]) -> np.ndarray:
    """The fused score: mean of the row-wise robust z-scores of every descriptor."""
    return np.mean([robust_z(matrices[name]) for name in ATTACKS], axis=0)


@dataclass(frozen=True)
class Ranking:
    """Where each query's true original landed among the N candidates under one attack."""

    #: Mid-rank of the true original (1 = first; ties share the mean of their places).
    ranks: np.ndarray
    #: Probability of the true original being in the top 1 / top 5 with ties broken at random.
    top1: np.ndarray
    top5: np.ndarray


def rank_true_matches(scores: np.ndarray, truth: Sequence[int]) -> Ranking:
    """`scores[i, j]`: similarity of query i to original j; `truth[i]`: the original query i was
    made from."""
    n_q, n_o = scores.shape
    ranks = np.empty(n_q)
    top1 = np.empty(n_q)
    top5 = np.empty(n_q)
    for i in range(n_q):
        row = scores[i]
        true = row[truth[i]]
        close = np.isclose(row, true, rtol=1e-9, atol=1e-12)
        greater = int(np.sum((row > true) & ~close))
        ties = int(close.sum()) - 1
        ranks[i] = 1 + greater + ties / 2
        top1[i] = _hit_probability(1, greater, ties)
        top5[i] = _hit_probability(min(5, n_o), greater, ties)
    return Ranking(ranks, top1, top5)


def _hit_probability(k: int, greater: int, ties: int) -> float:
    """P(true original within the first k) when it ties with `ties` others in a random order."""
    return float(np.clip((k - greater) / (ties + 1), 0.0, 1.0))


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion; sensible at the small N a site will have."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
