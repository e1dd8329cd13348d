"""DICOMweb rates: STOW-RS against C-STORE, in and out of the gateway, with Orthanc as the peer.

    sudo .venv/bin/python -m benchmarks.dicomweb [--count 200] [--batch 50]

Orthanc (with its DICOMweb plugin) runs in a private network namespace; the gateway and the
senders in the host namespace, so every request crosses the same veth.

- receive: N CT instances pushed into the gateway by C-STORE (pynetdicom, one association) and by
  STOW-RS (httpx, one request per batch) — both durable (file + directory fsync + journal row)
  before the answer; and the same STOW-RS requests into Orthanc, for reference;
- forward: the time the gateway's forwarder spends delivering N de-identified instances to Orthanc
  by C-STORE and by STOW-RS (the sum of the per-instance send times it reports).

Prints rates and ratios and writes benchmarks/results/dicomweb.json. Timing only; nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dicom_io.scu import StoreTarget, send_files  # noqa: E402
from gateway.events import InstanceForwarded  # noqa: E402
from tests.support.gateway import (  # noqa: E402
    GATEWAY_AE,
    MODALITY_AE,
    config_dict,
    destination,
    make_key_file,
    parse,
    running_node,
    wait_until,
    write_instances,
)
from tests.support.netns import NetNamespace  # noqa: E402
from tests.support.orthanc import Orthanc  # noqa: E402


def stow(url: str, files: list[Path], batch: int, headers: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    with httpx.Client(trust_env=False, timeout=120) as client:
        for i in range(0, len(files), batch):
            boundary = uuid.uuid4().hex
            body = (
                b"".join(
                    f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                    + f.read_bytes()
                    + b"\r\n"
                    for f in files[i : i + batch]
                )
                + f"--{boundary}--\r\n".encode()
            )
            ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
            rsp = client.post(url, content=body, headers={"Content-Type": ctype, **(headers or {})})
            assert rsp.status_code == 200, rsp.status_code
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    n, batch = args.count, args.batch
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ns = NetNamespace.create()
        orthanc = Orthanc(work / "orthanc", ns, plugins=("dicomweb",))
        try:
            orthanc.start()
            sets = {
                name: next(iter(write_instances(work / name, 1, n).values()))
                for name in ("cstore_in", "stow_in", "orthanc_in", "dimse_out", "stow_out")
            }
            key = make_key_file(work)
            # --- receive ---------------------------------------------------------------------
            data = config_dict(work / "rx", key, storage={"study_stable_seconds": 3600})
            data["dicomweb_in"] = {"enabled": True, "port": 0}
            with running_node(parse(data)) as (node, _):
                target = StoreTarget(GATEWAY_AE, *node.address, MODALITY_AE)  # type: ignore[misc]
                started = time.perf_counter()
                assert all(s == 0 for s in send_files(target, sets["cstore_in"]))
                results["receive_cstore_per_s"] = n / (time.perf_counter() - started)
                assert node.stow is not None
                seconds = stow(node.stow.url + "/studies", sets["stow_in"], batch)
                results["receive_stow_per_s"] = n / seconds
            seconds = stow(orthanc.url + "/dicom-web/studies", sets["orthanc_in"], batch)
            results["orthanc_stow_per_s"] = n / seconds
            # --- forward ---------------------------------------------------------------------
            destinations = {
                "dimse_out": destination(orthanc.host, orthanc.dicom_port, "ORTHANC"),
                "stow_out": {
                    "type": "dicomweb",
                    "url": orthanc.url + "/dicom-web",
                    "allow_plain_http": True,
                    "batch_size": batch,
                },
            }
            for name, dest in destinations.items():
                data = config_dict(work / name, key, destinations={"out": dest})
                data["storage"]["study_stable_seconds"] = 0.2
                if name == "dimse_out":
                    data["destinations"]["out"]["batch_size"] = 200
                with running_node(parse(data)) as (node, events):
                    target = StoreTarget(GATEWAY_AE, *node.address, MODALITY_AE)  # type: ignore[misc]
                    assert all(s == 0 for s in send_files(target, sets[name]))
                    assert wait_until(
                        lambda node=node: node.backlog().journal_states["forwarded"] == n, 300
                    )
                    sent = events.of(InstanceForwarded)
                    results[f"forward_{name}_per_s"] = n / sum(e.seconds for e in sent)
        finally:
            orthanc.stop()
            ns.destroy()
    ratios = {
        "receive_stow_vs_cstore": results["receive_stow_per_s"] / results["receive_cstore_per_s"],
        "receive_stow_gateway_vs_orthanc": results["receive_stow_per_s"]
        / results["orthanc_stow_per_s"],
        "forward_stow_vs_dimse": results["forward_stow_out_per_s"]
        / results["forward_dimse_out_per_s"],
    }
    for name, value in {**results, **ratios}.items():
        print(f"{name:36s} {value:8.2f}")
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "dicomweb.json").write_text(
        json.dumps({"count": n, "batch": batch, **results, **ratios}, indent=2)
    )


if __name__ == "__main__":
    main()
