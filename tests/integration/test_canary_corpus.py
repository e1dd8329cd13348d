"""The PHI-planted corpus through `deid-gateway deidentify`: nothing planted survives anywhere in
any output byte, references between instances still resolve, the run is deterministic under a
key, and bad files are reported and skipped while the rest go through."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from deid_core.keys import ProjectKey
from deid_core.pseudonyms import Pseudonymizer
from tests.conftest import run_cli, shared_path
from tests.support.canary import CANARY_PREFIX, Corpus, build_corpus, leaks

KEY_TEXT = "canary-test-key-" + "0123456789abcdef" * 2
PROFILES = {
    "basic": [],
    "clean": [
        "retain_longitudinal_modified_dates",
        "clean_descriptors",
        "clean_structured_content",
        "clean_graphics",
    ],
    "safe": ["retain_safe_private", "clean_descriptors"],
}
#: Structured reports of the corpus: refused (ClinicalContentLossError) by profiles without
#: clean_structured_content, since de-identifying them would destroy their content.
STRUCTURED = frozenset({"test-SR.dcm", "reportsi.dcm"})


def _refused(corpus: Corpus, profile: str) -> set[str]:
    if "clean_structured_content" in PROFILES[profile]:
        return set()
    return {f.path.name for f in corpus.files if f.base in STRUCTURED}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("canary")


@pytest.fixture(scope="module")
def corpus(workdir: Path) -> Corpus:
    return build_corpus(workdir / "corpus", copies=1)


def _config(workdir: Path, key_text: str, name: str) -> Path:
    key = workdir / f"{name}.key"
    key.write_text(key_text + "\n")
    cfg = workdir / f"{name}.yaml"
    cfg.write_text(
        json.dumps(
            {
                "version": 1,
                "project": {
                    "key": {"file": str(key)},
                    "sponsor_name": "Sponsor",
                    "protocol_id": "PROTO-1",
                },
                "site": {"id": "SITE-1", "name": "Site One"},
                "profiles": {n: {"options": o} for n, o in PROFILES.items()},
            }
        )
    )
    return cfg


@pytest.fixture(scope="module")
def config(workdir: Path) -> Path:
    return _config(workdir, KEY_TEXT, "main")


def _deidentify(
    src: Path, out: Path, config: Path, profile: str, *extra: str, refused: set[str] = frozenset()
) -> list[Path]:
    proc = run_cli(
        [
            "deidentify",
            str(src),
            "--out",
            str(out),
            "--config",
            str(config),
            "--profile",
            profile,
            *extra,
        ]
    )
    failed = {line for line in proc.stderr.splitlines() if line.startswith("FAILED")}
    assert {name for name in refused if any(name in line for line in failed)} == refused
    assert len(failed) == len(refused), proc.stderr
    assert all("clean_structured_content" in line for line in failed), proc.stderr
    assert proc.returncode == (1 if refused else 0), proc.stdout + proc.stderr
    return sorted(out.rglob("*.dcm"))


@pytest.fixture(scope="module")
def basic_outputs(workdir: Path, corpus: Corpus, config: Path) -> list[Path]:
    return _deidentify(
        corpus.files[0].path.parent,
        workdir / "out-basic",
        config,
        "basic",
        refused=_refused(corpus, "basic"),
    )


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["basic", "clean", "safe"])
def test_no_canary_survives(
    profile: str, workdir: Path, corpus: Corpus, config: Path, basic_outputs: list[Path]
) -> None:
    if profile == "basic":
        outputs = basic_outputs
    else:
        outputs = _deidentify(
            corpus.files[0].path.parent,
            workdir / f"out-{profile}",
            config,
            profile,
            refused=_refused(corpus, profile),
        )
    assert len(outputs) == len(corpus.files) - len(_refused(corpus, profile))
    needles = corpus.needles()
    if profile == "basic":  # dates and times are only removed under the basic profile
        needles += [n for f in corpus.files for n in f.temporal]
    found = {}
    for path in outputs:
        data = path.read_bytes()
        hits = leaks(data, needles)
        if hits:
            found[path.name] = hits[:5]
        assert CANARY_PREFIX not in path.as_posix()
    assert not found, found
    # The corpus really is planted: the same search finds canaries in every input.
    for planted in corpus.files:
        assert leaks(planted.path.read_bytes(), planted.needles)


@pytest.mark.slow
def test_references_resolve_across_files(
    corpus: Corpus, basic_outputs: list[Path], workdir: Path
) -> None:
    pseudo = Pseudonymizer(ProjectKey(KEY_TEXT.encode()))
    by_sop = {}
    for path in basic_outputs:
        ds = pydicom.dcmread(path)
        by_sop[ds.SOPInstanceUID] = ds
        # Laid out by pseudonymous study/series/instance.
        rel = path.relative_to(workdir / "out-basic")
        assert rel.parts == (ds.StudyInstanceUID, ds.SeriesInstanceUID, f"{ds.SOPInstanceUID}.dcm")
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    studies: dict[str, set[str]] = {}
    refused = _refused(corpus, "basic")
    refused_sops = {pseudo.uid(f.sop_uid) for f in corpus.files if f.path.name in refused}
    for planted in corpus.files:
        if planted.path.name in refused:
            assert pseudo.uid(planted.sop_uid) not in by_sop
            continue
        out = by_sop[pseudo.uid(planted.sop_uid)]
        assert out.StudyInstanceUID == pseudo.uid(planted.study_uid)
        assert out.FrameOfReferenceUID == pseudo.uid(planted.frame_of_reference_uid)
        studies.setdefault(planted.study_uid, set()).add(out.StudyInstanceUID)
        if planted.refers_to is None:
            continue
        series, _sop = planted.refers_to
        ref = out.ReferencedSeriesSequence[0]
        assert ref.SeriesInstanceUID == pseudo.uid(series)
        target = ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        assert target == pseudo.uid(_sop)
        if target in refused_sops:
            continue  # a refused structured report: the reference is keyed all the same
        assert target in by_sop, "the referenced instance is an output of the same run"
        assert by_sop[target].SeriesInstanceUID == ref.SeriesInstanceUID
    assert all(len(v) == 1 for v in studies.values())
    assert len(studies) > 1


@pytest.mark.slow
def test_outputs_parse_completely(basic_outputs: list[Path]) -> None:
    for path in basic_outputs:
        ds = pydicom.dcmread(path)  # strict: preamble, DICM, file meta
        ds.walk(lambda _ds, _elem: None)
        assert ds.PatientIdentityRemoved == "YES"
        assert not any(e.tag.is_private for e in ds.iterall())


@pytest.mark.slow
def test_same_key_gives_the_same_bytes_on_any_process_layout(
    workdir: Path, corpus: Corpus, config: Path, basic_outputs: list[Path]
) -> None:
    src = corpus.files[0].path.parent
    # Same key, one worker instead of all cores: identical files, byte for byte.
    again = _deidentify(
        src,
        workdir / "out-again",
        config,
        "basic",
        "--workers",
        "1",
        refused=_refused(corpus, "basic"),
    )
    base = workdir / "out-basic"
    assert [p.relative_to(workdir / "out-again") for p in again] == [
        p.relative_to(base) for p in basic_outputs
    ]
    for a, b in zip(again, basic_outputs, strict=True):
        assert a.read_bytes() == b.read_bytes()
    # (Different keys giving unrelated pseudonyms: tests/unit/test_pseudonyms.py and
    # test_profile_deidentify.py, in process.)


def test_bad_files_are_reported_and_the_rest_go_through(workdir: Path, config: Path) -> None:
    src = workdir / "mixed"
    src.mkdir()
    good = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    shutil.copy(good, src / "good.dcm")
    data = good.read_bytes()
    (src / "truncated.dcm").write_bytes(data[: len(data) // 2])
    (src / "random.bin").write_bytes(os.urandom(4096))
    (src / "empty.dcm").write_bytes(b"")
    (src / "notes.txt").write_text("not an image\n")
    shutil.copy(get_testdata_file("DICOMDIR"), src / "DICOMDIR")  # type: ignore[arg-type]
    out = workdir / "out-mixed"
    proc = run_cli(
        ["deidentify", str(src), "--out", str(out), "--config", str(config), "--profile", "basic"]
    )
    assert proc.returncode == 1
    assert "1 de-identified, 4 failed, 1 skipped" in proc.stdout
    for name, reason in (
        ("truncated.dcm", "truncated"),
        ("random.bin", "not a DICOM file"),
        ("empty.dcm", "empty"),
        ("notes.txt", "not a DICOM file"),
    ):
        line = next(line for line in proc.stderr.splitlines() if name in line)
        assert "FAILED" in line and reason in line, line
    outputs = list(out.rglob("*"))
    assert len([p for p in outputs if p.suffix == ".dcm"]) == 1
    assert not [p for p in outputs if p.name.endswith(".tmp")]


def test_explain_prints_actions_and_reasons_without_values(corpus: Corpus, config: Path) -> None:
    planted = corpus.files[0].path
    proc = run_cli(["explain", str(planted), "--config", str(config), "--profile", "clean"])
    assert proc.returncode == 0, proc.stderr
    assert "PatientName" in proc.stdout and "basic profile" in proc.stdout
    assert "option retain_longitudinal_modified_dates" in proc.stdout
    assert CANARY_PREFIX not in proc.stdout + proc.stderr


@pytest.mark.needs_shared
@pytest.mark.slow
def test_shared_dicom_files_all_pass(workdir: Path, config: Path) -> None:
    folder = shared_path("data", "dicom")
    files = sorted(folder.rglob("*.dcm"))
    not_instances = {
        str(p) for p in files if "SOPClassUID" not in pydicom.dcmread(p, stop_before_pixels=True)
    }
    out = workdir / "out-shared"
    proc = run_cli(
        [
            "deidentify",
            *map(str, files),
            "--out",
            str(out),
            "--config",
            str(config),
            "--profile",
            "clean",
        ]
    )
    failed = {
        line.split(" ", 1)[1].rsplit(": ", 2)[0]
        for line in proc.stderr.splitlines()
        if line.startswith("FAILED")
    }
    # Every file is de-identified, except fragments that are not instances (no SOP Class UID:
    # pydicom's character-set samples), which are refused with that reason.
    assert failed == not_instances
    assert proc.returncode == (1 if not_instances else 0)
    assert all("SOP Class UID" in line for line in proc.stderr.splitlines() if "FAILED" in line)
