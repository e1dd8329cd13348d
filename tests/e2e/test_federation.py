"""Federation: two sites, one gateway each, one archive (Orthanc), no shared database.

With one project key the same patient seen at both sites arrives as ONE pseudonymous patient: the
same pseudonymous patient ID and subject ID, the same pseudonymous UID for a study both sites hold
(its instances merge into one study), the same date shift (intervals between the sites' studies
survive), each instance labelled with the site that sent it. With two keys nothing links: other
patient IDs, no UID in common. (The sites' metrics federated into one Prometheus:
tests/integration/test_prometheus_federation.py.)
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicom_io.scu import StoreTarget, send_files
from gateway.node import GatewayNode
from tests.support.gateway import (
    GATEWAY_AE,
    KEY_TEXT,
    MODALITY_AE,
    config_dict,
    destination,
    parse,
    running_node,
)
from tests.support.netns import NetNamespace
from tests.support.orthanc import Orthanc, require_orthanc

pytestmark = [pytest.mark.network, pytest.mark.slow]

OTHER_KEY = "another-research-project-key-0123456789abcdef"
PATIENT_ID = "PID-FED-0042"
PATIENT_NAME = "FEDERATED^PATIENT"
#: (study, date, instances at site A, instances at site B): study X was shared by both sites.
PLAN = [("X", "20240305", 2, 2), ("YA", "20240310", 2, 0), ("YB", "20240320", 0, 2)]
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def _write_studies(folder: Path) -> tuple[dict[str, list[Path]], dict[str, str]]:
    """Files per site, and the original study UIDs (by plan name)."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    template.PatientID = PATIENT_ID
    template.PatientName = PATIENT_NAME
    template.PatientBirthDate = "19600101"
    for kw in ("OtherPatientIDs", "OtherPatientIDsSequence"):
        if kw in template:
            delattr(template, kw)
    files: dict[str, list[Path]] = {"A": [], "B": []}
    studies: dict[str, str] = {}
    for name, date, count_a, count_b in PLAN:
        study = studies[name] = generate_uid()
        frame_of_reference = generate_uid()
        for site, count in (("A", count_a), ("B", count_b)):
            series = generate_uid()
            for i in range(count):
                ds = copy.deepcopy(template)
                ds.StudyInstanceUID = study
                ds.SeriesInstanceUID = series
                ds.FrameOfReferenceUID = frame_of_reference
                ds.SOPInstanceUID = generate_uid()
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
                ds.InstanceNumber = i + 1
                path = folder / site / f"{name}_{i}.dcm"
                path.parent.mkdir(parents=True, exist_ok=True)
                ds.save_as(path, enforce_file_format=True)
                files[site].append(path)
    return files, studies


def _site_config(tmp_path: Path, orthanc: Orthanc, site: str, key_text: str) -> Any:
    key_file = tmp_path / f"site-{site}.key"
    key_file.write_text(key_text + "\n")
    data = config_dict(
        tmp_path / f"gw-{site}",
        key_file,
        destinations={"archive": destination(orthanc.host, orthanc.dicom_port, orthanc.ae_title)},
        project={
            "key": {"file": str(key_file)},
            "sponsor_name": "Example Sponsor",
            "protocol_id": "FED-PROTOCOL-1",
            "protocol_name": "Federation test",
        },
        site={"id": f"SITE-{site}", "name": f"Hospital {site}"},
        profiles={"default": {"options": ["retain_longitudinal_modified_dates"]}},
    )
    return parse(data)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    require_orthanc()
    ns = NetNamespace.create()
    archive = Orthanc(tmp_path / "orthanc", ns)
    try:
        archive.start()
        yield archive
    finally:
        archive.stop()
        ns.destroy()


def _send(node: GatewayNode, files: list[Path]) -> None:
    target = StoreTarget(GATEWAY_AE, *node.address, MODALITY_AE)  # type: ignore[misc]
    assert send_files(target, files) == [0] * len(files)


def _archive(orthanc: Orthanc) -> list[dict[str, Any]]:
    return [orthanc.tags(i) for i in orthanc.instances()]


