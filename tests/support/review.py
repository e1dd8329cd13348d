"""Building blocks for review station tests: photographs, QA panels, a toy lesion gate, users,
a self-signed certificate.

The toy gate stands in for the FlowEdit step (issue 4) and the lesion gate (issue 5) until they
are merged, through the same `PixelStep` contract: it edits the photograph deterministically
(a colour shift outside the lesion and a lesion that shrinks), measures the lesion in both images
by redness, and rejects with the IoU, the threshold and the artifacts the real step keeps
(`panel.png`, `original.png`, `deidentified.png`) — unless a reviewer waived the gate, in which case
it accepts its own edit. It is registered as the "flowedit" pixel step for the test's duration.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
from argon2 import PasswordHasher
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, VLPhotographicImageStorage, generate_uid

from deid_core.deidentify import record_method
from deid_core.options import ProfileOption
from gateway import pixels as pixel_steps
from gateway.config import GatewayConfig
from gateway.events import QuarantineReason
from gateway.pixels import PixelAccepted, PixelContext, PixelOutcome, PixelRejected
from gateway.review.users import Role, set_user

#: Cheap argon2 parameters for tests (the station verifies any argon2 hash by its own parameters).
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
REVIEWER = ("rita", "reviewer-pass-1234")
VIEWER = ("victor", "viewer-pass-12345")
THRESHOLD = 0.67


def skin_photo(rows: int = 192, cols: int = 256, seed: int = 7, radius: int = 40) -> np.ndarray:
    """An RGB photograph-like image: skin tone with texture and one red lesion in the middle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    base = np.empty((rows, cols, 3), dtype=np.float64)
    base[..., 0], base[..., 1], base[..., 2] = 214.0, 168.0, 140.0
    base += rng.normal(0, 6, size=base.shape)
    base += (xx / cols * 18.0)[..., None]  # light from one side
    lesion = ((yy - rows / 2) / (radius * 0.8)) ** 2 + ((xx - cols / 2) / radius) ** 2 <= 1.0
    base[lesion] = base[lesion] * np.array([0.86, 0.45, 0.45])
    return np.clip(base, 0, 255).astype(np.uint8)


