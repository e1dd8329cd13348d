"""The GPU worker pool: photographs per second with 1, 2 and 4 workers, and the gateway's own
overhead per photograph beside the model's time.

Needs RabbitMQ at 127.0.0.1:5672 (scripts/start-services.sh). Everything runs on this machine with
the tiny random model on the CPU, one torch thread per worker (workers are processes: on a machine
with C cores, more than C workers only share the cores).

1. Model time: the engine alone, in this process, one photograph at a time (edit + lesion gate).
2. Scaling: `deid-gateway worker` processes on one jobs queue, started one after another (1, then 2,
   then 4); at each size the gateway's Celery executor submits a burst of jobs and waits for every
   result. Photographs per second and the ratio to one worker.
   Then the same with a simulated device-bound model (--simulated-model-s, 0.5 s by default): the
   real worker code (Celery app, task, heartbeats, result publishing) around an engine that waits
   as a GPU-bound worker process does (its CPU idle), so the dispatch's own scaling shows apart
   from the contention of several CPU-bound workers on a few cores.
3. Gateway overhead per photograph, at the size of a real clinical photograph (--overhead-size,
   1024 px by default), with no model: (a) the pipeline around a pixel job (read the spool, decode
   the frames, keyed seeds, metadata de-identification at submission and again at completion, the
   derived instance, its encoding, the outbox and journal writes), with an executor that answers at
   once in process; (b) the trip through the broker: a job on a route whose edit returns its input
   (n_max 0), one at a time on one worker, minus the worker's own edit and gate time (MessagePack
   both ways, two broker hops with publisher confirms, persistent messages). The sum is compared
   with the real model's cost per photograph projected in issue 4 (SD3-medium on the H200: 2.22 s
   at 100 % MFU, 3.70 s at 60 %).

    python benchmarks/worker_scaling.py                    # 1, 2, 4 workers; 1024 px overhead
    python benchmarks/worker_scaling.py --workers 1 2 --jobs 16 --size 64

Prints a summary; writes JSON to --json PATH (default benchmarks/results/worker_scaling.json).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
BROKER = "amqp://guest:guest@127.0.0.1:5672//"
#: Issue 4's projection of one photograph (1024 px edit + two 512 px twins) on SD3-medium, H200.
REAL_MODEL_SECONDS = {"100% MFU": 2.22, "60% MFU": 3.70}
KEY_TEXT = "benchmark-key-" + "0" * 40


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} / {five:.2f} (1 / 5 min) on {os.cpu_count()} cores"


def _config(folder: Path, model: Path, queue: str, args: argparse.Namespace) -> dict[str, Any]:
    from tests.support.photos import photo_route

    edit = photo_route(
        model,
        ["archive"],
        name="edit",
        params={"num_steps": args.steps, "n_max": args.n_max, "batch_size": 1},
    )
    keep = photo_route(model, ["archive"], name="keep", params={"n_max": 0})
    key_file = folder / "project.key"
    key_file.write_text(KEY_TEXT)
    return {
        "project": {"key": {"file": str(key_file)}},
        "destinations": {"archive": {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": 104}},
        "routes": [edit, keep],
        "executor": {
            "kind": "celery",
            "broker_url": BROKER,
            "queue": queue,
            "result_queue": queue + ".results",
            "heartbeat_interval_s": 1.0,
            "result_timeout_s": 3600,
        },
        "logging": {"level": "warning"},
        "storage": {
            "spool_dir": str(folder / "spool"),
            "outbox_dir": str(folder / "outbox"),
            "quarantine_dir": str(folder / "quarantine"),
            "journal": str(folder / "journal.sqlite"),
            "min_free_bytes": 0,
            "high_water_percent": 100,
        },
    }


def _job(route: str, size: int, i: int) -> Any:
    from gateway.pixel_jobs import PixelJob
    from tests.support.photos import skin_image

    frames = skin_image(size, i, lesion=i % 3 == 0)[np.newaxis]
    return PixelJob(f"bench-{route}-{i}-{secrets.token_hex(4)}", route, frames, (i,), (i + 1,))


# --- 1. the model alone --------------------------------------------------------------------------


def model_time(cfg: Any, size: int, repeats: int) -> dict[str, float]:
    from gateway.photo import PhotoEngine

    engine = PhotoEngine.from_config(cfg, threads=1)
    engine.run([_job("edit", size, 0)])  # warm-up: first calls are several times slower
    seconds = []
    for i in range(repeats):
        started = time.perf_counter()
        [result] = engine.run([_job("edit", size, i + 1)])
        seconds.append(time.perf_counter() - started)
        assert result.status != "failed", result.reason
    return {"median_s": statistics.median(seconds), "min_s": min(seconds)}


# --- 2. the pool ---------------------------------------------------------------------------------


class SimulatedEngine:
    """A worker engine whose "model" waits `seconds` per frame, CPU idle, like a process waiting
    on its GPU, then returns the photograph unchanged as accepted."""

    is_test_model = True

    def __init__(self, routes: list[str], seconds: float) -> None:
        self.routes = {name: None for name in routes}
        self.seconds = seconds

    def run(self, jobs: list[Any]) -> list[Any]:
        from gateway.pixel_jobs import PixelResult

        out = []
        for job in jobs:
            time.sleep(self.seconds * job.frames.shape[0])
            out.append(
                PixelResult(
                    job_id=job.job_id,
                    route=job.route,
                    status="accepted",
                    frames=job.frames,
                    reason="accepted",
                    provenance="simulated device-bound model (benchmark)",
                    test_model=True,
                    edit_seconds=self.seconds * job.frames.shape[0],
                )
            )
        return out


def run_simulated_worker(config: Path, name: str, seconds: float) -> None:
    """The worker process of the simulated runs (started by this script)."""
    from gateway.config import load_config
    from gateway.workerpool import serve_jobs

    cfg = load_config(config)
    engine = SimulatedEngine([r.name for r in cfg.routes], seconds)
    serve_jobs(cfg, engine, name=name)  # type: ignore[arg-type]


class Pool:
    """Worker processes and the gateway-side executor that feeds them."""

    def __init__(
        self, folder: Path, config_path: Path, cfg: Any, simulated_s: float | None = None
    ) -> None:
        from gateway.workerpool import CeleryExecutor

        self.folder = folder
        self.simulated_s = simulated_s
        self.config_path = config_path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.executor = CeleryExecutor(cfg.executor, cfg.executor.result_queue)
        self.results: dict[str, Any] = {}
        self.done = threading.Condition()
        self.executor.start(self._on_result)

    def _on_result(self, result: Any) -> None:
        with self.done:
            self.results[result.job_id] = (time.perf_counter(), result)
            self.done.notify_all()

    def grow(self, count: int) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        while len(self.procs) < count:
            name = f"bench-w{len(self.procs) + 1}"
            log = (self.folder / f"{name}.log").open("ab")
            if self.simulated_s is None:
                command = [sys.executable, "-m", "gateway", "worker", "--threads", "1"]
            else:
                command = [sys.executable, __file__, "--simulated-worker", str(self.simulated_s)]
            self.procs.append(
                subprocess.Popen(
                    [*command, "--config", str(self.config_path), "--name", name],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
        deadline = time.monotonic() + 600
        while self.executor.heartbeats.workers_alive() < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.executor.heartbeats.workers_alive()} workers up")
            time.sleep(0.5)

    def run(self, jobs: list[Any]) -> tuple[float, list[tuple[float, Any]]]:
        """Submit all, wait for all; returns (seconds, [(finished_at, result)])."""
        with self.done:
            self.results.clear()
        started = time.perf_counter()
        for job in jobs:
            self.executor.submit(job)
        with self.done:
            ok = self.done.wait_for(lambda: len(self.results) >= len(jobs), timeout=3600)
        if not ok:
            raise RuntimeError("results missing")
        return time.perf_counter() - started, list(self.results.values())

    def close(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.executor.stop(10)


def simulated_scaling(
    folder: Path, config_path: Path, cfg: Any, args: argparse.Namespace
) -> list[dict[str, Any]]:
    from tests.support.workerpool import delete_broker_objects

    seconds = args.simulated_model_s
    print(f"worker pool, simulated device-bound model ({seconds} s per photograph):", flush=True)
    pool = Pool(folder / "simulated", config_path, cfg, simulated_s=seconds)
    (folder / "simulated").mkdir(exist_ok=True)
    try:
        rows = scaling(pool, sorted(args.workers), max(args.jobs, 8 * max(args.workers)), 64)
    finally:
        pool.close()
        queue = cfg.executor.queue
        delete_broker_objects([queue], [])
    base = rows[0]["photos_per_s"]
    for row in rows:
        row["ratio_to_one"] = row["photos_per_s"] / base
        row["ideal_photos_per_s"] = row["workers"] / seconds
    print(
        "  ratios to one worker: "
        + ", ".join(f"{r['workers']}: {r['ratio_to_one']:.2f}x" for r in rows),
        flush=True,
    )
    return rows


def scaling(pool: Pool, counts: list[int], jobs: int, size: int) -> list[dict[str, Any]]:
    out = []
    for n in counts:
        pool.grow(n)
        pool.run([_job("edit", size, 10_000 + n * 100 + i) for i in range(2 * n)])  # warm-up
        seconds, done = pool.run([_job("edit", size, i) for i in range(jobs)])
        model = [r.model_seconds for _, r in done]
        out.append(
            {
                "workers": n,
                "photos": jobs,
                "seconds": seconds,
                "photos_per_s": jobs / seconds,
                "worker_model_s_median": statistics.median(model),
                "load": _load(),
            }
        )
        print(
            f"  {n} worker(s): {jobs / seconds:6.2f} photos/s ({seconds:.1f} s for {jobs}); "
            f"model time per photo on the workers {statistics.median(model):.3f} s; "
            f"load {_load()}",
            flush=True,
        )
    return out


# --- 3. the gateway's overhead -------------------------------------------------------------------


class InstantExecutor:
    """Answers every job at once, in the submitting thread, with its own pixels: the pipeline's
    cost without any model."""

    lost_on_restart = False
    probe = None
    result_timeout_s = 3600.0
    max_attempts = 3
    retry_delay_s = 1.0

    def start(self, on_result: Any) -> None:
        self.on_result = on_result
        self.pending: list[Any] = []

    def submit(self, job: Any) -> None:
        self.pending.append(job)

    def stop(self, timeout: float = 30.0) -> None:
        pass


def pipeline_overhead(folder: Path, cfg: Any, size: int, photos: int) -> dict[str, float]:
    from pydicom.uid import generate_uid

    from deid_core.keys import ProjectKey
    from gateway.events import EventBus
    from gateway.ingest import study_key
    from gateway.node import Storage
    from gateway.pipeline import Pipeline
    from gateway.pixel_jobs import PixelResult
    from tests.support.photos import photo_dataset, skin_image

    key = ProjectKey(KEY_TEXT.encode())
    paths = {
        "spool_dir": folder / "spool",
        "outbox_dir": folder / "outbox",
        "quarantine_dir": folder / "quarantine",
        "journal": folder / "journal.sqlite",
    }
    cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(update=paths)})
    storage = Storage.open(cfg)
    executor = InstantExecutor()
    pipeline = Pipeline(
        cfg,
        key,
        storage.journal,
        storage.spool,
        storage.outbox,
        storage.quarantine,
        EventBus(),
        executor=executor,
    )
    pipeline.start()
    image = skin_image(size, 1, lesion=True)
    submit_s, complete_s = [], []
    for i in range(photos + 1):
        study = generate_uid()
        ds = photo_dataset(
            image, study_uid=study, series_uid=generate_uid(), sop_uid=generate_uid(), number=1
        )
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        spooled = storage.spool.write((buf.getvalue(),))
        skey = study_key(key, study)
        storage.journal.add_received(spooled.relative_path, skey)
        started = time.perf_counter()
        pipeline.process_study(skey)
        submitted = time.perf_counter()
        [job] = executor.pending
        executor.pending.clear()
        pipeline.complete_pixel_job(
            PixelResult(
                job_id=job.job_id,
                route=job.route,
                status="accepted",
                frames=job.frames,
                reason="accepted",
                provenance="benchmark",
            )
        )
        completed = time.perf_counter()
        if i:  # the first one pays imports and caches
            submit_s.append(submitted - started)
            complete_s.append(completed - submitted)
    assert storage.journal.state_counts()["queued"] == photos + 1
    storage.close()
    return {
        "submit_ms": 1000 * statistics.median(submit_s),
        "complete_ms": 1000 * statistics.median(complete_s),
        "total_ms": 1000 * (statistics.median(submit_s) + statistics.median(complete_s)),
    }


def transport_overhead(pool: Pool, size: int, repeats: int) -> dict[str, float]:
    pool.grow(1)
    pool.run([_job("keep", size, 0)])  # warm-up
    trip, work = [], []
    for i in range(repeats):
        seconds, [(_, result)] = pool.run([_job("keep", size, i + 1)])
        trip.append(seconds)
        work.append(result.model_seconds)
    overhead = [t - w for t, w in zip(trip, work, strict=True)]
    return {
        "round_trip_ms": 1000 * statistics.median(trip),
        "worker_edit_and_gate_ms": 1000 * statistics.median(work),
        "transport_ms": 1000 * statistics.median(overhead),
    }


def wire_cost(size: int, repeats: int = 5) -> dict[str, float]:
    """MessagePack encoding and decoding of a job and of its result, both ways (CPU only)."""
    from gateway.pixel_jobs import (
        PixelResult,
        decode,
        encode,
        job_from_wire,
        job_to_wire,
        result_from_wire,
        result_to_wire,
    )

    job = _job("edit", size, 0)
    result = PixelResult(job_id=job.job_id, route="edit", status="accepted", frames=job.frames)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        job_from_wire(decode(encode(job_to_wire(job))))
        result_from_wire(decode(encode(result_to_wire(result))))
        seconds.append(time.perf_counter() - started)
    mb = len(encode(job_to_wire(job))) / 1e6
    return {"wire_ms": 1000 * statistics.median(seconds), "job_message_mb": mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--jobs", type=int, default=32, help="photographs per measurement")
    parser.add_argument("--size", type=int, default=96, help="photograph side for the scaling")
    parser.add_argument("--steps", type=int, default=12, help="FlowEdit T for the scaling")
    parser.add_argument("--n-max", type=int, default=8, help="FlowEdit n_max for the scaling")
    parser.add_argument(
        "--simulated-model-s",
        type=float,
        default=0.5,
        help="seconds per photograph of the simulated device-bound model (0: skip that run)",
    )
    parser.add_argument("--simulated-worker", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--overhead-size", type=int, default=1024)
    parser.add_argument("--overhead-photos", type=int, default=8)
    parser.add_argument(
        "--json", type=Path, default=REPO / "benchmarks" / "results" / "worker_scaling.json"
    )
    args = parser.parse_args()
    if args.simulated_worker is not None:
        run_simulated_worker(args.config, args.name, args.simulated_worker)
        return

    from deid_core.models import build_tiny_model
    from gateway.config import parse_config
    from tests.support.workerpool import broker_answers, delete_broker_objects

    if not broker_answers():
        sys.exit("RabbitMQ is not answering at 127.0.0.1:5672 (scripts/start-services.sh)")
    report: dict[str, Any] = {"machine": {"cores": os.cpu_count(), "load_at_start": _load()}}
    with tempfile.TemporaryDirectory(prefix="worker-scaling-") as tmp:
        folder = Path(tmp)
        model = build_tiny_model(folder / "tiny-sd3")
        queue = f"deidgw.bench.{os.getpid()}.{secrets.token_hex(3)}"
        data = _config(folder, model, queue, args)
        config_path = folder / "gateway.yaml"
        config_path.write_text(yaml.safe_dump(data))
        cfg = parse_config(data, "benchmark")
        print(f"machine: {os.cpu_count()} cores, load {_load()}", flush=True)

        t = model_time(cfg, args.size, repeats=8)
        report["model_alone"] = t
        print(
            f"model alone (tiny SD3, {args.size}px, T={args.steps}, n_max={args.n_max}, "
            f"1 thread): {t['median_s']:.3f} s per photograph = {1 / t['median_s']:.2f}/s",
            flush=True,
        )
        if args.simulated_model_s > 0:
            report["simulated"] = simulated_scaling(folder, config_path, cfg, args)
        pool = Pool(folder, config_path, cfg)
        try:
            print("worker pool:", flush=True)
            rows = scaling(pool, sorted(args.workers), args.jobs, args.size)
            base = rows[0]["photos_per_s"]
            for row in rows:
                row["ratio_to_one"] = row["photos_per_s"] / base
            report["scaling"] = rows
            print(
                "  ratios to one worker: "
                + ", ".join(f"{r['workers']}: {r['ratio_to_one']:.2f}x" for r in rows),
                flush=True,
            )
            # back to one worker for the transport measurement
            for proc in pool.procs[1:]:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
            pool.procs = pool.procs[:1]
            time.sleep(4)
            transport = transport_overhead(pool, args.overhead_size, repeats=5)
        finally:
            pool.close()
            delete_broker_objects([queue, queue + ".results"], [queue, f"{queue}.heartbeats"])
        pipeline = pipeline_overhead(folder / "gw", cfg, args.overhead_size, args.overhead_photos)
        wire = wire_cost(args.overhead_size)
    total = pipeline["total_ms"] + transport["transport_ms"]
    report["overhead"] = {
        "photo_px": args.overhead_size,
        "pipeline": pipeline,
        "transport": transport,
        "wire": wire,
        "gateway_cpu_ms": pipeline["total_ms"],
        "total_ms": total,
        "share_of_real_model": {k: total / (1000 * v) for k, v in REAL_MODEL_SECONDS.items()},
    }
    report["machine"]["load_at_end"] = _load()
    s = args.overhead_size
    print(f"gateway overhead per {s}x{s} photograph (no model):", flush=True)
    print(
        f"  pipeline {pipeline['total_ms']:.1f} ms (submit {pipeline['submit_ms']:.1f}, "
        f"complete {pipeline['complete_ms']:.1f})"
    )
    print(
        f"  MessagePack of job and result, both ways: {wire['wire_ms']:.1f} ms "
        f"({wire['job_message_mb']:.1f} MB job message)"
    )
    print(
        f"  broker trip {transport['transport_ms']:.1f} ms (round trip "
        f"{transport['round_trip_ms']:.1f} ms minus the worker's edit+gate "
        f"{transport['worker_edit_and_gate_ms']:.1f} ms)"
    )
    for label, seconds in REAL_MODEL_SECONDS.items():
        print(
            f"  total {total:.1f} ms = {100 * total / (1000 * seconds):.2f} % of the real model's "
            f"{seconds:.2f} s per photograph ({label}); target < 5 %"
        )
    print(f"load at end: {_load()}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
