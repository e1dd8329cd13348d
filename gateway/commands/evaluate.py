"""`deid-gateway evaluate`: evidence before deployment.

Runs the photograph path (the edit and the lesion gate) over a folder of the site's own
photographs, next to the classic baselines, and writes a report with the privacy figures (a
linkage attack) and the clinical ones (lesion IoU, colour, SSIM).
"""

from __future__ import annotations

import dataclasses
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

import gateway
from deid_core.errors import ConfigError, InvalidInputError
from deid_core.keys import ProjectKey
from gateway.commands import err, out
from gateway.config import load_config

#: Defaults of the healthy-twin edit (deid_core.lesion.synthesis; repeated here so that the
#: command line starts without importing the lesion package).
DEFAULT_LESION_PROMPT = "a clinical photograph of skin with a red inflamed lesion"
DEFAULT_HEALTHY_PROMPT = "a clinical photograph of healthy normal skin"

if TYPE_CHECKING:
    from deid_core.evaluation import EvaluationResult, LesionJudge, Method
    from gateway.config import FlowEditRouteConfig, GatewayConfig

#: The evaluation pulls in scikit-image, SciPy and matplotlib (~2 s): imported when the command
#: runs, not when `deid-gateway` starts for another command.
DEFAULT_BASELINES = "none,blur:0.01,blur:0.03,blur:0.1,pixelate:0.02,pixelate:0.05,pixelate:0.12"

_VERSIONED = (
    "numpy",
    "scipy",
    "scikit-image",
    "matplotlib",
    "pillow",
    "torch",
    "diffusers",
    "transformers",
    "pydicom",
)