def _date(text: str) -> dt.date:
    return dt.datetime.strptime(text, "%Y%m%d").date()


def _run_sites(
    tmp_path: Path, orthanc: Orthanc, key_b: str
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    files, studies = _write_studies(tmp_path / "in")
    cfg_a = _site_config(tmp_path, orthanc, "A", KEY_TEXT)
    cfg_b = _site_config(tmp_path, orthanc, "B", key_b)
    with running_node(cfg_a, KEY_TEXT) as (a, _), running_node(cfg_b, key_b) as (b, _):
        _send(a, files["A"])
        _send(b, files["B"])
        total = len(files["A"]) + len(files["B"])
        assert orthanc.wait_for_instances(total, timeout=90) == total
    return _archive(orthanc), studies


def test_one_key_links_the_patient_and_the_shared_study_across_sites(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    instances, studies = _run_sites(tmp_path, orthanc, KEY_TEXT)
    assert len(instances) == 8
    # one pseudonymous patient, the subject ID equal to it, nothing identifying left
    assert {i["PatientID"] for i in instances} == {instances[0]["PatientID"]}
    assert instances[0]["PatientID"] != PATIENT_ID
    assert {i["ClinicalTrialSubjectID"] for i in instances} == {instances[0]["PatientID"]}
    assert all(i.get("PatientName") != PATIENT_NAME for i in instances)
    assert orthanc.count_studies() == 3 and len(orthanc.get("/patients")) == 1
    # each instance names the site that de-identified it
    by_site: dict[str, list[dict[str, Any]]] = {}
    for i in instances:
        by_site.setdefault(i["ClinicalTrialSiteID"], []).append(i)
        assert i["ClinicalTrialSiteName"] == "Hospital " + i["ClinicalTrialSiteID"][-1]
        assert i["ClinicalTrialProtocolID"] == "FED-PROTOCOL-1"
    assert sorted(by_site) == ["SITE-A", "SITE-B"]
    # the study both sites hold (X): one pseudonymous study, frame of reference from both sites
    original_uids = set(studies.values())
    by_study: dict[str, list[dict[str, Any]]] = {}
    for i in instances:
        by_study.setdefault(i["StudyInstanceUID"], []).append(i)
    assert not set(by_study) & original_uids
    [shared] = [
        uid
        for uid, members in by_study.items()
        if {m["ClinicalTrialSiteID"] for m in members} == {"SITE-A", "SITE-B"}
    ]
    assert len(by_study[shared]) == 4
    assert len({m["FrameOfReferenceUID"] for m in by_study[shared]}) == 1
    assert by_study[shared][0]["StudyDate"] == min(i["StudyDate"] for i in instances)
    # one date shift for the patient at every site: intervals between studies survive
    dates = sorted({_date(i["StudyDate"]) for i in instances})
    assert len(dates) == 3
    assert [(d - dates[0]).days for d in dates] == [0, 5, 15]
    assert dates[0] != _date("20240305")


def test_two_keys_link_nothing(tmp_path: Path, orthanc: Orthanc) -> None:
    instances, studies = _run_sites(tmp_path, orthanc, OTHER_KEY)
    assert len(instances) == 8
    a = [i for i in instances if i["ClinicalTrialSiteID"] == "SITE-A"]
    b = [i for i in instances if i["ClinicalTrialSiteID"] == "SITE-B"]
    assert (len(a), len(b)) == (4, 4)
    assert {i["PatientID"] for i in a}.isdisjoint({i["PatientID"] for i in b})
    for keyword in UID_KEYWORDS:
        uids_a = {i[keyword] for i in a if keyword in i}
        uids_b = {i[keyword] for i in b if keyword in i}
        assert uids_a.isdisjoint(uids_b), keyword
    assert not {i["StudyInstanceUID"] for i in instances} & set(studies.values())
    # the study both sites hold is two unrelated studies in the archive; two patients
    assert orthanc.count_studies() == 4 and len(orthanc.get("/patients")) == 2
