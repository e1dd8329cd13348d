"""Clinical photographs made in code: skin-toned images, some with a red lesion of known shape,
wrapped as VL Photographic Image or Secondary Capture (Modality XC) DICOM instances with an
identifiable patient, so that tests need no image file and no licence."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
PATIENT_NAME = "PHOTO^IDENTIFIABLE"
PATIENT_ID = "PID-0815"


def skin_image(size: int, seed: int, lesion: bool) -> np.ndarray:
    """(size, size, 3) uint8: even skin with mild texture; a red ellipse when `lesion`."""
    return skin_image_and_mask(size, seed, lesion)[0]


def skin_image_and_mask(size: int, seed: int, lesion: bool) -> tuple[np.ndarray, np.ndarray]:
    """The image of `skin_image` and the lesion's true mask (empty without a lesion)."""
    rng = np.random.default_rng(seed)
    base = np.array([224, 172, 140], dtype=np.float64) + rng.normal(0, 6, 3)
    image = base + rng.normal(0, 3.0, (size, size, 3))
    inside = np.zeros((size, size), dtype=bool)
    if lesion:
        yy, xx = np.mgrid[0:size, 0:size]
        cy, cx = size * rng.uniform(0.4, 0.6, 2)
        ry, rx = size * rng.uniform(0.12, 0.2, 2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        image[inside] = np.array([180, 60, 60]) + rng.normal(0, 3.0, (int(inside.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8), inside


@dataclass(frozen=True)
class Photo:
    path: Path
    sop_instance_uid: str
    study_instance_uid: str
    lesion: bool
    secondary_capture: bool = False


def photo_dataset(
    image: np.ndarray,
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    number: int,
    secondary_capture: bool = False,
    patient_id: str = PATIENT_ID,
    patient_name: str = PATIENT_NAME,
    study_date: str = "20240305",
) -> Dataset:
    """A minimal but valid photograph instance (uncompressed RGB)."""
    ds = Dataset()
    sop_class = SECONDARY_CAPTURE if secondary_capture else VL_PHOTOGRAPHIC
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = study_date
    ds.ContentDate = study_date
    ds.StudyTime = "101500"
    ds.ContentTime = "101500"
    ds.AccessionNumber = "ACC" + str(number)
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.ReferringPhysicianName = "REFERRER^IDENTIFIABLE"
    ds.Manufacturer = "TestCam"
    ds.Modality = "XC"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "YES"
    ds.LossyImageCompression = "00"
    if secondary_capture:
        ds.ConversionType = "DI"
    else:
        ds.AcquisitionContextSequence = []
        ds.Laterality = "L"
    ds.Rows, ds.Columns = image.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = image.tobytes()
    return ds


def write_photos(
    folder: Path,
    count: int,
    *,
    size: int = 64,
    per_study: int = 5,
    lesion_every: int = 3,
    seed: int = 0,
    patient_id: str = PATIENT_ID,
    study_uids: list[str] | None = None,
) -> list[Photo]:
    """`count` photographs, `per_study` to a study; every `lesion_every`-th has a lesion, every
    other one is a secondary capture (XC). Study UIDs may be given (the same study at two
    sites)."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = []
    study = series = ""
    for i in range(count):
        if i % per_study == 0:
            k = i // per_study
            study = study_uids[k] if study_uids is not None else generate_uid()
            series = generate_uid()
        lesion = i % lesion_every == 0
        sop = generate_uid()
        ds = photo_dataset(
            skin_image(size, seed * 100_003 + i, lesion),
            study_uid=study,
            series_uid=series,
            sop_uid=sop,
            number=i + 1,
            secondary_capture=i % 2 == 1,
            patient_id=patient_id,
        )
        path = folder / f"photo_{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        photos.append(Photo(path, sop, study, lesion, secondary_capture=i % 2 == 1))
    return photos


def photo_route(
    model_dir: Path,
    destinations: list[str],
    *,
    name: str = "photos",
    gate: dict[str, object] | None = None,
    params: dict[str, object] | None = None,
) -> dict[str, object]:
    """A flowedit route for the tiny model: few steps, synthesis-free gate by default."""
    return {
        "name": name,
        "match": {"sop_class": [VL_PHOTOGRAPHIC, SECONDARY_CAPTURE]},
        "pixels": "flowedit",
        "destinations": destinations,
        "flowedit": {
            "model": str(model_dir),
            "device": "cpu",
            "source_prompt": "a clinical photograph of a patient's skin",
            "target_prompt": "a clinical photograph of another person's skin",
            "params": params or {"num_steps": 6, "n_max": 4, "batch_size": 4},
            "gate": gate or {"method": "synthesis_free", "threshold": 0.5},
        },
    }


def keep_and_edit_routes(
    model_dir: Path, destinations: list[str], gate: dict[str, object] | None = None
) -> list[dict[str, object]]:
    """Two flowedit routes on the tiny model, so that a test sees both of the gate's answers:
    "keep" (VL Photographic) runs with n_max 0, an edit that returns its input, so the lesion
    survives and the gate accepts; "edit" (secondary captures) runs the tiny random model, whose
    output keeps no lesion, so the gate rejects. Both go through the whole pixel-job path."""
    keep = photo_route(model_dir, destinations, name="keep", gate=gate, params={"n_max": 0})
    keep["match"] = {"sop_class": [VL_PHOTOGRAPHIC]}
    edit = photo_route(model_dir, destinations, name="edit", gate=gate)
    edit["match"] = {"sop_class": [SECONDARY_CAPTURE]}
    return [keep, edit]
