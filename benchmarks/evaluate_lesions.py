"""Run `deid-gateway evaluate` on the shared lesion photographs with their expert masks and print
where each method sits: re-identification (and its lift over chance) against lesion fidelity.

    .venv/bin/python -m benchmarks.evaluate_lesions [--model DIR | --tiny-model] [--sets ...]

Sets: ``isic_resized`` (19 dermoscopy images, 1024 px), ``isic`` (13 at native size, up to
2592 px), ``fitz`` (38 clinical photographs, Fitzpatrick17k, CC BY-NC-SA: measured here, never
copied into the project), ``all`` (the three together, through symbolic links, so the attacker must
pick among 70). Reports go to ``benchmarks/results/evaluate_lesions/<set>/`` (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LESIONS = REPO.parent / "shared" / "data" / "lesions"
RESULTS = REPO / "benchmarks" / "results" / "evaluate_lesions"

SETS = {
    "isic_resized": ("isic2017/images_resized", "isic2017/masks_resized"),
    "isic": ("isic2017/images", "isic2017/masks"),
    "fitz": ("fitz17k_clinical/images", "fitz17k_clinical/masks"),
}


def _linked_union(target: Path) -> tuple[Path, Path]:
    """All sets in one folder of symbolic links (prefixed by set, so names never collide)."""
    photos, masks = target / "photos", target / "masks"
    for folder in (photos, masks):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
    for name, (images, expert) in SETS.items():
        for src in sorted((LESIONS / images).iterdir()):
            (photos / f"{name}__{src.name}").symlink_to(src)
        for src in sorted((LESIONS / expert).iterdir()):
            (masks / f"{name}__{src.name}").symlink_to(src)
    return photos, masks


def _tiny_model(directory: Path) -> Path:
    if not (directory / "model_index.json").exists():
        from deid_core.models import build_tiny_model

        build_tiny_model(directory)
    return directory


def _run(name: str, photos: Path, masks: Path, args: argparse.Namespace) -> dict:
    report = RESULTS / name
    command = [
        sys.executable, "-m", "gateway", "evaluate", str(photos), "--masks", str(masks),
        "--report", str(report), "--max-side", str(args.max_side),
    ]  # fmt: skip
    if args.model is not None:
        command += ["--model", str(args.model), "--source-prompt", args.source_prompt]
        command += ["--target-prompt", args.target_prompt, "--device", args.device]
        if args.threads is not None:
            command += ["--threads", str(args.threads)]
        for item in args.flowedit:
            command += ["--flowedit", item]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO, check=False)
    if done.returncode != 0:
        raise SystemExit(f"evaluate failed on {name} (exit {done.returncode})")
    doc = json.loads((report / "figures.json").read_text())
    doc["wall_seconds"] = time.perf_counter() - start
    return doc


def _pct(v: float | None) -> str:
    return "   –" if v is None else f"{100 * v:4.0f}%"


def _num(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _print(name: str, doc: dict) -> None:
    run = doc["run"]
    print(
        f"\n## {name}: {int(run['photos'])} photographs, mask vs expert IoU median "
        f"{_num(run['mask_vs_expert_iou_median'])}, {doc['wall_seconds']:.0f} s"
        + ("  [TEST MODEL: clinically meaningless]" if doc["test_model"] else "")
    )
    head = (
        f"{'method':<14} {'top-1':>6} {'lift':>5} {'attack':>7} {'top-5':>6} {'IoU':>5} "
        f"{'pass':>5} {'expIoU':>6} {'ΔE00':>5} {'Δa*':>6} {'SSIMles':>7} {'SSIMrest':>8} "
        f"{'s/img':>6}"
    )
    print(head)
    print("-" * len(head))
    for m in doc["methods"]:
        f = m["figures"]
        lift = (
            f["reid_top1"] / f["chance_top1"]
            if f["reid_top1"] is not None and f["chance_top1"]
            else None
        )
        print(
            f"{m['name']:<14} {_pct(f['reid_top1']):>6} {_num(lift, 1):>5} "
            f"{f['strongest_attack_top1']:>7} {_pct(f['reid_top5']):>6} "
            f"{_num(f['iou_stability_median']):>5} {_pct(f['gate_pass_rate']):>5} "
            f"{_num(f['expert_iou_median']):>6} {_num(f['delta_e00_median'], 1):>5} "
            f"{_num(f['delta_a_median'], 1):>6} {_num(f['ssim_lesion_mean']):>7} "
            f"{_num(f['ssim_rest_mean']):>8} {_num(f['seconds_per_image_median'], 3):>6}"
        )
    print(f"chance: top-1 {_pct(doc['methods'][0]['figures']['chance_top1'])}, "
          f"top-5 {_pct(doc['methods'][0]['figures']['chance_top5'])}; "
          "lift = top-1 rate / chance")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="isic_resized,isic,fitz,all")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tiny-model", action="store_true", help="build and use the test model")
    parser.add_argument("--source-prompt", default="a clinical photograph of skin")
    parser.add_argument("--target-prompt", default="a clinical photograph of another person's skin")
    parser.add_argument("--flowedit", action="append", default=[], help="KEY=VALUE")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--max-side", type=int, default=512)
    args = parser.parse_args()
    if not LESIONS.is_dir():
        raise SystemExit(f"{LESIONS} is not present on this machine")
    if args.tiny_model:
        args.model = _tiny_model(RESULTS / "tiny-model")
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.sets.split(","):
        if name == "all":
            photos, masks = _linked_union(RESULTS / "all-links")
        elif name in SETS:
            photos, masks = (LESIONS / p for p in SETS[name])
        else:
            raise SystemExit(f"unknown set {name!r}; choose from {', '.join([*SETS, 'all'])}")
        _print(name, _run(name, photos, masks, args))
    print(f"\nreports: {RESULTS}/<set>/index.html")


if __name__ == "__main__":
    main()
