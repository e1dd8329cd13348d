"""The evaluation report: one folder a site can hand to its ethics board.

- ``index.html``: self-contained page (no scripts, no remote assets; PNGs linked relatively);
- ``tradeoff.png``: re-identification rate against lesion IoU stability, one point per method;
- ``distributions.png``: histograms and box plots of the per-image figures;
- ``examples.png``: a grid of example panels (originals and every method's output with the masks);
- ``figures.csv`` / ``figures.json``: every figure of the run, per method, per photograph and per
  (photograph, method), plus (JSON) the exact settings, model identity, key fingerprint, versions;
- ``photos.csv``: which file each photograph id stands for.

Photographs are named by id (p0001, ...) everywhere except photos.csv, because file names may carry
patient names. The example panels and photos.csv show the site's own data: the folder is as
sensitive as the photographs, and the page says so.
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from deid_core.evaluation import (
    ATTACKS,
    BASELINE,
    FUSED,
    EvaluationResult,
    ImageRecord,
    strongest_attack,
)

SCHEMA = "deid-gateway/evaluation-report/1"
FILES = (
    "index.html",
    "tradeoff.png",
    "distributions.png",
    "examples.png",
    "figures.csv",
    "figures.json",
    "photos.csv",
)
CSV_COLUMNS = ("scope", "method", "photo", "figure", "value")

#: Per-image figures, in the order the CSV lists them (linkage figures follow per attack).
IMAGE_FIGURES = (
    "outcome",
    "reason",
    "iou_stability",
    "expert_iou",
    "delta_e00",
    "delta_a",
    "ssim_lesion",
    "ssim_rest",
    "ssim_image",
    "transform_seconds",
    "gate_seconds",
)
PHOTO_FIGURES = (
    "height",
    "width",
    "has_expert_mask",
    "lesion_area_fraction",
    "expert_iou_original",
    "mask_seconds",
)

#: The columns of the page's summary table: (figure, heading, format).
SUMMARY_COLUMNS = (
    ("reid_top1", "re-identified, top-1 (strongest attack)", "pct"),
    ("reid_top1_ci_low", "95 % CI low", "pct"),
    ("reid_top1_ci_high", "95 % CI high", "pct"),
    ("reid_top5", "re-identified, top-5", "pct"),
    ("reid_top1_fused", "top-1, fused attack", "pct"),
    ("chance_top1", "chance, top-1", "pct"),
    ("chance_top5", "chance, top-5", "pct"),
    ("iou_stability_median", "lesion IoU stability, median", "num"),
    ("iou_stability_q25", "IoU q25", "num"),
    ("iou_stability_q75", "IoU q75", "num"),
    ("gate_pass_rate", "gate pass rate", "pct"),
    ("expert_iou_median", "mask vs expert IoU, median", "num"),
    ("delta_e00_median", "lesion ΔE00, median", "num"),
    ("delta_a_median", "lesion Δa*, median", "num"),
    ("ssim_lesion_mean", "SSIM lesion, mean", "num"),
    ("ssim_rest_mean", "SSIM elsewhere, mean", "num"),
    ("seconds_per_image_median", "seconds per image (median)", "sec"),
)

TEST_MODEL_WARNING = (
    "These figures were made with a test model (tiny random weights, built in code): they exercise "
    "the measurement and say nothing clinically. Run the evaluation with the site's real model."
)
SENSITIVE_NOTE = (
    "This folder shows the site's own photographs (examples.png) and file names (photos.csv): "
    "keep it where the photographs themselves may be kept. figures.csv, figures.json, "
    "tradeoff.png and distributions.png name photographs by id only."
)


@dataclass(frozen=True)
class RunInfo:
    """What the run was: enough to reproduce it and to know which model made the figures."""

    photos: str
    masks: str | None
    created: str
    command: list[str]
    #: The exact settings: command-line parameters and the configuration/route used.
    config: dict[str, Any]
    #: Identity of the model of each de-identification method (method name -> identity), with
    #: whether it is a test model.
    models: dict[str, dict[str, Any]]
    key_fingerprint: str | None
    versions: dict[str, str]
    #: (photo id, source path relative to the photos folder)
    sources: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def write_report(result: EvaluationResult, info: RunInfo, directory: Path) -> Path:
    """Write the whole report into `directory` (created if needed); returns the HTML page."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = figure_rows(result)
    _write_csv(directory / "figures.csv", rows)
    (directory / "figures.json").write_text(
        json.dumps(_json_document(result, info), indent=2, allow_nan=False) + "\n",
        encoding="utf-8",
    )
    with (directory / "photos.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(("photo", "source"))
        writer.writerows(info.sources)
    _plot_tradeoff(result, directory / "tradeoff.png")
    _plot_distributions(result, directory / "distributions.png")
    _plot_examples(result, directory / "examples.png")
    page = directory / "index.html"
    page.write_text(_html(result, info), encoding="utf-8")
    return page


# --- figures as rows ------------------------------------------------------------------------------


def _value(value: Any) -> Any:
    """JSON-safe value: NaN becomes None, numpy scalars become Python numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _csv_text(value: Any) -> str:
    value = _value(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def image_figures(record: ImageRecord) -> dict[str, Any]:
    figures: dict[str, Any] = {name: getattr(record, name) for name in IMAGE_FIGURES}
    for attack in (*ATTACKS, FUSED):
        figures[f"rank_{attack}"] = record.rank.get(attack, math.nan)
        figures[f"top1_{attack}"] = record.top1.get(attack, math.nan)
        figures[f"top5_{attack}"] = record.top5.get(attack, math.nan)
    return figures


def method_figures(result: EvaluationResult, method: str) -> dict[str, Any]:
    """Every aggregate figure of one method, including the rejection counts and which attack
    gave the headline rate."""
    figures: dict[str, Any] = dict(result.summary[method])
    figures["strongest_attack_top1"] = strongest_attack(result.summary[method], "top1") or ""
    figures["strongest_attack_top5"] = strongest_attack(result.summary[method], "top5") or ""
    for reason, count in result.rejections[method].items():
        figures[f"rejected_{reason}"] = count
    for reason, count in result.flags[method].items():
        figures[f"flagged_{reason}"] = count
    return figures


def figure_rows(result: EvaluationResult) -> list[dict[str, str]]:
    """Every figure as (scope, method, photo, figure, value) rows, as written to figures.csv."""
    rows: list[dict[str, str]] = []

    def add(scope: str, method: str, photo: str, figures: dict[str, Any]) -> None:
        for name, value in figures.items():
            rows.append(
                {
                    "scope": scope,
                    "method": method,
                    "photo": photo,
                    "figure": name,
                    "value": _csv_text(value),
                }
            )

    add("run", "", "", result.overall)
    for method in result.methods:
        add("method", method.name, "", method_figures(result, method.name))
    for photo in result.photos:
        add("photo", "", photo.photo, {name: getattr(photo, name) for name in PHOTO_FIGURES})
    for record in result.images:
        add("image", record.method, record.photo, image_figures(record))
    return rows


def _write_csv(path: Path, rows: Iterable[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _clean(mapping: dict[str, Any]) -> dict[str, Any]:
    return {key: _value(value) for key, value in mapping.items()}


def _json_document(result: EvaluationResult, info: RunInfo) -> dict[str, Any]:
    settings = result.settings
    return {
        "schema": SCHEMA,
        "created": info.created,
        "command": info.command,
        "photos_folder": info.photos,
        "masks_folder": info.masks,
        "config": info.config,
        "models": info.models,
        "test_model": any(m.test_model for m in result.methods),
        "key_fingerprint": info.key_fingerprint,
        "versions": info.versions,
        "notes": info.notes,
        "gate": {"description": result.judge, "threshold": result.gate_threshold},
        "evaluation_settings": {
            "working_side": settings.working_side,
            "examples": settings.examples,
            "attack": vars(settings.attack),
            "attacks": [*ATTACKS, FUSED],
        },
        "run": _clean(result.overall),
        "methods": [
            {
                "name": m.name,
                "kind": m.kind,
                "params": m.params,
                "test_model": m.test_model,
                "figures": _clean(method_figures(result, m.name)),
            }
            for m in result.methods
        ],
        "photos": [
            {"photo": p.photo, **_clean({n: getattr(p, n) for n in PHOTO_FIGURES})}
            for p in result.photos
        ],
        "images": [
            {"photo": r.photo, "method": r.method, **_clean(image_figures(r))}
            for r in result.images
        ],
    }


# --- charts -------------------------------------------------------------------------------------


#: Colour families: blues for blur, greens for pixelation, darker = stronger; reds for the edit.
_FAMILIES = {"gaussian_blur": "Blues", "pixelation": "Greens", None: "autumn"}
_MARKERS = {"none": "D", "gaussian_blur": "o", "pixelation": "s", None: "*"}


def _styles(result: EvaluationResult) -> dict[str, tuple[Any, str]]:
    """(colour, marker) per method, so that a reader tells the families apart at a glance."""
    from matplotlib import colormaps

    groups: dict[Any, list[str]] = {}
    for m in result.methods:
        groups.setdefault(m.params.get("baseline"), []).append(m.name)
    styles: dict[str, tuple[Any, str]] = {}
    for family, names in groups.items():
        if family == "none":
            for name in names:
                styles[name] = ("black", _MARKERS["none"])
            continue
        cmap = colormaps[_FAMILIES.get(family, "autumn")]
        for i, name in enumerate(names):
            shade = 0.45 + 0.5 * (i + 1) / len(names) if family else 0.8 * i / max(1, len(names))
            styles[name] = (cmap(shade), _MARKERS.get(family, "*"))
    return styles


def _colours(result: EvaluationResult) -> dict[str, Any]:
    return {name: colour for name, (colour, _) in _styles(result).items()}


def _plot_tradeoff(result: EvaluationResult, path: Path) -> None:
    fig = Figure(figsize=(9, 5.5), dpi=110)
    ax = fig.subplots()
    styles = _styles(result)
    n = result.overall.get("photos", math.nan)
    for method in result.methods:
        s = result.summary[method.name]
        x, y = s["iou_stability_median"], s["reid_top1"]
        if math.isnan(x) or math.isnan(y):
            continue
        colour, marker = styles[method.name]
        size = 220 if method.kind != BASELINE else 70
        ax.errorbar(
            x,
            y,
            xerr=[[max(0.0, x - s["iou_stability_q25"])], [max(0.0, s["iou_stability_q75"] - x)]],
            yerr=[[max(0.0, y - s["reid_top1_ci_low"])], [max(0.0, s["reid_top1_ci_high"] - y)]],
            fmt="none",
            ecolor=colour,
            alpha=0.45,
            lw=1,
        )
        label = method.name + (" (test model)" if method.test_model else "")
        ax.scatter([x], [y], s=size, marker=marker, color=colour, label=label, zorder=3,
                   edgecolors="black", linewidths=0.4)  # fmt: skip
        ax.scatter([x], [s["reid_top5"]], s=size / 3, marker=marker, facecolors="none",
                   edgecolors=colour, zorder=3)  # fmt: skip
    if not math.isnan(n) and n > 0:
        ax.axhline(1 / n, color="grey", ls=":", lw=1, label=f"chance top-1 (1/{int(n)})")
        ax.axhline(min(5, n) / n, color="grey", ls="--", lw=0.8, label="chance top-5")
    if result.gate_threshold:
        ax.axvline(
            result.gate_threshold, color="firebrick", ls="--", lw=0.8, label="gate threshold"
        )
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("lesion IoU stability (median; bars: quartiles)  → pathology kept")
    ax.set_ylabel("re-identified at top-1, strongest attack\n(bars: 95 % CI; hollow: top-5)")
    title = "Privacy against fidelity: ideal is bottom right"
    if any(m.test_model for m in result.methods):
        title += "\nTEST MODEL: its figures mean nothing clinically"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path)


def _finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def _plot_distributions(result: EvaluationResult, path: Path) -> None:
    fig = Figure(figsize=(12, 8.5), dpi=100)
    axes = fig.subplots(2, 2)
    colours = _colours(result)
    names = [m.name for m in result.methods]
    per = {name: result.records(name) for name in names}

    def hist(ax: Any, attr: str, bins: np.ndarray, title: str) -> None:
        for name in names:
            values = _finite(getattr(r, attr) for r in per[name])
            if values:
                ax.hist(values, bins=bins, histtype="step", lw=1.5, color=colours[name], label=name)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("photographs")
        ax.grid(alpha=0.3)

    hist(axes[0, 0], "iou_stability", np.linspace(0, 1, 21), "lesion IoU stability")
    axes[0, 0].legend(fontsize=7)
    top = max([1.0, *(_finite(r.delta_e00 for r in result.images))])
    hist(axes[0, 1], "delta_e00", np.linspace(0, top, 21), "lesion colour change ΔE00")

    ax = axes[1, 0]
    positions = np.arange(len(names))
    for offset, attr, hatch in ((-0.18, "ssim_lesion", ""), (0.18, "ssim_rest", "//")):
        data = [_finite(getattr(r, attr) for r in per[name]) or [math.nan] for name in names]
        parts = ax.boxplot(
            data, positions=positions + offset, widths=0.3, patch_artist=True, showfliers=False
        )
        for patch, name in zip(parts["boxes"], names, strict=True):
            patch.set_facecolor(colours[name])
            patch.set_alpha(0.6)
            patch.set_hatch(hatch)
    ax.set_xticks(positions, names, rotation=30, ha="right", fontsize=8)
    ax.set_title("SSIM: lesion (plain) vs elsewhere (hatched)", fontsize=10)
    ax.grid(alpha=0.3)

    ax = axes[1, 1]
    data = [_finite(r.rank.get(FUSED, math.nan) for r in per[name]) or [math.nan] for name in names]
    parts = ax.boxplot(data, positions=positions, widths=0.5, patch_artist=True, showfliers=True)
    for patch, name in zip(parts["boxes"], names, strict=True):
        patch.set_facecolor(colours[name])
        patch.set_alpha(0.6)
    n = result.overall.get("photos", math.nan)
    if not math.isnan(n):
        ax.axhline((n + 1) / 2, color="grey", ls=":", lw=1, label="chance (mean rank)")
        ax.legend(fontsize=7)
    ax.set_xticks(positions, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("rank of the true original (1 = found)")
    ax.set_title("linkage attack (fused): rank of the true original", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def _plot_examples(result: EvaluationResult, path: Path) -> None:
    panels = result.examples
    names = [m.name for m in result.methods]
    cols = 1 + len(names)
    rows = max(1, len(panels))
    fig = Figure(figsize=(1.9 * cols, 1.9 * rows + 0.5), dpi=100)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.ravel():
        ax.set_axis_off()
    if not panels:
        axes[0, 0].text(0, 0.5, "no example panels (--examples 0)", fontsize=9)
    for r, panel in enumerate(panels):
        ax = axes[r, 0]
        ax.imshow(panel.original)
        _contour(ax, panel.mask_original, "cyan")
        if panel.expert_mask is not None:
            _contour(ax, panel.expert_mask, "white", style="--")
        ax.set_title(f"{panel.photo} original", fontsize=7)
        for c, name in enumerate(names, start=1):
            ax = axes[r, c]
            if name not in panel.edited:
                ax.text(0.1, 0.5, "error", fontsize=8)
                continue
            ax.imshow(panel.edited[name])
            _contour(ax, panel.mask_original, "cyan")
            _contour(ax, panel.mask_edited[name], "yellow")
            ax.set_title(name, fontsize=7)
    fig.suptitle(
        "cyan: gate mask of the original; yellow: of the output; white dashed: expert mask",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path)


def _contour(ax: Any, mask: np.ndarray, colour: str, style: str = "-") -> None:
    if mask.any() and not mask.all():
        ax.contour(
            mask.astype(float), levels=[0.5], colors=colour, linewidths=0.8, linestyles=style
        )


# --- the page -----------------------------------------------------------------------------------


def _format(value: Any, kind: str) -> str:
    value = _value(value)
    if value is None:
        return "–"
    if kind == "pct":
        return f"{100 * value:.1f} %"
    if kind == "sec":
        return f"{value:.3g}"
    return f"{value:.3f}"


def _cell(method: str, figure: str, value: Any, kind: str) -> str:
    return (
        f'<td data-method="{html.escape(method)}" data-figure="{figure}" '
        f'data-value="{html.escape(_csv_text(value))}">{_format(value, kind)}</td>'
    )


def reading(result: EvaluationResult) -> list[str]:
    """One plain sentence per method: where it sits on the trade-off plot."""
    out = []
    for m in result.methods:
        s = result.summary[m.name]
        attack = strongest_attack(s) or "n/a"
        out.append(
            f"{m.name}: re-identified {_format(s['reid_top1'], 'pct')} at top-1 "
            f"(strongest attack: {attack}; chance {_format(s['chance_top1'], 'pct')}), "
            f"lesion IoU stability {_format(s['iou_stability_median'], 'num')}, "
            f"gate pass {_format(s['gate_pass_rate'], 'pct')}, "
            f"lesion ΔE00 {_format(s['delta_e00_median'], 'num')}."
        )
    return out


def _html(result: EvaluationResult, info: RunInfo) -> str:
    esc = html.escape
    test_model = any(m.test_model for m in result.methods)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>deid-gateway evaluation report</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #ccc;"
        "padding:3px 6px;text-align:right}th{background:#f3f3f3}td.name{text-align:left}"
        ".warning{background:#fde2e2;border:2px solid #c00;padding:0.6em}"
        ".note{background:#fff6d6;padding:0.6em}pre{background:#f7f7f7;padding:0.5em;"
        "overflow-x:auto;font-size:0.8em}img{max-width:100%}</style></head><body>",
        "<h1>Photograph de-identification: privacy and clinical fidelity</h1>",
    ]
    if test_model:
        parts.append(f'<p class="warning" id="test-model-warning">{esc(TEST_MODEL_WARNING)}</p>')
    parts.append(f'<p class="note">{esc(SENSITIVE_NOTE)}</p>')
    o = result.overall
    models = "; ".join(
        f"{name}: {esc(json.dumps(identity, sort_keys=True))}"
        for name, identity in info.models.items()
    )
    parts += [
        "<h2>Run</h2><ul>",
        f"<li>created {esc(info.created)}; photographs: {int(o['photos'])} from "
        f"<code>{esc(info.photos)}</code>; with expert masks: {int(o['photos_with_expert_mask'])}"
        + (f" from <code>{esc(info.masks)}</code>" if info.masks else "")
        + "</li>",
        f"<li>lesion gate: {esc(result.judge)}</li>",
        f"<li>model: {models or 'none (baselines only)'}</li>",
        f"<li>project key fingerprint: {esc(info.key_fingerprint or 'none')}</li>",
        f"<li>versions: {esc(', '.join(f'{k} {v}' for k, v in info.versions.items()))}</li>",
    ]
    parts += [f"<li>{esc(note)}</li>" for note in info.notes]
    parts.append("</ul>")

    parts += [
        "<h2>Trade-off</h2>",
        '<p><img src="tradeoff.png" alt="re-identification rate against lesion IoU stability"></p>',
        "<p>Each method is one point: right means the lesion mask survives, down means the "
        "linkage attack fails. The classic baselines span the line from no transform (top right) "
        "to heavy blur and pixelation; a useful de-identification sits below and to the right "
        "of them.</p><ul>",
        *(f"<li>{esc(line)}</li>" for line in reading(result)),
        "</ul>",
        "<h2>Figures per method</h2>",
        '<table id="summary"><tr><th>method</th><th>kind</th>',
        *(f"<th>{esc(heading)}</th>" for _, heading, _ in SUMMARY_COLUMNS),
        "<th>strongest attack</th><th>rejections</th><th>passed with a flag</th></tr>",
    ]
    for m in result.methods:
        s = result.summary[m.name]
        cells = "".join(_cell(m.name, fig, s[fig], kind) for fig, _, kind in SUMMARY_COLUMNS)
        rejections = ", ".join(f"{k}: {v}" for k, v in result.rejections[m.name].items())
        flags = ", ".join(f"{k}: {v}" for k, v in result.flags[m.name].items())
        parts.append(
            f'<tr><td class="name">{esc(m.name)}</td><td class="name">{esc(m.kind)}</td>{cells}'
            f"<td>{esc(strongest_attack(s) or '–')}</td><td>{esc(rejections or '–')}</td>"
            f"<td>{esc(flags or '–')}</td></tr>"
        )
    parts += [
        "</table>",
        "<h2>Linkage attack per descriptor (top-1 / top-5)</h2>",
        '<table id="attacks"><tr><th>method</th>',
        *(f"<th>{a} top-1</th><th>{a} top-5</th>" for a in (*ATTACKS, FUSED)),
        "</tr>",
    ]
    for m in result.methods:
        s = result.summary[m.name]
        cells = "".join(
            _cell(m.name, f"reid_{k}_{a}", s[f"reid_{k}_{a}"], "pct")
            for a in (*ATTACKS, FUSED)
            for k in ("top1", "top5")
        )
        parts.append(f'<tr><td class="name">{esc(m.name)}</td>{cells}</tr>')
    parts += [
        "</table>",
        "<p>Threat model: the attacker holds every original photograph (the strongest case, e.g. "
        "the same photographs kept elsewhere) and tries to say which one each output was made "
        "from. "
        "For each output the attacker ranks all originals by similarity (descriptors without "
        "trained weights: ORB keypoints, CIELAB colour histogram, LBP and GLCM texture, a colour "
        "thumbnail; fused: mean of robust z-scores). The headline is the strongest of these "
        "attacks.</p>",
        "<h2>The lesion mask itself</h2><ul>",
        f"<li>lesion found in {_format(o['lesion_found_fraction'], 'pct')} of originals</li>",
        f'<li>gate mask of the original vs expert mask: median IoU <span data-figure="'
        f'mask_vs_expert_iou_median" data-value="{_csv_text(o["mask_vs_expert_iou_median"])}">'
        f"{_format(o['mask_vs_expert_iou_median'], 'num')}</span> (an IoU stability between two "
        "masks that both miss the lesion proves nothing)</li></ul>",
        "<h2>Distributions</h2>",
        '<p><img src="distributions.png" alt="histograms and box plots of per-image figures"></p>',
        "<h2>Example panels</h2>",
        '<p><img src="examples.png" alt="example panels"></p>',
        "<h2>Data</h2><ul>",
        '<li><a href="figures.csv">figures.csv</a>: every figure (run, method, photo, image)</li>',
        '<li><a href="figures.json">figures.json</a>: the same with settings and versions</li>',
        '<li><a href="photos.csv">photos.csv</a>: photo ids and their files</li></ul>',
        "<h2>Exact settings</h2>",
        f"<pre>{esc(json.dumps(info.config, indent=2, sort_keys=True, default=str))}</pre>",
        f"<pre>{esc(' '.join(info.command))}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
