"""FlowEdit speed on the real transformer architectures, with random weights.

Builds the full-size SD3-medium, SD3.5-large and (optionally) FLUX.1-dev transformers and the
full-size VAE with random weights, configurations in code, nothing downloaded: the FLOPs are those
of the real models, only the pictures are nonsense. Text encoders are one-layer toys of the real
widths (their cost is paid once per route at start-up, not per image).

For each model and size it times one FlowEdit of one image (warm-up, then repeats), and reports
seconds per image, the VAE's share, the FLOPs counted by torch's FlopCounterMode, the model FLOP
utilisation against the accelerator's dense bf16 peak, and peak memory. Then the whole
de-identification of one photograph: the identity edit at full size plus the lesion gate's two
healthy twins (original and edited image) batched at half size, against the 5 s target (the
paper's figure is 20 s per image).

    python benchmarks/flowedit_gpu.py                      # GPU: sd3-medium and sd3.5-large
    python benchmarks/flowedit_gpu.py --models sd3-medium flux-dev --compile
    python benchmarks/flowedit_gpu.py --tiny               # tiny models on the CPU (seconds)

Prints a summary; writes JSON to $OUT/flowedit_gpu.json when OUT is set, or to --json PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np
import torch

#: Dense bf16 peak the brief quotes for the H200 here; pass --peak-tflops for another accelerator.
H200_BF16_DENSE_TFLOPS = 790.0
#: The target for one photograph (edit + two healthy twins), and the paper's per-image figure.
TARGET_SECONDS = 5.0
PAPER_SECONDS = 20.0

SOURCE_PROMPT = "a clinical photograph of a person's forearm with a pigmented lesion"
TARGET_PROMPT = "a clinical photograph of a different person's forearm with a pigmented lesion"
TWIN_SOURCE_PROMPT = "a clinical photograph of skin with a red inflamed lesion"
TWIN_TARGET_PROMPT = "a clinical photograph of healthy skin"


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str
    build_transformer: Callable[[], Any]
    vae_scaling: float
    vae_shift: float
    clip_widths: tuple[int, int]
    t5_width: int
    full_size: bool


def _sd3_medium() -> Any:
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        num_layers=24,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=4096,
        caption_projection_dim=1536,
        pooled_projection_dim=2048,
        out_channels=16,
        pos_embed_max_size=192,
    )


def _sd35_large() -> Any:
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        num_layers=38,
        attention_head_dim=64,
        num_attention_heads=38,
        joint_attention_dim=4096,
        caption_projection_dim=2432,
        pooled_projection_dim=2048,
        out_channels=16,
        pos_embed_max_size=192,
        qk_norm="rms_norm",
    )


def _flux_dev() -> Any:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    )


ARCHITECTURES = {
    "sd3-medium": Architecture(
        "sd3-medium", "sd3", _sd3_medium, 1.5305, 0.0609, (768, 1280), 4096, True
    ),
    "sd3.5-large": Architecture(
        "sd3.5-large", "sd3", _sd35_large, 1.5305, 0.0609, (768, 1280), 4096, True
    ),
    "flux-dev": Architecture("flux-dev", "flux", _flux_dev, 0.3611, 0.1159, (768, 768), 4096, True),
    "tiny-sd3": Architecture("tiny-sd3", "sd3", lambda: None, 1.5305, 0.0609, (32, 32), 32, False),
    "tiny-flux": Architecture(
        "tiny-flux", "flux", lambda: None, 0.3611, 0.1159, (32, 32), 32, False
    ),
}


def _full_vae(scaling: float, shift: float) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=16,
        norm_num_groups=32,
        sample_size=1024,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=scaling,
        shift_factor=shift,
    )


def build_model(arch: Architecture, device: torch.device, dtype: torch.dtype) -> Any:
    """A RectifiedFlowModel of `arch` with random weights, built directly on `device` in `dtype`
    (a 12 B-parameter FLUX would need 48 GB in fp32 first otherwise)."""
    from deid_core.models import RectifiedFlowModel, build_tiny_pipeline

    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        if arch.full_size:
            torch.set_default_dtype(dtype)
            with torch.device(device):
                transformer = arch.build_transformer()
                vae = _full_vae(arch.vae_scaling, arch.vae_shift)
            torch.set_default_dtype(previous)
            pipeline = build_tiny_pipeline(
                arch.family,
                transformer=transformer,
                vae=vae,
                clip_widths=arch.clip_widths,
                t5_width=arch.t5_width,
            )
        else:
            pipeline = build_tiny_pipeline(arch.family)
    finally:
        torch.set_default_dtype(previous)
    return RectifiedFlowModel.from_pipeline(
        pipeline, name=arch.name, is_test_model=True, device=device, dtype=dtype
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        fn()
    return int(counter.get_total_flops())


def _forward_flops(model: Any, size: int) -> tuple[int, int]:
    """(FLOPs of one transformer forward of one row at size x size, FLOPs of one VAE encode +
    decode) as FlopCounterMode counts them (matmuls, convolutions, attention)."""
    from deid_core.flowedit import FlowEditor, FlowEditParams

    params = FlowEditParams.defaults_for(model.family, num_steps=1, n_max=1)
    editor = FlowEditor(model, params, SOURCE_PROMPT, TARGET_PROMPT)
    latent = size // model.vae_scale_factor
    z = torch.zeros(1, model.latent_channels, latent, latent, device=model.device)
    t = torch.tensor(500.0, device=model.device)
    velocity = editor._velocity  # one call evaluates 4 rows (SD3) or 2 (FLUX)
    rows = 4 if model.family == "sd3" else 2
    transformer = _count_flops(lambda: velocity.pair(z, z, t)) // rows
    image = torch.zeros(1, 3, size, size, device=model.device)
    vae = _count_flops(lambda: model.decode_latents(model.encode_images(image)))
    return transformer, vae


def _peak_memory_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _image(size: int, n: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def bench_architecture(
    arch: Architecture, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    from deid_core.flowedit import FlowEditor, FlowEditParams

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(args.dtype) or (
        torch.bfloat16 if device.type == "cuda" else torch.float32
    )
    started = time.perf_counter()
    model = build_model(arch, device, dtype)
    built_s = time.perf_counter() - started
    n_params = sum(p.numel() for p in model._pipeline.transformer.parameters())
    overrides: dict[str, Any] = {"compile": args.compile}
    if args.steps is not None:
        overrides["num_steps"] = args.steps
    if args.n_max is not None:
        overrides["n_max"] = args.n_max
    params = FlowEditParams.defaults_for(arch.family, **overrides)
    editor = FlowEditor(model, params, SOURCE_PROMPT, TARGET_PROMPT)
    twins = FlowEditor(model, params, TWIN_SOURCE_PROMPT, TWIN_TARGET_PROMPT)
    editor.release_text_encoders()
    rows_per_image_step = (4 if arch.family == "sd3" else 2) * params.n_avg
    steps = params.n_max - params.n_min
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None

    result: dict[str, Any] = {
        "model": arch.name,
        "family": arch.family,
        "transformer_parameters": n_params,
        "dtype": str(dtype).removeprefix("torch."),
        "build_seconds": round(built_s, 2),
        "params": params.describe(),
        "compile": args.compile,
        "sizes": [],
    }
    for size in args.sizes:
        image = _image(size)
        fwd_flops, vae_flops = _forward_flops(model, size)
        edit_flops = steps * rows_per_image_step * fwd_flops + params.n_min * 2 * fwd_flops
        _reset_peak(device)
        edit_times = _timed(
            lambda im=image: editor.edit(im, [1]), device, args.warmup, args.repeats
        )
        vae_times = _timed(
            lambda im=image: editor.reconstruct(im), device, min(args.warmup, 1), args.repeats
        )
        edit_s = float(np.median(edit_times))
        vae_s = float(np.median(vae_times))
        transformer_s = max(edit_s - vae_s, 1e-9)
        entry = {
            "size": size,
            "seconds_per_image": round(edit_s, 4),
            "all_seconds": [round(t, 4) for t in edit_times],
            "vae_seconds": round(vae_s, 4),
            "transformer_forward_flop": fwd_flops,
            "edit_transformer_flop": edit_flops,
            "vae_flop": vae_flops,
            "achieved_flop_per_s": round((edit_flops + vae_flops) / edit_s),
            "mfu_transformer": round(edit_flops / transformer_s / peak, 4) if peak else None,
            "mfu_overall": round((edit_flops + vae_flops) / edit_s / peak, 4) if peak else None,
            "peak_memory_gib": _peak_memory_gib(device),
        }
        result["sizes"].append(entry)
        _print_size(arch.name, entry)

    # The whole photograph: edit at full size, then both healthy twins in one batch at half size.
    full, half = args.pipeline_size, args.twin_size
    photo = _image(full)

    def deidentify() -> None:
        edited = editor.edit(photo, [1])
        small = torch.nn.functional.interpolate(
            torch.from_numpy(np.concatenate([photo, edited])).permute(0, 3, 1, 2).float(),
            size=(half, half),
            mode="bilinear",
            antialias=True,
        )
        pair = small.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        twins.edit(np.ascontiguousarray(pair), [2, 3])

    _reset_peak(device)
    photo_times = _timed(deidentify, device, args.warmup, args.repeats)
    photo_s = float(np.median(photo_times))
    result["photograph"] = {
        "edit_size": full,
        "twin_size": half,
        "seconds": round(photo_s, 3),
        "all_seconds": [round(t, 3) for t in photo_times],
        "target_seconds": TARGET_SECONDS,
        "meets_target": photo_s <= TARGET_SECONDS,
        "speedup_vs_paper_20s": round(PAPER_SECONDS / photo_s, 2),
        "peak_memory_gib": _peak_memory_gib(device),
    }
    verdict = (
        f"target {TARGET_SECONDS:.0f} s {'MET' if photo_s <= TARGET_SECONDS else 'MISSED'}; "
        f"{PAPER_SECONDS / photo_s:.1f}x faster than the paper's {PAPER_SECONDS:.0f} s"
        if arch.full_size
        else "tiny model: the target applies to full-size models"
    )
    result["photograph"]["meets_target"] = photo_s <= TARGET_SECONDS if arch.full_size else None
    print(
        f"  {arch.name}: one {full}² photograph (edit + 2 twins at {half}² batched): "
        f"{photo_s:.3f} s — {verdict}",
        flush=True,
    )
    return result


def _print_size(name: str, e: dict[str, Any]) -> None:
    mfu = f"{100 * e['mfu_transformer']:.1f}%" if e["mfu_transformer"] is not None else "n/a"
    mem = f"{e['peak_memory_gib']:.1f} GiB" if e["peak_memory_gib"] is not None else "n/a"
    print(
        f"  {name} {e['size']}²: {e['seconds_per_image']:.3f} s/image "
        f"(VAE {e['vae_seconds']:.3f} s), {_si(e['transformer_forward_flop'])}FLOP/forward, "
        f"{_si(e['edit_transformer_flop'])}FLOP/edit, {_si(e['achieved_flop_per_s'])}FLOP/s, "
        f"MFU {mfu}, peak {mem}",
        flush=True,
    )


def _si(value: float) -> str:
    """1.23 T, 456 G, ...: FLOP counts span twelve orders of magnitude between tiny and full."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}"
    return f"{value:.3g} "


