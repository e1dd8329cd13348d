"""deid-gateway's batch de-identification against three peer tools, on one canary-planted corpus.

    .venv/bin/python -m benchmarks.deidentify_peers [--files 200] [--keep DIR]

Builds N canary-planted files (tests/support/canary.py: every PS3.15 table attribute, private
blocks, free text, file meta, preamble), then runs, each as its own process on the same files:

- deid-gateway: `deid-gateway deidentify` (all cores; also once with --workers 1),
- dicognito (`python -m dicognito -o OUT`),
- pydicom-deid (`deid` package, `replace_identifiers` with its default recipe),
- Kitware's dicom-anonymizer (`dicom-anonymizer IN OUT`).

It prints wall-clock seconds, files/s, the ratio of our speed to each peer's, and each tool's
leaked canaries: planted text canaries and dates/times/numbers/UIDs found in any output byte.
Timings include process start-up and imports, as a user sees them. No assertion on time.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.canary import Corpus, build_corpus  # noqa: E402

_TOKEN = re.compile(rb"CNRY[0-9]{5}[0-9A-F]{4}")
_NUMERIC = re.compile(rb"(?<![0-9.])[0-9][0-9.]*[0-9](?![0-9.])")

DEID_SCRIPT = """
import sys
from deid.dicom import get_files, replace_identifiers
files = list(get_files(sys.argv[1]))
replace_identifiers(dicom_files=files, save=True, output_folder=sys.argv[2], overwrite=True)
"""


@dataclass
class Result:
    tool: str
    seconds: float
    cpu_seconds: float
    outputs: int
    leaked: int
    returncode: int


def _python() -> str:
    return sys.executable


def _run(tool: str, cmd: list[str], out: Path, env: dict[str, str]) -> Result:
    out.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-600:]
        print(f"  {tool}: exit status {proc.returncode}: {tail}", file=sys.stderr)
    files = [p for p in out.rglob("*") if p.is_file()]
    return Result(tool, seconds, cpu, len(files), -1, proc.returncode)


def count_leaks(out: Path, corpus: Corpus) -> int:
    """Distinct planted canaries found anywhere in the tool's output bytes: text canaries by
    their prefix, dates/times/numbers/UIDs as whole tokens (not inside a longer number)."""
    texts = {t for f in corpus.files for t in f.texts}
    needles = {n for f in corpus.files for n in f.needles + f.temporal}
    found: set[bytes] = set()
    for path in out.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        found.update(t for t in _TOKEN.findall(data) if t in texts)
        found.update(set(_NUMERIC.findall(data)) & needles)
    return len(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse the corpus kept in --keep DIR by a former run"
    )
    args = parser.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="deid-bench-"))
    corpus_dir = work / "corpus"
    manifest = work / "corpus.pickle"
    started = time.perf_counter()
    if args.reuse and manifest.exists():
        corpus = pickle.loads(manifest.read_bytes())
        for name in ("ours", "ours1", "dicognito", "pydicom-deid", "dicom-anonymizer"):
            shutil.rmtree(work / name, ignore_errors=True)
    else:
        if work.exists() and args.keep:
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        copies = -(-args.files // 22)
        # Without the one element built to crash decoders: dicognito, pydicom-deid and
        # dicom-anonymizer all abort the whole run on it (see the canary test for ours).
        corpus = build_corpus(corpus_dir, copies=copies, limit=args.files, hostile=False)
        manifest.write_bytes(pickle.dumps(corpus))
    planted = sum(len(f.texts) + len(f.needles) + len(f.temporal) for f in corpus.files)
    size = sum(f.path.stat().st_size for f in corpus.files) / 1e6
    print(
        f"corpus: {len(corpus.files)} files, {size:.1f} MB, {planted} planted canaries "
        f"(built in {time.perf_counter() - started:.1f} s)"
    )

    key = work / "project.key"
    key.write_text("b" * 64 + "\n")
    config = work / "bench.yaml"
    config.write_text(
        json.dumps(
            {
                "version": 1,
                "project": {"key": {"file": str(key)}, "sponsor_name": "S", "protocol_id": "P"},
                # structured reports are cleaned (as the peers do), not refused
                "profiles": {"default": {"options": ["clean_structured_content"]}},
            }
        )
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    bindir = Path(_python()).parent
    runs: list[tuple[str, list[str], Path]] = [
        (
            "deid-gateway",
            [
                _python(),
                "-m",
                "gateway",
                "deidentify",
                str(corpus_dir),
                "--out",
                str(work / "ours"),
                "--config",
                str(config),
            ],
            work / "ours",
        ),
        (
            "deid-gateway (1 worker)",
            [
                _python(),
                "-m",
                "gateway",
                "deidentify",
                str(corpus_dir),
                "--out",
                str(work / "ours1"),
                "--config",
                str(config),
                "--workers",
                "1",
            ],
            work / "ours1",
        ),
    ]
    if not args.skip_peers:
        runs += [
            (
                "dicognito",
                [
                    _python(),
                    "-m",
                    "dicognito",
                    "-o",
                    str(work / "dicognito"),
                    "--assume-burned-in-annotation",
                    "never",
                    str(corpus_dir),
                ],
                work / "dicognito",
            ),
            (
                "pydicom-deid",
                [_python(), "-c", DEID_SCRIPT, str(corpus_dir), str(work / "pydicom-deid")],
                work / "pydicom-deid",
            ),
            (
                "dicom-anonymizer",
                [str(bindir / "dicom-anonymizer"), str(corpus_dir), str(work / "dicom-anonymizer")],
                work / "dicom-anonymizer",
            ),
        ]
    results = []
    for tool, cmd, out in runs:
        print(f"running {tool} ...", flush=True)
        result = _run(tool, cmd, out, env)
        result.leaked = count_leaks(out, corpus)
        results.append(result)

    ours = results[0]
    print()
    print(
        f"{'tool':26} {'wall s':>7} {'cpu s':>7} {'files/s':>8} {'outputs':>8} "
        f"{'leaked canaries':>18} {'ours faster':>12}"
    )
    for r in results:
        rate = len(corpus.files) / r.seconds
        share = f"{r.leaked} ({100 * r.leaked / planted:.1f}%)"
        ratio = r.seconds / ours.seconds
        print(
            f"{r.tool:26} {r.seconds:7.2f} {r.cpu_seconds:7.2f} {rate:8.1f} {r.outputs:8d} "
            f"{share:>18} {ratio:11.2f}x"
        )
    peers = [r for r in results[2:] if r.outputs]
    if peers:
        fastest = min(peers, key=lambda r: r.seconds)
        print(
            f"\nfastest peer: {fastest.tool} ({fastest.seconds:.2f} s wall, "
            f"{fastest.cpu_seconds:.2f} s cpu); deid-gateway is "
            f"{fastest.seconds / ours.seconds:.2f}x faster (wall), "
            f"{fastest.cpu_seconds / ours.cpu_seconds:.2f}x less cpu; "
            f"all cores vs 1 worker: {results[1].seconds / ours.seconds:.2f}x (wall)"
        )
    results_dir = REPO / "benchmarks" / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "deidentify_peers.json").write_text(
        json.dumps(
            {
                "files": len(corpus.files),
                "planted": planted,
                "cores": len(os.sched_getaffinity(0)),
                "results": [r.__dict__ for r in results],
            },
            indent=1,
        )
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