def _versions() -> dict[str, str]:
    versions = {"deid-gateway": gateway.__version__, "python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--flowedit KEY=VALUE` pairs; values become int, float, bool or None where they read so."""
    overrides: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise ConfigError(f"--flowedit {item!r}: expected KEY=VALUE, e.g. n_max=33")
        value: Any = text.strip()
        if value.lower() in ("none", "null"):
            value = None
        elif value.lower() in ("true", "false"):
            value = value.lower() == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(value)
                    break
                except ValueError:
                    continue
        overrides[name] = value
    return overrides


def _load_model(model_dir: Path, device: str, threads: int | None) -> Any:
    """The local model directory, loaded once for the edit and (method twin) the healthy twins."""
    from deid_core.model_dir import verify_model_dir
    from gateway.commands.model import offline_ml_environment

    verify_model_dir(model_dir)  # a missing file is reported before a minute of imports
    offline_ml_environment()
    import torch

    from deid_core.models import load_model

    if threads is not None:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_model(model_dir, device=device)


def _flowedit_method(
    model: Any,
    model_dir: Path,
    source_prompt: str | None,
    target_prompt: str | None,
    overrides: dict[str, Any],
) -> tuple[Method, dict[str, Any]]:
    """The route's de-identifying edit as a method of the comparison."""
    from deid_core.evaluation import DEIDENTIFICATION, Method
    from deid_core.flowedit import FlowEditor, FlowEditParams

    if not source_prompt or not target_prompt:
        raise ConfigError("--model needs --source-prompt and --target-prompt")
    known = {f.name for f in dataclasses.fields(FlowEditParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"--flowedit: unknown parameter(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )
    params = FlowEditParams.defaults_for(model.family, **overrides)
    editor = FlowEditor(model, params, source_prompt, target_prompt)
    identity = {
        "identity": model.identity(),
        "family": model.family,
        "is_test_model": bool(model.is_test_model),
        "directory": str(model_dir),
        "device": str(model.device) if hasattr(model, "device") else None,
    }
    method = Method(
        name="flowedit",
        kind=DEIDENTIFICATION,
        transform=editor.edit,
        params={
            "model": identity,
            "source_prompt": source_prompt,
            "target_prompt": target_prompt,
            "flowedit": dataclasses.asdict(params),
        },
        test_model=bool(model.is_test_model),
    )
    return method, identity


#: The gate's ways of finding the lesion, as `--mask` names them.
MASKS = ("synthesis-free", "twin", "otsu-a")


def _judge(
    kind: str,
    threshold: float,
    model: Any,
    twin_size: int,
    lesion_prompt: str,
    healthy_prompt: str,
) -> LesionJudge:
    """The gate every method is judged by: the route's lesion gate (synthesis-free, or twin masks
    from healthy twins made by FlowEdit on the same model), or the naive a*/Otsu reference."""
    from deid_core.evaluation import GateJudge, ThresholdJudge
    from deid_core.evaluation.judge import otsu_redness_mask
    from deid_core.lesion import GateMethod, LesionGate, LesionGateParams

    if kind == "otsu-a":
        return ThresholdJudge(otsu_redness_mask, threshold, name="reference mask: a* above Otsu")
    if kind == "synthesis-free":
        params = LesionGateParams(method=GateMethod.SYNTHESIS_FREE, iou_threshold=threshold)
        return GateJudge(LesionGate(params))
    if kind == "twin":
        if model is None:
            raise ConfigError("--mask twin needs --model (the healthy twins are FlowEdit edits)")
        from deid_core.lesion import flowedit_twins

        generator = flowedit_twins(model, lesion_prompt, healthy_prompt, twin_size)
        params = LesionGateParams(
            method=GateMethod.TWIN, iou_threshold=threshold, twin_long_side=twin_size
        )
        note = (
            "healthy twins by a TEST MODEL: this mask means nothing" if model.is_test_model else ""
        )
        return GateJudge(LesionGate(params, generator), note)
    raise ConfigError(f"--mask {kind!r}: expected one of {', '.join(MASKS)}")


def _route_flowedit(cfg: GatewayConfig, config: Path, route: str) -> FlowEditRouteConfig:
    """The route must exist and edit photographs; its `flowedit` section (model, prompts,
    parameters, lesion gate) is what the evaluation runs, unless the command line says otherwise."""
    names = [r.name for r in cfg.routes]
    chosen = next((r for r in cfg.routes if r.name == route), None)
    if chosen is None:
        raise ConfigError(
            f"--route {route}: no such route in {config} (routes: {', '.join(names) or 'none'})"
        )
    if chosen.pixels != "flowedit" or chosen.flowedit is None:
        raise ConfigError(
            f"--route {route}: its pixel step is {chosen.pixels!r}; evaluate measures routes that "
            "edit photographs (pixels: flowedit)"
        )
    return chosen.flowedit


def _check_report_dir(report: Path) -> None:
    """Write into a new or empty folder, or over an earlier report; never among other files."""
    from gateway.evaluation_report import FILES

    if report.exists() and not report.is_dir():
        raise InvalidInputError(f"--report {report} exists and is not a folder")
    if report.is_dir():
        strangers = sorted(p.name for p in report.iterdir() if p.name not in FILES)
        if strangers:
            raise InvalidInputError(
                f"--report {report} holds other files ({', '.join(strangers[:3])}"
                f"{', ...' if len(strangers) > 3 else ''}); give a new or empty folder"
            )


def evaluate_command(
    photos: Annotated[
        Path, typer.Argument(help="folder of photographs (PNG, JPEG) or DICOM files")
    ],
    report: Annotated[Path, typer.Option("--report", help="folder for the report")],
    masks: Annotated[
        Path | None,
        typer.Option("--masks", help="folder of expert lesion masks, matched by file name"),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="gateway YAML: its project key seeds the edits"),
    ] = None,
    route: Annotated[
        str | None, typer.Option("--route", help="route whose photograph path to evaluate")
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="model directory (diffusers layout) for FlowEdit"),
    ] = None,
    source_prompt: Annotated[str | None, typer.Option("--source-prompt")] = None,
    target_prompt: Annotated[str | None, typer.Option("--target-prompt")] = None,
    flowedit: Annotated[
        list[str] | None,
        typer.Option("--flowedit", help="FlowEdit parameter KEY=VALUE (repeatable), e.g. n_max=24"),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device", help="torch device for the model: cpu, cuda or auto (default: the route's)"
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", help="CPU threads for torch (1 is fastest on a busy machine)"),
    ] = None,
    baselines: Annotated[
        str,
        typer.Option(
            "--baselines",
            help="comma-separated: none, blur:F, pixelate:F (F: fraction of the long side); "
            "'' for none",
        ),
    ] = DEFAULT_BASELINES,
    mask: Annotated[
        str | None,
        typer.Option(
            "--mask",
            help="how the gate finds the lesion: synthesis-free, twin (healthy twins by FlowEdit "
            "on --model) or otsu-a (the naive a* reference); default: the route's gate, "
            "else synthesis-free",
        ),
    ] = None,
    gate_threshold: Annotated[
        float | None,
        typer.Option("--gate-threshold", help="lesion IoU the gate requires (default 0.67)"),
    ] = None,
    twin_size: Annotated[
        int | None,
        typer.Option("--twin-size", help="longer side of the healthy twins (--mask twin; 512)"),
    ] = None,
    lesion_prompt: Annotated[
        str | None,
        typer.Option("--lesion-prompt", help="source prompt of the healthy-twin edit"),
    ] = None,
    healthy_prompt: Annotated[
        str | None,
        typer.Option("--healthy-prompt", help="target prompt of the healthy-twin edit"),
    ] = None,
    max_side: Annotated[
        int | None,
        typer.Option("--max-side", help="scale photographs down to this long side on reading"),
    ] = None,
    working_side: Annotated[
        int, typer.Option("--working-side", help="long side for descriptors, colour and SSIM")
    ] = 512,
    examples: Annotated[
        int, typer.Option("--examples", help="photographs shown in the example panels (0: none)")
    ] = 4,
    key: Annotated[
        Path | None,
        typer.Option("--key", help="project key file (when no --config): seeds and fingerprint"),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="evaluate only the first N photographs")
    ] = None,
) -> None:
    """Measure privacy (linkage attack) and clinical fidelity (lesion IoU, colour, SSIM) of
    photograph de-identification on a folder of photographs, with baselines, and write a report."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from deid_core.evaluation import EvaluationSettings, baseline, evaluate
    from gateway.evaluation_report import RunInfo, write_report
    from gateway.photo_folder import PhotoFolder

    for name, value, low in (("--working-side", working_side, 64), ("--examples", examples, 0)):
        if value < low:
            raise ConfigError(f"{name} must be at least {low}")
    if max_side is not None and max_side < 64:
        raise ConfigError("--max-side must be at least 64")
    if limit is not None and limit < 2:
        raise ConfigError("--limit must be at least 2 (linkage needs photographs to confuse)")
    if gate_threshold is not None and not 0 < gate_threshold <= 1:
        raise ConfigError("--gate-threshold must lie in (0, 1]")
    if twin_size is not None and twin_size < 64:
        raise ConfigError("--twin-size must be at least 64")
    if threads is not None and threads < 1:
        raise ConfigError("--threads must be at least 1")
    _check_report_dir(report)

    project_key: ProjectKey | None = None
    chosen: FlowEditRouteConfig | None = None
    config_dump: dict[str, Any] | None = None
    if config is not None:
        cfg = load_config(config)
        project_key = cfg.load_key()
        config_dump = cfg.model_dump(mode="json")
        if route is not None:
            chosen = _route_flowedit(cfg, config, route)
    elif route is not None:
        raise ConfigError("--route needs --config (the file that defines the route)")
    elif key is not None:
        try:
            project_key = ProjectKey(key.read_bytes())
        except OSError as exc:
            raise ConfigError(f"--key {key}: cannot be read: {exc.strerror}") from None

    methods: list[Method] = []
    for spec in (s for s in baselines.split(",") if s.strip()):
        try:
            methods.append(baseline(spec))
        except ValueError as exc:
            raise ConfigError(f"--baselines: {exc}") from None
    models: dict[str, dict[str, Any]] = {}
    overrides = _parse_overrides(flowedit or [])
    if chosen is not None:
        # the route's settings, each overridden by what the command line gives
        model = model or chosen.model
        source_prompt = source_prompt or chosen.source_prompt
        target_prompt = target_prompt or chosen.target_prompt
        overrides = {**chosen.params, **overrides}
        device = device or chosen.device
        gate = chosen.gate
        mask = mask or ("twin" if gate.method == "twin" else "synthesis-free")
        gate_threshold = gate.threshold if gate_threshold is None else gate_threshold
        twin_size = twin_size or gate.twin_max_side
        lesion_prompt = lesion_prompt or gate.twin_source_prompt
        healthy_prompt = healthy_prompt or gate.twin_target_prompt
    device = device or "auto"
    mask = mask or "synthesis-free"
    gate_threshold = 0.67 if gate_threshold is None else gate_threshold
    twin_size = twin_size or 512
    lesion_prompt = lesion_prompt or DEFAULT_LESION_PROMPT
    healthy_prompt = healthy_prompt or DEFAULT_HEALTHY_PROMPT
    if model is None and (overrides or source_prompt or target_prompt):
        raise ConfigError("--source-prompt, --target-prompt and --flowedit need --model")
    if model is None and not methods:
        raise ConfigError("nothing to evaluate: give --model or at least one baseline")
    if mask not in MASKS:
        raise ConfigError(f"--mask {mask!r}: expected one of {', '.join(MASKS)}")
    if mask == "twin" and model is None:
        raise ConfigError("--mask twin needs --model (the healthy twins are FlowEdit edits)")

    folder = PhotoFolder(photos, masks, max_side=max_side, key=project_key, limit=limit)
    if len(folder) < 2:
        raise InvalidInputError(
            f"{photos} holds one photograph; the linkage attack needs at least two"
        )
    for relative in folder.unreadable:
        err.print(f"[yellow]left out (unreadable, or not an 8-bit photograph):[/] {relative}")

    loaded = _load_model(model, device, threads) if model is not None else None
    if loaded is not None and model is not None:
        method, identity = _flowedit_method(loaded, model, source_prompt, target_prompt, overrides)
        methods.append(method)
        models[method.name] = identity
    judge = _judge(mask, gate_threshold, loaded, twin_size, lesion_prompt, healthy_prompt)
    if loaded is not None:
        loaded.release_text_encoders()  # every editor of the model exists by now

    settings = EvaluationSettings(working_side=working_side, examples=examples)

    err.print(
        f"evaluating {len(folder)} photographs x {len(methods)} methods "
        f"({', '.join(m.name for m in methods)})"
    )
    total = len(folder) * len(methods)
    with Progress(
        TextColumn("[bold]{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    ) as bar:
        task = bar.add_task("starting", total=total)

        def step(what: str) -> None:
            bar.update(task, advance=1, description=what)

        result = evaluate(folder, methods, judge, settings, progress=step)
        bar.update(task, description="done")

    notes = []
    if any(m.test_model for m in methods):
        from deid_core.models import TEST_MODEL_NOTICE

        notes.append(TEST_MODEL_NOTICE)
    if masks is not None:
        missing = sum(s.mask is None for s in folder.sources)
        if missing:
            notes.append(f"{missing} photograph(s) had no expert mask")
        if folder.unmatched_masks:
            notes.append(f"{folder.unmatched_masks} expert mask(s) matched no photograph")
    if folder.unreadable:
        notes.append(
            f"{len(folder.unreadable)} file(s) were unreadable or not 8-bit photographs "
            "and were left out"
        )
    if max_side is not None:
        notes.append(f"photographs were scaled to at most {max_side} px on reading")
    info = RunInfo(
        photos=str(photos),
        masks=str(masks) if masks is not None else None,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        command=["deid-gateway", *sys.argv[1:]],
        config={
            "gateway_config": config_dump,
            "config_file": str(config) if config is not None else None,
            "route": route,
            "methods": [{"name": m.name, "kind": m.kind, **m.params} for m in methods],
            "gate": {
                "mask": mask,
                "threshold": gate_threshold,
                "description": judge.description,
                **(
                    {
                        "twin_size": twin_size,
                        "lesion_prompt": lesion_prompt,
                        "healthy_prompt": healthy_prompt,
                    }
                    if mask == "twin"
                    else {}
                ),
            },
            "max_side": max_side,
            "threads": threads,
            "working_side": working_side,
            "examples": examples,
            "limit": limit,
        },
        models=models,
        key_fingerprint=project_key.fingerprint() if project_key is not None else None,
        versions=_versions(),
        sources=[(s.id, s.relative) for s in folder.sources],
        notes=notes,
    )
    page = write_report(result, info, report)
    _print_summary(result)
    out.print(f"report: {page}")


def _print_summary(result: EvaluationResult) -> None:
    from rich.table import Table

    from deid_core.evaluation import strongest_attack

    table = Table(title="privacy and fidelity per method")
    for heading in ("method", "re-id top-1", "(attack)", "top-5", "IoU median", "gate pass",
                    "ΔE00", "SSIM lesion", "s/image"):  # fmt: skip
        table.add_column(heading, justify="left" if heading == "method" else "right")

    def pct(v: float) -> str:
        return "–" if v != v else f"{100 * v:.0f}%"

    def num(v: float, digits: int = 2) -> str:
        return "–" if v != v else f"{v:.{digits}f}"

    for m in result.methods:
        s = result.summary[m.name]
        table.add_row(
            m.name + (" (test model)" if m.test_model else ""),
            pct(s["reid_top1"]),
            strongest_attack(s) or "–",
            pct(s["reid_top5"]),
            num(s["iou_stability_median"]),
            pct(s["gate_pass_rate"]),
            num(s["delta_e00_median"], 1),
            num(s["ssim_lesion_mean"]),
            num(s["seconds_per_image_median"], 3),
        )
    out.print(table)
    for m in result.methods:
        if m.test_model:
            out.print(
                f"[bold red]{m.name} (test model):[/] made with a test model; its figures "
                "exercise the measurement and mean nothing clinically"
            )
    out.print(f"chance: top-1 {pct(result.summary[result.methods[0].name]['chance_top1'])}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
