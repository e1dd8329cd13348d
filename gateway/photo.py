"""Photographs on routes: the `flowedit` pixel step, and the engine that does its pixel work.

The work of one photograph is split where the data may cross a machine boundary:

1. `FlowEditStep.prepare` (gateway): decode the frames to RGB and derive the noise seeds from the
   project key, the original SOP Instance UID and the route: a `PixelJob`, pixels only.
2. `PhotoEngine.run` (gateway process with `executor: local`, or a `deid-gateway worker` with
   `executor: celery`): FlowEdit identity edit, then the lesion gate on original vs edited (the
   healthy twins of both in one batch), QA panel on rejection: a `PixelResult`, pixels only.
3. `FlowEditStep.complete` (gateway): an accepted edit becomes a derived instance of the
   de-identified data set (SOP Instance UID from the keyed mapping, Recognizable Visual Features
   NO, Clean Recognizable Visual Features recorded, TEST MODEL said when a test model made it); a
   rejection becomes a quarantine entry with the gate's reason, figures and panel.

Anything else (undecodable pixels, a failing model, a result that does not fit) is a
`PermanentError`, which the pipeline quarantines as `pixel_step_failed`: a photograph on a route
that asks for the edit is never forwarded with pixels that were not edited and checked.

The engine loads each model directory once (routes naming the same directory, device and dtype
share it), builds every FlowEditor of every route (identity and twin prompts) and only then
releases the text encoders, which cannot encode new prompts afterwards.
"""

from __future__ import annotations

import io
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom import Dataset

from deid_core.errors import ConfigError, DeidGatewayError, PermanentError, RetryableError
from deid_core.model_dir import TEST_MODEL_NOTICE, verify_model_dir
from deid_core.options import ProfileOption
from gateway.config import FlowEditRouteConfig, GatewayConfig, RouteTarget
from gateway.events import QuarantineReason
from gateway.logs import get_logger
from gateway.pixel_jobs import PixelJob, PixelResult
from gateway.pixels import PixelAccepted, PixelContext, PixelOutcome, PixelRejected

if TYPE_CHECKING:
    from deid_core.flowedit import FlowEditor
    from deid_core.lesion import GateResult, LesionGate
    from deid_core.models import RectifiedFlowModel

LOG = get_logger("gateway.photo")

#: Gate outcomes that are quarantine reasons.
_REJECTIONS = {
    QuarantineReason.LESION_VANISHED.value: QuarantineReason.LESION_VANISHED,
    QuarantineReason.LESION_IOU_BELOW_THRESHOLD.value: QuarantineReason.LESION_IOU_BELOW_THRESHOLD,
    QuarantineReason.LESION_MASK_UNRELIABLE.value: QuarantineReason.LESION_MASK_UNRELIABLE,
}

#: Written into De-identification Method beside the option when a test model made the pixels
#: (the line must fit LO's 64 characters).
TEST_MODEL_NOTE = "TEST MODEL"


def flowedit_routes(cfg: GatewayConfig) -> dict[str, tuple[str, FlowEditRouteConfig]]:
    """Route name -> (where in the YAML, settings) of every route whose pixel step is flowedit
    (the default route is named "default", as the router names it)."""
    targets: list[tuple[str, str, RouteTarget]] = [
        (r.name, f"routes[{i}]", r) for i, r in enumerate(cfg.routes)
    ]
    if isinstance(cfg.default_route, RouteTarget):
        targets.append(("default", "default_route", cfg.default_route))
    return {
        name: (where, target.flowedit)
        for name, where, target in targets
        if target.pixels == "flowedit" and target.flowedit is not None
    }


def verify_models(cfg: GatewayConfig) -> None:
    """Every flowedit route's model directory is complete (no torch: a second, not a minute);
    one ConfigError naming each route and each missing piece."""
    problems = []
    for _name, (where, settings) in flowedit_routes(cfg).items():
        try:
            verify_model_dir(settings.model)
        except ConfigError as exc:
            problems.append(f"{where}.flowedit.model: {exc}")
    if problems:
        raise ConfigError("\n".join(problems))


@dataclass
class PhotoRoute:
    """One flowedit route, ready to run: its model, identity editor and lesion gate."""

    name: str
    settings: FlowEditRouteConfig
    model: RectifiedFlowModel
    editor: FlowEditor
    gate: LesionGate

    def provenance(self) -> str:
        method = self.gate.params.method.value
        return f"{self.editor.derivation_description()}; lesion gate {method}"


