"""`deid-gateway pull` against Orthanc as the PACS (in a network namespace).

One Orthanc (AE PACS) serves both tests: it holds PHI-planted studies, answers C-FIND, performs
C-MOVE to the gateway's listener (it knows our AE title as a modality) and C-GET, and is also the
archive the gateway forwards its de-identified copies to, so what arrived is checked there.

1. an accession list with present, missing and unsafe rows is pulled by C-MOVE into a running
   gateway; the report says which rows were found, retrieved and missing; the de-identified
   studies arrive; no accession number reaches the screen;
2. study UIDs pulled by C-GET with `--embedded` (the command runs its own node, waits for the
   forward and stops).
"""

from __future__ import annotations

import csv
import io
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import yaml

from tests.conftest import run_cli
from tests.support.gateway import (
    GATEWAY_AE,
    config_dict,
    destination,
    make_key_file,
    parse,
    running_node,
    wait_until,
)
from tests.support.netns import NetNamespace
from tests.support.orthanc import Orthanc, require_orthanc
from tests.support.phi import CANARY, PlantedStudy, write_planted_study

pytestmark = [pytest.mark.network, pytest.mark.slow]

PACS_AE = "PACS"


@dataclass
class Pacs:
    orthanc: Orthanc
    ns: NetNamespace
    studies: dict[str, PlantedStudy]
    #: Orthanc's study ids of the originals (everything else there was forwarded by the gateway).
    originals: set[str]
    work: Path


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    require_orthanc()
    work = tmp_path_factory.mktemp("pull")
    ns = NetNamespace.create()
    orthanc = Orthanc(work / "orthanc", ns, ae_title=PACS_AE)
    try:
        orthanc.start()
        studies = {
            tag: write_planted_study(work / "in", tag, n)
            for tag, n in (("MOVE1", 2), ("MOVE2", 3), ("GET1", 2), ("OTHER", 1))
        }
        for study in studies.values():
            for path in study.files:
                orthanc.upload(path)
        yield Pacs(orthanc, ns, studies, orthanc.studies(), work)
    finally:
        orthanc.stop()
        ns.destroy()


def _config(pacs: Pacs, port: int, retrieve: str) -> dict:  # type: ignore[type-arg]
    data = config_dict(
        pacs.work / f"gw-{retrieve}",
        make_key_file(pacs.work),
        destinations={"archive": destination(pacs.orthanc.host, pacs.orthanc.dicom_port, PACS_AE)},
    )
    data["node"]["host"] = pacs.ns.host_address
    data["node"]["port"] = port
    # the PACS connects to deliver a C-MOVE, from inside its namespace
    data["node"]["allowed_callers"] = [{"ae_title": PACS_AE, "host": pacs.ns.inner_address}]
    data["sources"] = {
        "pacs": {
            "ae_title": PACS_AE,
            "host": pacs.orthanc.host,
            "port": pacs.orthanc.dicom_port,
            "retrieve": retrieve,
            "max_queries_per_s": 20,
            "pause_between_studies_s": 0.1,
        }
    }
    return data


def _new_studies(pacs: Pacs) -> set[str]:
    return pacs.orthanc.studies() - pacs.originals


