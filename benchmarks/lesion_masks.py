"""How well do the lesion masks find the lesion? Measured against expert masks.

IoU stability between an original and its de-identified version means nothing if the mask does not
find the lesion in the first place. This script measures each mask method against the expert
masks in ``../shared/data/lesions`` and prints median IoU and Dice per set beside the floor: the
naive "a* above Otsu's threshold" finder of ``ASTAR_BASELINE.txt`` (recomputed here, and the
file's own medians quoted).

Sets: ISIC 2017 dermoscopy at original size (13) and downscaled to 1024 px (19, chosen for redness
contrast, so easy), and Fitzpatrick17k clinical photographs (38; non-commercial licence: measured
here, never copied into the project).

Methods: ``synthesis_free`` (a*b*, the default) and ``synthesis_free_a`` (a* only); ``twin`` with
``--model DIR`` (a local diffusers model directory) or ``--tiny-model`` (the random test model: it
cannot make meaningful healthy twins, so its figures only show the path runs — do not tune to them).

    python -m benchmarks.lesion_masks [--data DIR] [--model DIR | --tiny-model] [--per-image]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.filters import threshold_otsu

from deid_core.lesion import (
    DEFAULT_HEALTHY_PROMPT,
    DEFAULT_LESION_PROMPT,
    SkinRelativeParams,
    TwinGenerator,
    dice,
    healthy_twins,
    iou,
    skin_relative_mask,
    twin_mask,
)
from deid_core.lesion.image import downscale, resize_mask, to_lab

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "lesions"
RESULTS = REPO / "benchmarks" / "results"

#: set name -> (image folder, mask folder, mask file name pattern, label in ASTAR_BASELINE.txt)
SETS = {
    "isic": ("isic2017/images", "isic2017/masks", "{stem}_segmentation.png", "isic2017 (native)"),
    "isic_resized": (
        "isic2017/images_resized",
        "isic2017/masks_resized",
        "{stem}_segmentation.png",
        "isic2017 (resized)",
    ),
    "fitzpatrick": (
        "fitz17k_clinical/images",
        "fitz17k_clinical/masks",
        "{stem}_lesions.png",
        "fitz17k_clinical",
    ),
}

MaskFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Scores:
    iou: list[float] = field(default_factory=list)
    dice: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    per_image: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        return {
            "n": len(self.iou),
            "median_iou": statistics.median(self.iou),
            "median_dice": statistics.median(self.dice),
            "mean_iou": statistics.fmean(self.iou),
            "ms_per_image": 1000 * statistics.median(self.seconds),
        }


def load_pairs(
    data: Path, name: str, limit: int | None
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    images, masks, pattern, _ = SETS[name]
    files = sorted(p for p in (data / images).iterdir() if p.suffix.lower() in (".jpg", ".png"))
    for path in files[:limit]:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
        with Image.open(data / masks / pattern.format(stem=path.stem)) as m:
            truth = np.asarray(m.convert("L")) > 127
        if truth.shape != rgb.shape[:2]:
            truth = resize_mask(truth, rgb.shape)
        yield path.stem, rgb, truth


def naive_astar_otsu(rgb: np.ndarray) -> np.ndarray:
    """The floor, as ASTAR_BASELINE.txt computes it: image at <= 512 px, a* > Otsu."""
    a = to_lab(downscale(rgb, 512))[..., 1]
    return resize_mask(a > threshold_otsu(a), rgb.shape)


def baseline_file_medians(data: Path) -> dict[str, float]:
    """The medians written in ASTAR_BASELINE.txt, per set label."""
    path = data / "ASTAR_BASELINE.txt"
    if not path.exists():
        return {}
    medians: dict[str, float] = {}
    label = None
    for line in path.read_text().splitlines():
        head = re.match(r"## (.+) \(n=\d+\)", line)
        if head:
            label = head.group(1)
        found = re.search(r"median otsuA_IoU=([0-9.]+)", line)
        if found and label:
            medians[label] = float(found.group(1))
    return medians


def twin_method(generator: TwinGenerator, long_side: int, seed: int) -> MaskFn:
    def mask(rgb: np.ndarray) -> np.ndarray:
        (twin,) = healthy_twins(generator, [rgb], [seed], long_side)
        return twin_mask(rgb, twin)

    return mask


def build_generator(args: argparse.Namespace) -> tuple[TwinGenerator, str] | None:
    if not (args.model or args.tiny_model):
        return None
    from gateway.commands.model import offline_ml_environment

    offline_ml_environment()
    import torch

    from deid_core.lesion import flowedit_twins
    from deid_core.models import build_tiny_model, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        model_dir = args.model
    else:
        scratch = tempfile.mkdtemp(prefix="lesion-bench-")
        model_dir = build_tiny_model(Path(scratch) / "tiny-sd3", "sd3")
    model = load_model(model_dir, device=args.device)
    generator = flowedit_twins(model, args.lesion_prompt, args.healthy_prompt, args.twin_size)
    model.release_text_encoders()
    label = (
        "the TEST MODEL (random weights: its twins are meaningless)"
        if model.is_test_model
        else model.identity()
    )
    return generator, label


def time_1024(fn: MaskFn, repeats: int = 5) -> float:
    """Median seconds of one mask of a 1024 x 1024 photograph (after a warm-up)."""
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal((190, 150, 130), 6, (1024, 1024, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:1024, 0:1024]
    img[(yy - 500) ** 2 + (xx - 540) ** 2 < 200**2] = (200, 95, 90)
    fn(img)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(img)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the lesions folder")
    ap.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS))
    ap.add_argument("--limit", type=int, default=None, help="first N pairs of each set")
    ap.add_argument("--model", type=Path, help="local model directory for the twin mask")
    ap.add_argument(
        "--tiny-model", action="store_true", help="twin mask with the random test model"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--twin-size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lesion-prompt", default=DEFAULT_LESION_PROMPT)
    ap.add_argument("--healthy-prompt", default=DEFAULT_HEALTHY_PROMPT)
    ap.add_argument("--per-image", action="store_true", help="print every pair's IoU")
    ap.add_argument("--out", type=Path, default=RESULTS / "lesion_masks.json")
    args = ap.parse_args(argv)

    if not args.data.is_dir():
        print(f"no lesion data at {args.data} (pass --data)", file=sys.stderr)
        return 2

    methods: dict[str, MaskFn] = {
        "astar_otsu_floor": naive_astar_otsu,
        "synthesis_free": lambda rgb: skin_relative_mask(rgb, SkinRelativeParams(channels="ab")),
        "synthesis_free_a": lambda rgb: skin_relative_mask(rgb, SkinRelativeParams(channels="a")),
    }
    generator = build_generator(args)
    twin_label = None
    if generator is not None:
        gen, twin_label = generator
        methods["twin"] = twin_method(gen, args.twin_size, args.seed)

    file_floor = baseline_file_medians(args.data)
    report: dict[str, dict[str, dict[str, float]]] = {}
    for set_name in args.sets:
        scores = {m: Scores() for m in methods}
        for stem, rgb, truth in load_pairs(args.data, set_name, args.limit):
            for m, fn in methods.items():
                t0 = time.perf_counter()
                mask = fn(rgb)
                scores[m].seconds.append(time.perf_counter() - t0)
                scores[m].iou.append(iou(mask, truth))
                scores[m].dice.append(dice(mask, truth))
                scores[m].per_image[stem] = scores[m].iou[-1]
        report[set_name] = {m: s.summary() for m, s in scores.items() if s.iou}
        floor = report[set_name]["astar_otsu_floor"]["median_iou"]
        quoted = file_floor.get(SETS[set_name][3])
        print(
            f"\n## {set_name} (n={len(scores['astar_otsu_floor'].iou)})"
            + (f"  floor quoted in ASTAR_BASELINE.txt: median IoU {quoted:.2f}" if quoted else "")
        )
        print(
            f"{'method':<20}{'median IoU':>11}{'median Dice':>12}{'mean IoU':>10}"
            f"{'x floor':>9}{'ms/image':>10}"
        )
        for m, s in report[set_name].items():
            ratio = s["median_iou"] / floor if floor > 0 else float("nan")
            print(
                f"{m:<20}{s['median_iou']:>11.3f}{s['median_dice']:>12.3f}{s['mean_iou']:>10.3f}"
                f"{ratio:>9.2f}{s['ms_per_image']:>10.0f}"
            )
        if args.per_image:
            for stem in scores["astar_otsu_floor"].per_image:
                row = "  ".join(f"{m}={scores[m].per_image[stem]:.2f}" for m in methods)
                print(f"  {stem[:16]:<16} {row}")
    if twin_label:
        print(f"\ntwin mask: healthy twins by {twin_label}, {args.twin_size} px long side")

    t1024 = time_1024(methods["synthesis_free"])
    print(f"\nsynthesis-free mask of a 1024x1024 photograph: {1000 * t1024:.0f} ms (median of 5)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"sets": report, "twin_model": twin_label, "ms_1024": 1000 * t1024}, indent=2)
    )
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