def _torch_dtype(name: str) -> Any:
    import torch

    return None if name == "auto" else getattr(torch, name)


def _params(family: str, overrides: Mapping[str, Any], where: str, **extra: Any) -> Any:
    from deid_core.flowedit import FlowEditParams

    try:
        return FlowEditParams.defaults_for(family, **{**dict(overrides), **extra})
    except TypeError as exc:
        raise ConfigError(f"{where}: unknown FlowEdit setting ({exc})") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


class PhotoEngine:
    """The pixel work of every flowedit route of a configuration: models loaded once, editors and
    gates built at start-up. Not thread-safe: one caller at a time (an executor's thread, or the
    task of a worker process)."""

    def __init__(self, routes: Mapping[str, PhotoRoute]) -> None:
        self.routes = dict(routes)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    @classmethod
    def from_config(cls, cfg: GatewayConfig, *, threads: int | None = None) -> PhotoEngine:
        """Verify every model directory, load each once, build every editor, then release the
        text encoders of models whose routes all allow it."""
        from deid_core.flowedit import FlowEditor
        from deid_core.models import load_model

        verify_models(cfg)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        routes = flowedit_routes(cfg)
        models: dict[tuple[str, str, str], RectifiedFlowModel] = {}
        built: dict[str, PhotoRoute] = {}
        for name, (where, s) in routes.items():
            ident = (str(Path(s.model).resolve()), s.device, s.dtype)
            if ident not in models:
                started = time.perf_counter()
                try:
                    models[ident] = load_model(s.model, s.device, _torch_dtype(s.dtype))
                except ConfigError as exc:
                    raise ConfigError(f"{where}.flowedit.model: {exc}") from None
                LOG.info(
                    "model_loaded",
                    route=name,
                    model=models[ident].identity(),
                    device=s.device,
                    seconds=round(time.perf_counter() - started, 3),
                    test_model=models[ident].is_test_model,
                )
            model = models[ident]
            params = _params(model.family, s.params, f"{where}.flowedit.params")
            editor = FlowEditor(model, params, s.source_prompt, s.target_prompt)
            gate = _lesion_gate(model, s, where)
            built[name] = PhotoRoute(name, s, model, editor, gate)
        # Only now, with every prompt of every route encoded, may the encoders go.
        for model in models.values():
            users = [r for r in built.values() if r.model is model]
            if all(r.settings.release_text_encoders for r in users):
                model.release_text_encoders()
                LOG.info("text_encoders_released", model=model.identity(), routes=len(users))
        return cls(built)

    @property
    def is_test_model(self) -> bool:
        return any(r.model.is_test_model for r in self.routes.values())

    def run(self, jobs: Sequence[PixelJob]) -> list[PixelResult]:
        """Results in the order of `jobs`. Jobs of one route and frame size are edited in one
        call (the editor batches them by its batch_size); a failure fails only its group."""
        results: dict[int, PixelResult] = {}
        groups: dict[tuple[str, tuple[int, ...]], list[int]] = {}
        for i, job in enumerate(jobs):
            if job.route not in self.routes:
                results[i] = _failed(job, "UnknownRoute", self.worker)
                continue
            groups.setdefault((job.route, job.frames.shape[1:]), []).append(i)
        for (route_name, _), members in groups.items():
            group = [jobs[i] for i in members]
            try:
                done = self._run_group(self.routes[route_name], group)
                for i, result in zip(members, done, strict=True):
                    results[i] = result
            except Exception as exc:
                retryable = isinstance(exc, RetryableError) or _is_out_of_memory(exc)
                LOG.error(
                    "pixel_work_failed",
                    route=route_name,
                    jobs=len(group),
                    error=type(exc).__name__,
                    retryable=retryable,
                )
                for i in members:
                    results[i] = _failed(jobs[i], type(exc).__name__, self.worker, retryable)
        return [results[i] for i in range(len(jobs))]

    def _run_group(self, route: PhotoRoute, jobs: Sequence[PixelJob]) -> list[PixelResult]:
        frames = np.concatenate([j.frames for j in jobs])
        seeds = [s for j in jobs for s in j.seeds]
        twin_seeds = [s for j in jobs for s in j.twin_seeds]
        started = time.perf_counter()
        edited = route.editor.edit(frames, seeds)
        edit_done = time.perf_counter()
        decisions = [
            route.gate.check(frames[i], edited[i], twin_seeds[i]) for i in range(len(frames))
        ]
        gate_done = time.perf_counter()
        per_frame_edit = (edit_done - started) / len(frames)
        per_frame_gate = (gate_done - edit_done) / len(frames)
        provenance = route.provenance()
        test_model = route.model.is_test_model
        out = []
        at = 0
        for job in jobs:
            n = job.frames.shape[0]
            mine = decisions[at : at + n]
            job_edited = edited[at : at + n]
            at += n
            common: dict[str, Any] = {
                "job_id": job.job_id,
                "route": job.route,
                "provenance": provenance,
                "test_model": test_model,
                "worker": self.worker,
                "edit_seconds": per_frame_edit * n,
                "gate_seconds": per_frame_gate * n,
            }
            failing = [(k, d) for k, d in enumerate(mine) if not d.accepted]
            if not failing:
                worst = min(mine, key=lambda d: 1.0 if d.iou is None else d.iou)
                out.append(
                    PixelResult(
                        status="accepted",
                        frames=job_edited,
                        reason=worst.outcome.value,
                        details={**worst.details(), "frames": n},
                        **common,
                    )
                )
                continue
            k, decision = failing[0]
            out.append(
                PixelResult(
                    status="rejected",
                    # the edit too: a reviewer may waive the gate (PixelContext.waive_gate)
                    frames=job_edited,
                    reason=decision.outcome.value,
                    details={**decision.details(), "frames": n, "frame": k},
                    artifacts=_artifacts(job.frames[k], job_edited[k], decision, test_model),
                    **common,
                )
            )
        return out


