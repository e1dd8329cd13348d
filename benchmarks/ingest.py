"""Ingest and end-to-end rates: the gateway against dcmtk's storescp and Orthanc, same files.

    sudo .venv/bin/python -m benchmarks.ingest [--count 200]

Every server runs inside one private network namespace (Orthanc and storescp cannot bind to
loopback only), the sender (dcmtk storescu, TCP_NODELAY=1, one association) in the host namespace,
so every peer is reached over the same veth. Measured:

- ingest: instances/s from storescu's start to its exit, for the gateway (durable: file + directory
  fsync + journal row before each success), storescp (writes files, no fsync) and Orthanc;
- end to end: storescu → gateway → Orthanc until Orthanc holds every instance, against
  storescu → Orthanc directly.

Two instance kinds: CT_small (39 KB) and a 256×256 RGB secondary capture (~197 KB). Prints
ratios and writes benchmarks/results/ingest.json. Timing only; nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import yaml
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.gateway import KEY_TEXT, write_instances  # noqa: E402
from tests.support.netns import NetNamespace  # noqa: E402
from tests.support.orthanc import Orthanc  # noqa: E402


def rgb_instances(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    base = next(iter(write_instances(folder / "t", 1, 1).values()))[0]
    ds = pydicom.dcmread(base)
    shutil.rmtree(folder / "t")
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "OT"
    ds.Rows, ds.Columns = 256, 256
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for keyword in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    rng = np.random.default_rng(1)
    ds.PixelData = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8).tobytes()
    study = generate_uid()
    paths = []
    for i in range(count):
        ds.StudyInstanceUID = study
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"rgb_{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def ct_instances(folder: Path, count: int) -> list[Path]:
    return next(iter(write_instances(folder, 1, count).values()))


def storescu(host: str, port: int, called: str, folder: Path) -> float:
    env = dict(os.environ, TCP_NODELAY="1")
    started = time.perf_counter()
    result = subprocess.run(
        ["storescu", "-aet", "STORESCU", "-aec", called, "+sd", host, str(port), str(folder)],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stderr[-500:]}")
    return seconds


def wait_port(ns: NetNamespace, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = subprocess.run(
            ["bash", "-c", f"exec 3<>/dev/tcp/{ns.inner_address}/{port}"], capture_output=True
        )
        if probe.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


class Gateway:
    def __init__(self, work: Path, ns: NetNamespace, port: int, archive: Orthanc | None) -> None:
        work.mkdir(parents=True, exist_ok=True)
        (work / "project.key").write_text(KEY_TEXT)
        destinations = {}
        routes = []
        if archive is not None:
            destinations = {
                "archive": {
                    "ae_title": archive.ae_title,
                    "host": "127.0.0.1",  # same namespace as Orthanc
                    "port": archive.dicom_port,
                    "retry": {"initial_delay_s": 0.2, "max_delay_s": 1},
                }
            }
            routes = [{"name": "all", "destinations": ["archive"]}]
        cfg = {
            "project": {"key": {"file": str(work / "project.key")}},
            "node": {
                "ae_title": "DEIDGW",
                "host": "0.0.0.0",
                "port": port,
                "allow_any_caller": True,
            },
            "storage": {
                "spool_dir": str(work / "spool"),
                "outbox_dir": str(work / "outbox"),
                "quarantine_dir": str(work / "quarantine"),
                "journal": str(work / "journal.sqlite"),
                # ingest-only runs never process; end-to-end runs assemble after 0.5 s
                "study_stable_seconds": 0.5 if archive is not None else 3600,
                # ingest-only runs measure receiving alone (no processing while it streams in)
                "stream_batch": 50 if archive is not None else 0,
                "min_free_bytes": 0,
                "high_water_percent": 100,
            },
            "destinations": destinations,
            "routes": routes,
            "logging": {"level": os.environ.get("GWLOG", "warning")},
        }
        (work / "gateway.yaml").write_text(yaml.safe_dump(cfg))
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [
                *ns.prefix(),
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--config",
                str(work / "gateway.yaml"),
            ],
            env=env,
            stdout=(work / "gateway.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_port(ns, port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="deidgw-bench-"))
    ns = NetNamespace.create()
    results: dict[str, dict[str, float]] = {}
    try:
        sets = {
            "ct_39kB": lambda d: ct_instances(d, args.count),
            "rgb_197kB": lambda d: rgb_instances(d, args.count),
        }
        orthanc = Orthanc(work / "orthanc", ns)
        orthanc.start()
        storescp_dir = work / "storescp"
        storescp_dir.mkdir()
        storescp = subprocess.Popen(
            [
                *ns.prefix(),
                "env",
                "TCP_NODELAY=1",
                "storescp",
                "-aet",
                "STORESCP",
                "-od",
                str(storescp_dir),
                "-uf",
                "11113",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(ns, 11113)
        try:
            for name, make in sets.items():
                r: dict[str, float] = {}
                folders = {k: work / name / k for k in ("gw", "scp", "orthanc", "e2e", "direct")}
                for folder in folders.values():
                    make(folder)
                size = next(folders["gw"].glob("*.dcm")).stat().st_size
                n = args.count
                gw = Gateway(work / name / "gw-ingest", ns, 11112, None)
                try:
                    r["gateway_ingest"] = n / storescu(
                        ns.inner_address, 11112, "DEIDGW", folders["gw"]
                    )
                finally:
                    gw.stop()
                r["storescp_ingest"] = n / storescu(
                    ns.inner_address, 11113, "STORESCP", folders["scp"]
                )
                r["orthanc_ingest"] = n / storescu(
                    ns.inner_address, orthanc.dicom_port, "ORTHANC", folders["orthanc"]
                )
                before = orthanc.count_instances()
                started = time.perf_counter()
                storescu(ns.inner_address, orthanc.dicom_port, "ORTHANC", folders["direct"])
                orthanc.wait_for_instances(before + n, 300)
                r["direct_e2e"] = n / (time.perf_counter() - started)
                gw = Gateway(work / name / "gw-e2e", ns, 11114, orthanc)
                try:
                    before = orthanc.count_instances()
                    started = time.perf_counter()
                    storescu(ns.inner_address, 11114, "DEIDGW", folders["e2e"])
                    got = orthanc.wait_for_instances(before + n, 600) - before
                    r["gateway_e2e"] = got / (time.perf_counter() - started)
                finally:
                    gw.stop()
                r["instance_bytes"] = size
                r["ingest_vs_orthanc"] = r["gateway_ingest"] / r["orthanc_ingest"]
                r["ingest_vs_storescp"] = r["gateway_ingest"] / r["storescp_ingest"]
                r["e2e_vs_direct"] = r["gateway_e2e"] / r["direct_e2e"]
                results[name] = r
                print(f"{name} ({size} bytes, {n} instances, one association, TCP_NODELAY=1)")
                for key in (
                    "gateway_ingest",
                    "storescp_ingest",
                    "orthanc_ingest",
                    "gateway_e2e",
                    "direct_e2e",
                ):
                    print(f"  {key:<16} {r[key]:8.1f} instances/s")
                print(f"  gateway ingest / Orthanc ingest   {r['ingest_vs_orthanc']:.2f}")
                print(f"  gateway ingest / storescp ingest  {r['ingest_vs_storescp']:.2f}")
                print(f"  end to end via gateway / direct   {r['e2e_vs_direct']:.2f}")
        finally:
            storescp.terminate()
            storescp.wait(10)
            orthanc.stop()
    finally:
        ns.destroy()
        shutil.rmtree(work, ignore_errors=True)
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ingest.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