def _text_tokens(arch: Architecture) -> int:
    # SD3: CLIP 77 + T5 256 tokens; FLUX.1-dev: T5 512 tokens (CLIP only pooled)
    return 77 + 256 if arch.family == "sd3" else 512


def meta_flops(arch: Architecture, size: int) -> tuple[int, int]:
    """(one transformer forward of one row, one VAE encode + decode) at size x size, counted on the
    meta device: the real architecture's FLOPs without memory or a GPU."""
    from torch.utils.flop_counter import FlopCounterMode

    lat = size // 8
    with torch.device("meta"):
        transformer = arch.build_transformer()
        vae = _full_vae(arch.vae_scaling, arch.vae_shift)
        if arch.family == "sd3":
            inputs = {
                "hidden_states": torch.zeros(1, 16, lat, lat),
                "timestep": torch.zeros(1),
                "encoder_hidden_states": torch.zeros(1, _text_tokens(arch), arch.t5_width),
                "pooled_projections": torch.zeros(1, sum(arch.clip_widths)),
            }
        else:
            seq = (lat // 2) ** 2
            inputs = {
                "hidden_states": torch.zeros(1, seq, 64),
                "timestep": torch.zeros(1),
                "guidance": torch.zeros(1),
                "encoder_hidden_states": torch.zeros(1, _text_tokens(arch), arch.t5_width),
                "pooled_projections": torch.zeros(1, arch.clip_widths[0]),
                "txt_ids": torch.zeros(_text_tokens(arch), 3),
                "img_ids": torch.zeros(seq, 3),
            }
        image = torch.zeros(1, 3, size, size)
        forward = FlopCounterMode(display=False)
        with forward, torch.no_grad():
            transformer(**inputs, return_dict=False)
        coder = FlopCounterMode(display=False)
        with coder, torch.no_grad():
            latent = vae.encode(image).latent_dist.mode()
            vae.decode(latent, return_dict=False)
    return int(forward.get_total_flops()), int(coder.get_total_flops())


def flops_only(args: argparse.Namespace) -> dict[str, Any]:
    """What the FLOPs alone say: the time of one photograph at 100 % and at typical utilisation
    of the accelerator, for each full-size model (no GPU, no weights)."""
    from deid_core.flowedit import FlowEditParams

    peak = (args.peak_tflops or H200_BF16_DENSE_TFLOPS) * 1e12
    report: dict[str, Any] = {
        "benchmark": "flowedit_gpu --flops-only",
        "peak_tflops": peak / 1e12,
        "results": [],
    }
    print(f"FLOPs counted on the meta device; peak {peak / 1e12:.0f} TFLOP/s (dense bf16)")
    for name in args.models:
        arch = ARCHITECTURES[name]
        if not arch.full_size:
            continue
        overrides: dict[str, Any] = {}
        if args.steps is not None:
            overrides["num_steps"] = args.steps
        if args.n_max is not None:
            overrides["n_max"] = args.n_max
        params = FlowEditParams.defaults_for(arch.family, **overrides)
        rows = (4 if arch.family == "sd3" else 2) * params.n_avg
        steps = params.n_max - params.n_min
        per_size: dict[int, dict[str, int]] = {}
        for size in sorted({*args.sizes, args.pipeline_size, args.twin_size}):
            fwd, vae = meta_flops(arch, size)
            edit = steps * rows * fwd + params.n_min * 2 * fwd + vae
            per_size[size] = {"forward_flop": fwd, "vae_flop": vae, "edit_flop": edit}
            print(
                f"  {name} {size}²: {_si(fwd)}FLOP/forward, VAE {_si(vae)}FLOP, one FlowEdit "
                f"({params.describe()}) {_si(edit)}FLOP = {edit / peak:.2f} s at 100 % MFU"
            )
        photo = (
            per_size[args.pipeline_size]["edit_flop"] + 2 * per_size[args.twin_size]["edit_flop"]
        )
        bounds = {f"{int(u * 100)}%": round(photo / (peak * u), 2) for u in (1.0, 0.6, 0.4)}
        print(
            f"  {name}: one {args.pipeline_size}² photograph + 2 twins at {args.twin_size}²: "
            f"{_si(photo)}FLOP -> "
            + ", ".join(f"{v:.2f} s at {k} MFU" for k, v in bounds.items())
            + f" (target {TARGET_SECONDS:.0f} s needs >= "
            f"{100 * photo / peak / TARGET_SECONDS:.0f} % MFU)"
        )
        report["results"].append(
            {
                "model": name,
                "params": params.describe(),
                "sizes": {str(k): v for k, v in per_size.items()},
                "photograph_flop": photo,
                "photograph_seconds_at_mfu": bounds,
                "mfu_needed_for_target": round(photo / peak / TARGET_SECONDS, 3),
            }
        )
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models (CPU-friendly)")
    parser.add_argument("--models", nargs="+", choices=sorted(ARCHITECTURES), default=None)
    parser.add_argument("--sizes", nargs="+", type=int, default=None)
    parser.add_argument("--pipeline-size", type=int, default=None, help="photograph side")
    parser.add_argument("--twin-size", type=int, default=None, help="healthy twins' side")
    parser.add_argument("--steps", type=int, default=None, help="T (default: the family's)")
    parser.add_argument("--n-max", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument(
        "--flops-only",
        action="store_true",
        help="count FLOPs of the full-size models on the meta device and project times (no GPU)",
    )
    args = parser.parse_args(argv)
    if args.models is None:
        if args.flops_only:
            args.models = ["sd3-medium", "sd3.5-large", "flux-dev"]
        else:
            args.models = ["tiny-sd3", "tiny-flux"] if args.tiny else ["sd3-medium", "sd3.5-large"]
    if args.sizes is None:
        args.sizes = [64, 256] if args.tiny else [512, 1024]
    if args.pipeline_size is None:
        args.pipeline_size = 128 if args.tiny else 1024
    if args.twin_size is None:
        args.twin_size = args.pipeline_size // 2
    return args


def _write(report: dict[str, Any], args: argparse.Namespace) -> None:
    target = args.json
    if target is None and os.environ.get("OUT"):
        target = Path(os.environ["OUT"]) / "flowedit_gpu.json"
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {target}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.flops_only:
        report = flops_only(args)
        _write(report, args)
        return report
    device_name = args.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    full = [m for m in args.models if ARCHITECTURES[m].full_size]
    if full and device.type != "cuda" and not args.tiny:
        print(
            f"refusing to run full-size {', '.join(full)} on the CPU (minutes per forward); "
            "use --tiny (tiny models, or with --models a smoke run at tiny sizes), or a GPU",
            file=sys.stderr,
        )
        raise SystemExit(2)
    if device.type == "cuda" and args.peak_tflops is None:
        args.peak_tflops = H200_BF16_DENSE_TFLOPS
    accelerator = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    )
    print(
        f"FlowEdit benchmark on {device} ({accelerator or 'cpu'}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads; models {', '.join(args.models)}; "
        f"sizes {args.sizes}; warm-up {args.warmup}, repeats {args.repeats}",
        flush=True,
    )
    report: dict[str, Any] = {
        "benchmark": "flowedit_gpu",
        "device": str(device),
        "accelerator": accelerator,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "peak_tflops": args.peak_tflops,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "results": [],
    }
    for name in args.models:
        report["results"].append(bench_architecture(ARCHITECTURES[name], args, device))
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the previous model is garbage once its function returned

    print("\nSummary (median seconds):")
    for r in report["results"]:
        sizes = ", ".join(f"{e['size']}²: {e['seconds_per_image']:.3f} s" for e in r["sizes"])
        p = r["photograph"]
        verdict = {True: "meets", False: "misses", None: "tiny: not judged against"}[
            p["meets_target"]
        ]
        print(
            f"  {r['model']:12s} {sizes}; photograph {p['edit_size']}² + twins {p['twin_size']}²: "
            f"{p['seconds']:.3f} s ({verdict} the {TARGET_SECONDS:.0f} s target)"
        )
    _write(report, args)
    return report


if __name__ == "__main__":
    main()