def _lesion_gate(model: RectifiedFlowModel, s: FlowEditRouteConfig, where: str) -> LesionGate:
    """The route's lesion gate (deid_core.lesion); with method twin, its healthy-twin FlowEditor
    on the route's model (built now, before the text encoders go)."""
    from deid_core.lesion import (
        DEFAULT_HEALTHY_PROMPT,
        DEFAULT_LESION_PROMPT,
        GateMethod,
        LesionGate,
        LesionGateParams,
        flowedit_twins,
    )

    g = s.gate
    try:
        params = LesionGateParams(
            method=GateMethod(g.method), iou_threshold=g.threshold, twin_long_side=g.twin_max_side
        )
    except ValueError as exc:
        raise ConfigError(f"{where}.flowedit.gate: {exc}") from None
    twin = None
    if g.method == "twin":
        _params(model.family, g.twin_params, f"{where}.flowedit.gate.twin_params")  # validate
        twin = flowedit_twins(
            model,
            g.twin_source_prompt or DEFAULT_LESION_PROMPT,
            g.twin_target_prompt or DEFAULT_HEALTHY_PROMPT,
            g.twin_max_side,
            **g.twin_params,
        )
    return LesionGate(params, twin)


def _artifacts(
    original: np.ndarray, edited: np.ndarray, decision: GateResult, test_model: bool
) -> dict[str, bytes]:
    """What a rejected photograph's quarantine entry keeps for a reviewer: the QA panel, and the
    original and the edit as PNG (the names the review station looks for)."""
    from deid_core.qa_panel import render_panel

    note = TEST_MODEL_NOTICE if test_model else None
    return {
        "panel.png": render_panel(original, edited, decision, note=note),
        "original.png": _png(original),
        "deidentified.png": _png(edited),
    }


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _failed(job: PixelJob, kind: str, worker: str, retryable: bool = False) -> PixelResult:
    return PixelResult(
        job_id=job.job_id,
        route=job.route,
        status="failed",
        reason=kind,
        retryable=retryable,
        worker=worker,
    )


def _is_out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ in ("OutOfMemoryError", "AcceleratorError")


# --- the pixel step on the gateway ---------------------------------------------------------------


class PixelStepFailed(PermanentError):
    """The photograph's pixel work failed; it goes to quarantine (pixel_step_failed)."""