def _forwarded_tags(
    pacs: Pacs, study_ids: set[str], planted: list[PlantedStudy]
) -> list[pydicom.Dataset]:
    """The forwarded instances; none may hold any value planted in the originals."""
    out = []
    needles = [n.encode() for study in planted for n in study.needles]
    for sid in study_ids:
        for iid in pacs.orthanc.study_instances(sid):
            data = pacs.orthanc.file(iid)
            assert not [n for n in needles if n in data]
            out.append(pydicom.dcmread(io.BytesIO(data)))
    return out


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def test_accession_list_pulled_by_c_move_into_a_running_gateway(pacs: Pacs) -> None:
    move1, move2 = pacs.studies["MOVE1"], pacs.studies["MOVE2"]
    accession = {tag: f"{CANARY}ACC{tag}" for tag in ("MOVE1", "MOVE2")}
    listing = pacs.work / "accessions.csv"
    listing.write_text(
        "AccessionNumber,Note\n"
        f"{accession['MOVE1']},first\n"
        f"{CANARY}ACCMISSING,not on the PACS\n"
        f"{accession['MOVE2']},second\n"
        "*,a wildcard must never be sent\n"
    )
    before = _new_studies(pacs)
    cfg = parse(_config(pacs, 0, "move"))
    with running_node(cfg) as (node, _events):
        host, port = node.address  # type: ignore[misc]
        pacs.orthanc.put_modality("deidgw", GATEWAY_AE, host, port)
        data = _config(pacs, port, "move")
        config = pacs.work / "pull-move.yaml"
        config.write_text(yaml.safe_dump(data))
        report = pacs.work / "report-move.csv"
        result = run_cli(
            [
                "pull",
                "--source",
                "pacs",
                "--accession-list",
                str(listing),
                "--config",
                str(config),
                "--report",
                str(report),
            ],
            timeout=120,
        )
        assert result.returncode == 1, result.stdout + result.stderr  # a row is missing
        # the screen names rows by line and keyed hash, never by accession number
        assert CANARY not in result.stdout + result.stderr
        assert "1 missing" in result.stdout and "2 retrieved" in result.stdout

        rows = list(csv.DictReader(report.open()))
        assert stat.S_IMODE(report.stat().st_mode) == 0o600
        by_line = {r["line"]: r for r in rows}
        assert by_line["2"]["status"] == "retrieved"
        assert by_line["2"]["identifier"] == accession["MOVE1"]
        assert (by_line["2"]["instances_expected"], by_line["2"]["instances_retrieved"]) == (
            "2",
            "2",
        )
        assert by_line["3"]["status"] == "missing" and by_line["3"]["studies_found"] == "0"
        assert by_line["4"]["status"] == "retrieved"
        assert by_line["4"]["instances_retrieved"] == "3"
        assert by_line["5"]["status"] == "invalid"
        assert all(r["row_key"] and r["row_key"] in result.stdout for r in rows)

        # the retrieved studies took the normal route: de-identified into the archive
        assert wait_until(lambda: len(_new_studies(pacs) - before) == 2, 60)
        assert wait_until(lambda: node.backlog().journal_states["forwarded"] == 5, 30)
    forwarded = _forwarded_tags(pacs, _new_studies(pacs) - before, [move1, move2])
    assert len(forwarded) == 5
    originals = {
        str(pydicom.dcmread(p).StudyInstanceUID) for s in (move1, move2) for p in s.files[:1]
    }
    for ds in forwarded:
        assert ds.StudyInstanceUID not in originals
        assert CANARY not in str(ds.PatientName) and CANARY not in str(ds.PatientID)
        assert ds.get("PatientIdentityRemoved") == "YES"


def test_study_uids_pulled_by_c_get_with_an_embedded_gateway(pacs: Pacs) -> None:
    study = pacs.studies["GET1"]
    uid = str(pydicom.dcmread(study.files[0]).StudyInstanceUID)
    before = _new_studies(pacs)
    port = _free_port(pacs.ns.host_address)
    data = _config(pacs, port, "get")
    pacs.orthanc.put_modality("deidgw", GATEWAY_AE, pacs.ns.host_address, port)
    config = pacs.work / "pull-get.yaml"
    config.write_text(yaml.safe_dump(data))
    report = pacs.work / "report-get.csv"
    result = run_cli(
        [
            "pull",
            "--source",
            "pacs",
            "--study-uid",
            uid,
            "--study-uid",
            "1.2.3.4.999",
            "--config",
            str(config),
            "--report",
            str(report),
            "--embedded",
            "--wait",
            "60",
        ],
        timeout=180,
    )
    assert result.returncode == 1, result.stdout + result.stderr  # the second UID is missing
    assert uid not in result.stdout + result.stderr
    assert "embedded gateway: 2 forwarded, 0 quarantined, 0 still waiting" in result.stdout
    rows = list(csv.DictReader(report.open()))
    assert [(r["status"], r["instances_retrieved"]) for r in rows] == [
        ("retrieved", "2"),
        ("missing", "0"),
    ]
    # forwarded before the command returned
    new = _new_studies(pacs) - before
    assert len(new) == 1
    forwarded = _forwarded_tags(pacs, new, [study])
    assert len(forwarded) == 2
    assert all(ds.StudyInstanceUID != uid for ds in forwarded)
    # nothing left in the embedded node's spool, and it released its port
    assert not list((pacs.work / "gw-get" / "spool").glob("incoming/*/*.dcm"))
    with socket.socket() as s:
        s.bind((pacs.ns.host_address, port))
