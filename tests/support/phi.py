"""Studies with PHI planted in them, for tests that look for leaks in logs and metrics.

Every planted text value starts with CANARY ("CNRY"), so one search finds any of them, also a
partly leaked one; UIDs (which cannot carry the prefix) are fresh per run and listed one by one.
The values go where a careless gateway might pick them up: the patient module, the accession
number, the institution and physician names, descriptions, a private block and its creator, the
UIDs of study, series, instance and frame of reference.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

CANARY = "CNRY"
#: Callers and called AE titles a test uses that the gateway's configuration does not name.
CANARY_CALLING_AE = "CNRYCALLER01"
CANARY_CALLED_AE = "CNRYCALLED01"


@dataclass
class PlantedStudy:
    files: list[Path]
    #: Every planted value: must appear in no log line and no metric.
    needles: list[str] = field(default_factory=list)


def write_planted_study(
    folder: Path,
    tag: str,
    instances: int,
    *,
    modality: str = "CT",
    burned_in: bool = False,
) -> PlantedStudy:
    """`instances` CT instances of one new study, PHI planted, written under `folder/tag`."""
    source = get_testdata_file("CT_small.dcm", download=False)
    assert source is not None
    template = pydicom.dcmread(source)
    texts = {
        "PatientName": f"{CANARY}^{tag}^PATIENT",
        "PatientID": f"{CANARY}PID{tag}",
        "OtherPatientIDs": f"{CANARY}OTHERPID{tag}",
        "AccessionNumber": f"{CANARY}ACC{tag}",
        "InstitutionName": f"{CANARY} Institution {tag}",
        "InstitutionAddress": f"{CANARY} Street 1, {tag} Town",
        "ReferringPhysicianName": f"{CANARY}^REFERRING^{tag}",
        "PerformingPhysicianName": f"{CANARY}^PERFORMING^{tag}",
        "OperatorsName": f"{CANARY}^OPERATOR^{tag}",
        "StudyDescription": f"{CANARY} study description {tag}",
        "SeriesDescription": f"{CANARY} series description {tag}",
        "StudyID": f"{CANARY}SID{tag}"[:16],
        "StationName": f"{CANARY}ST{tag}"[:16],
    }
    for keyword, text in texts.items():
        setattr(template, keyword, text)
    template.Modality = modality
    template.BurnedInAnnotation = "YES" if burned_in else "NO"
    block = template.private_block(0x0011, f"{CANARY} CREATOR {tag}", create=True)
    block.add_new(0x01, "LO", f"{CANARY} private value {tag}")
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    template.StudyInstanceUID = study
    template.SeriesInstanceUID = series
    template.FrameOfReferenceUID = frame
    needles = [*texts.values(), f"{CANARY} CREATOR {tag}", f"{CANARY} private value {tag}"]
    needles += [study, series, frame]
    out = folder / tag
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(instances):
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        needles.append(ds.SOPInstanceUID)
        path = out / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return PlantedStudy(files, needles)