def redness_mask(image: np.ndarray) -> np.ndarray:
    """Where red dominates (a crude a* proxy; good enough for the toy gate)."""
    rgb = image.astype(np.int32)
    return (rgb[..., 0] - rgb[..., 1]) > 70


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def qa_panel(original: np.ndarray, edited: np.ndarray, value: float, threshold: float) -> bytes:
    """Original | de-identified | mask of each | the IoU, as one PNG."""
    masks = [redness_mask(original), redness_mask(edited)]
    tiles = [original, edited] + [
        np.repeat((m * 255).astype(np.uint8)[..., None], 3, 2) for m in masks
    ]
    h, w = original.shape[:2]
    panel = Image.new("RGB", (4 * w + 5 * 8, h + 44), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for i, (tile, title) in enumerate(
        zip(tiles, ["original", "de-identified", "lesion mask", "lesion mask"], strict=True)
    ):
        panel.paste(Image.fromarray(tile), (8 + i * (w + 8), 28))
        draw.text((8 + i * (w + 8), 8), title, fill=(30, 40, 50))
    draw.text((8, h + 30), f"IoU {value:.2f} (threshold {threshold:.2f})", fill=(160, 40, 0))
    out = io.BytesIO()
    panel.save(out, format="PNG")
    return out.getvalue()


def toy_edit(image: np.ndarray, seed: int) -> np.ndarray:
    """A deterministic "identity edit": new skin tone and texture, and a lesion that shrinks."""
    rng = np.random.default_rng(seed % (2**32))
    rows, cols = image.shape[:2]
    edited = skin_photo(rows, cols, seed=int(rng.integers(1 << 30)), radius=26).astype(np.float64)
    edited[..., 2] += 10.0
    return np.clip(edited, 0, 255).astype(np.uint8)


def photo_artifacts(seed: int = 1) -> tuple[dict[str, bytes], dict[str, float | str]]:
    """Artifacts and details as a lesion-gate rejection carries them."""
    original = skin_photo(seed=seed)
    edited = toy_edit(original, seed)
    value = iou(redness_mask(original), redness_mask(edited))
    return (
        {
            "panel.png": qa_panel(original, edited, value, THRESHOLD),
            "original.png": png(original),
            "deidentified.png": png(edited),
        },
        {"iou": round(value, 4), "threshold": THRESHOLD, "model": "toy test gate"},
    )


class ToyLesionGate:
    """The "flowedit" pixel step for tests (see the module docstring)."""

    name = "flowedit"

    def process(
        self, original: Dataset, deidentified: Dataset, context: PixelContext
    ) -> PixelOutcome:
        image = np.asarray(original.pixel_array, dtype=np.uint8)
        edited = toy_edit(image, context.seed)
        value = iou(redness_mask(image), redness_mask(edited))
        if value < THRESHOLD and not context.waive_gate:
            return PixelRejected(
                QuarantineReason.LESION_IOU_BELOW_THRESHOLD,
                {"iou": round(value, 4), "threshold": THRESHOLD, "model": "toy test gate"},
                {
                    "panel.png": qa_panel(image, edited, value, THRESHOLD),
                    "original.png": png(image),
                    "deidentified.png": png(edited),
                },
            )
        out = deidentified
        out.PixelData = edited.tobytes()
        out.ImageType = ["DERIVED", "SECONDARY"]
        out.DerivationDescription = "toy test edit (not a real model)"
        # the record every flowedit step leaves (gateway.interlock checks it before the outbox)
        assert context.derived_uid is not None
        out.SOPInstanceUID = context.derived_uid(str(original.SOPInstanceUID), "flowedit")
        if "MediaStorageSOPInstanceUID" in getattr(out, "file_meta", {}):
            out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
        record_method(out, ProfileOption.CLEAN_RECOGNIZABLE_VISUAL_FEATURES, "TEST MODEL")
        return PixelAccepted(out, {"iou": round(value, 4)})


@contextmanager
def toy_gate_registered() -> Iterator[None]:
    """Register the toy gate as "flowedit" and restore whatever was there before."""
    factories = pixel_steps._FACTORIES
    previous = factories.get("flowedit")

    def factory(cfg: GatewayConfig) -> ToyLesionGate:
        return ToyLesionGate()

    pixel_steps.register_pixel_step("flowedit", factory)
    try:
        yield
    finally:
        if previous is None:
            factories.pop("flowedit", None)
        else:
            factories["flowedit"] = previous


def write_photo_instance(path: Path, seed: int = 1) -> Dataset:
    """A VL Photographic Image (RGB, explicit little endian) with identifying test names."""
    image = skin_photo(seed=seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = VLPhotographicImageStorage
    ds.SOPClassUID = VLPhotographicImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "TEST^IDENTIFIABLE"
    ds.PatientID = "PID-4711"
    ds.Modality = "XC"
    ds.StudyDate = "20260101"
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = image.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = image.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def burned_in_ct(path: Path) -> bytes:
    """pydicom's CT_small with Burned In Annotation YES and identifying test names."""
    src = pydicom.data.get_testdata_file("CT_small.dcm", download=False)
    assert src is not None
    ds = pydicom.dcmread(src)
    ds.PatientName = "TEST^IDENTIFIABLE"
    ds.PatientID = "PID-4711"
    ds.BurnedInAnnotation = "YES"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def write_users(path: Path) -> Path:
    set_user(path, REVIEWER[0], Role.REVIEWER, REVIEWER[1], FAST_HASHER)
    set_user(path, VIEWER[0], Role.VIEWER, VIEWER[1], FAST_HASHER)
    return path


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1/localhost, made with openssl."""
    cert, key = folder / "review.crt", folder / "review.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key