def record_visual_features_cleaned(ds: Dataset, test_model: bool) -> None:
    """Recognizable Visual Features NO, and Clean Recognizable Visual Features in De-identification
    Method (Code Sequence); a TEST MODEL note when a test model made the pixels."""
    from deid_core.deidentify import record_method

    note = TEST_MODEL_NOTE if test_model else None
    record_method(ds, ProfileOption.CLEAN_RECOGNIZABLE_VISUAL_FEATURES, note)


class FlowEditStep:
    """The `flowedit` pixel step. `engine` does the pixel work in this process (executor local);
    without one (executor celery) `process` is unavailable and the pipeline sends `prepare`'s
    jobs to the worker pool."""

    name = "flowedit"
    #: the pipeline runs this step as prepare -> executor -> complete
    asynchronous = True

    def __init__(self, cfg: GatewayConfig, engine: PhotoEngine | None) -> None:
        self.routes = {name: s for name, (_, s) in flowedit_routes(cfg).items()}
        self.engine = engine

    def prepare(
        self, original: Dataset, context: PixelContext, job_id: str, *, attempt: int = 1
    ) -> PixelJob:
        """The pixel-only job of one instance. Raises PermanentError (pixel data that is not a
        decodable photograph, no seed source)."""
        from dicom_io.pixels import read_frames_rgb

        if context.route not in self.routes:
            raise PixelStepFailed(f"route {context.route!r} has no flowedit settings")
        if context.derive_seed is None:
            raise PixelStepFailed("the flowedit step needs seeds derived from the project key")
        frames = read_frames_rgb(original)
        n = frames.shape[0]
        return PixelJob(
            job_id=job_id,
            route=context.route,
            frames=frames,
            seeds=tuple(context.derive_seed("identity", i) for i in range(n)),
            twin_seeds=tuple(context.derive_seed("twin", i) for i in range(n)),
            attempt=attempt,
        )

    def complete(
        self,
        original: Dataset,
        deidentified: Dataset,
        result: PixelResult,
        context: PixelContext,
    ) -> PixelOutcome:
        """The outcome of a finished job: a derived instance, or a rejection for quarantine.
        Raises PixelStepFailed for a failed job or a result that does not fit the instance."""
        from dicom_io.pixels import write_derived_instance

        if result.route != context.route:
            raise PixelStepFailed("the pixel result belongs to another route")
        if result.status == "failed":
            raise PixelStepFailed(f"the pixel work failed ({result.reason or 'unknown error'})")
        figures: dict[str, float | int | str] = {
            "edit_seconds": round(result.edit_seconds, 4),
            **result.details,
        }
        if result.status == "rejected":
            reason = _REJECTIONS.get(result.reason)
            if reason is None:
                raise PixelStepFailed(f"unknown lesion gate outcome {result.reason!r}")
            if not context.waive_gate:
                return PixelRejected(reason, figures, result.artifacts)
            if result.frames is None:
                raise PixelStepFailed("the gate was waived but the result carries no edit")
            figures["gate_waived"] = reason.value
        if context.derived_uid is None:
            raise PixelStepFailed("the flowedit step needs the keyed UID mapping")
        assert result.frames is not None
        uid = context.derived_uid(str(original.SOPInstanceUID), "flowedit")
        try:
            ds = write_derived_instance(
                deidentified,
                result.frames,
                uid,
                derivation_description=result.provenance,
                encoding=self.routes[context.route].encoding,
            )
        except DeidGatewayError as exc:
            raise PixelStepFailed(f"the edited photograph cannot be written: {exc}") from None
        record_visual_features_cleaned(ds, result.test_model)
        return PixelAccepted(ds, figures)

    def process(
        self, original: Dataset, deidentified: Dataset, context: PixelContext
    ) -> PixelOutcome:
        """All three parts in this process (needs the engine)."""
        if self.engine is None:
            raise PixelStepFailed("this gateway runs photographs on a worker pool, not in process")
        job = self.prepare(original, context, "in-process")
        [result] = self.engine.run([job])
        return self.complete(original, deidentified, result, context)


def build_flowedit_step(cfg: GatewayConfig) -> FlowEditStep:
    """The step for the pipeline: with `executor: local` the models load here, now (start-up);
    with `executor: celery` they load on the workers, which verify them at their own start."""
    engine = PhotoEngine.from_config(cfg) if cfg.executor.kind == "local" else None
    return FlowEditStep(cfg, engine)
