"""A flowedit route on a running gateway with the local executor: what the lesion gate accepts is
forwarded as a derived, de-identified instance; what it rejects is quarantined with its panel; a
photograph whose pixels cannot be edited is quarantined, never forwarded."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from deid_core.keys import ProjectKey
from deid_core.lesion import LesionGate, LesionGateParams
from deid_core.models import build_tiny_model
from deid_core.seeds import derive_seed
from dicom_io.pixels import read_frames_rgb
from dicom_io.scu import StoreTarget, send_files
from gateway.config import GatewayConfig
from gateway.demo import FolderArchive
from gateway.events import LesionGateDecided
from gateway.executors import LocalExecutor
from gateway.photo import PhotoEngine
from tests.support.gateway import (
    GATEWAY_AE,
    KEY_TEXT,
    MODALITY_AE,
    config_dict,
    destination,
    make_key_file,
    parse,
    running_node,
    wait_until,
)
from tests.support.photos import (
    PATIENT_ID,
    PATIENT_NAME,
    VL_PHOTOGRAPHIC,
    keep_and_edit_routes,
    write_photos,
)

pytestmark = [pytest.mark.network, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny-sd3")


def healing_twin(images: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
    """A stubbed healthy twin (routing tests only): reddened pixels take the skin's colour, so
    the twin mask is exactly the lesion."""
    from skimage.color import rgb2lab

    out = images.copy()
    for k, image in enumerate(images):
        a = rgb2lab(image)[..., 1]
        red = a > np.median(a) + 10
        out[k][red] = np.median(image[~red], axis=0).astype(np.uint8)
    return out


def _config(tmp_path: Path, model: Path, port: int) -> GatewayConfig:
    gate = {"method": "twin", "threshold": 0.67}
    data = config_dict(
        tmp_path / "gw",
        make_key_file(tmp_path),
        destinations={"archive": destination("127.0.0.1", port, "ARCHIVE")},
        routes=keep_and_edit_routes(model, ["archive"], gate),
    )
    return parse(data)


def _executor(cfg: GatewayConfig) -> LocalExecutor:
    engine = PhotoEngine.from_config(cfg, threads=1)
    for route in engine.routes.values():
        route.gate = LesionGate(
            LesionGateParams(method="twin", twin_long_side=64), twin_generator=healing_twin
        )
    return LocalExecutor(engine, batch_size=4)


def test_gate_decides_what_is_forwarded_and_what_is_quarantined(
    tmp_path: Path, tiny_model: Path
) -> None:
    archive = FolderArchive(tmp_path / "archive")
    _, port = archive.start()
    cfg = _config(tmp_path, tiny_model, port)
    # 8 photographs: even ones VL Photographic (route keep: n_max 0, the lesion survives), odd
    # ones secondary captures (route edit: the tiny random model destroys the lesion); every
    # photograph has a lesion.
    photos = write_photos(tmp_path / "in", 8, per_study=4, lesion_every=1)
    try:
        with running_node(cfg, pixel_executor=_executor(cfg)) as (node, events):
            target = StoreTarget(GATEWAY_AE, *node.address, MODALITY_AE)  # type: ignore[misc]
            assert send_files(target, [p.path for p in photos]) == [0] * 8
            storage = node.storage
            assert storage is not None
            assert wait_until(
                lambda: len(archive.instances()) + len(storage.quarantine.list()) >= 8, 120
            )
            assert wait_until(lambda: node.backlog().journal_states["forwarded"] == 4, 30)
            decided = events.of(LesionGateDecided)
            entries = [storage.quarantine.show(row.id) for row in storage.quarantine.list()]
            states = node.backlog().journal_states
    finally:
        archive.stop()

    assert states["editing"] == 0
    rejections = {"lesion_vanished", "lesion_iou_below_threshold", "lesion_mask_unreliable"}
    assert sorted(e.route for e in decided) == ["edit"] * 4 + ["keep"] * 4
    assert all(e.outcome == "accepted" for e in decided if e.route == "keep")
    assert all(e.outcome in rejections for e in decided if e.route == "edit")
    assert all(e.iou == 1.0 for e in decided if e.route == "keep")

    # forwarded: the four VL photographs, as derived de-identified instances
    key = ProjectKey(KEY_TEXT.encode())
    originals = {p.sop_instance_uid: p for p in photos}
    forwarded = [pydicom.dcmread(path) for path in archive.instances()]
    assert len(forwarded) == 4
    seen_sources = set()
    for ds in forwarded:
        assert ds.SOPClassUID == VL_PHOTOGRAPHIC
        assert ds.SOPInstanceUID not in originals
        assert ds.SOPInstanceUID.startswith("2.25.")
        assert str(ds.PatientName) != PATIENT_NAME and ds.PatientID != PATIENT_ID
        assert ds.StudyInstanceUID not in {p.study_instance_uid for p in photos}
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert "FlowEdit" in ds.DerivationDescription
        assert "TEST MODEL" in ds.DerivationDescription
        assert ds.RecognizableVisualFeatures == "NO"
        methods = ds.DeidentificationMethod
        methods = [methods] if isinstance(methods, str) else list(methods)
        assert any("Clean Recognizable Visual Features" in m and "TEST MODEL" in m for m in methods)
        codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
        assert "113102" in codes
        seen_sources.add(int(ds.InstanceNumber))
    assert seen_sources == {1, 3, 5, 7}  # photo_0000, 0002, ... are the VL photographs

    # quarantined: the four secondary captures, each with reason, figures and QA panel
    assert len(entries) == 4
    for entry in entries:
        row = entry.row
        assert row.route == "edit"
        assert row.reason in rejections
        assert set(entry.artifacts) == {"panel.png", "original.png", "deidentified.png"}
        assert entry.details["outcome"] == row.reason
        assert "original_area_px" in entry.details and "iou_threshold" in entry.details
        panel = Image.open(io.BytesIO((entry.folder / "panel.png").read_bytes()))
        assert panel.format == "PNG" and panel.width >= 2 * 64
        kept = pydicom.dcmread(entry.folder / "instance.dcm")  # the received original
        assert str(kept.PatientName) == PATIENT_NAME
        original_png = np.asarray(Image.open(entry.folder / "original.png"))
        assert np.array_equal(original_png, read_frames_rgb(kept)[0])
        record = json.loads((entry.folder / "entry.json").read_text())
        assert record["reason"] == row.reason
    # the seeds are those of the key, the original UID and the route
    assert derive_seed(key, photos[1].sop_instance_uid, "edit", "identity", 0) >= 0


def test_photograph_that_cannot_be_decoded_is_quarantined_not_forwarded(
    tmp_path: Path, tiny_model: Path
) -> None:
    archive = FolderArchive(tmp_path / "archive")
    _, port = archive.start()
    cfg = _config(tmp_path, tiny_model, port)
    photos = write_photos(tmp_path / "in", 2, per_study=2, lesion_every=1)
    broken = pydicom.dcmread(photos[0].path)
    broken.PhotometricInterpretation = "YBR_ICT"  # not possible uncompressed: undecodable
    broken.save_as(photos[0].path, enforce_file_format=True)
    try:
        with running_node(cfg, pixel_executor=_executor(cfg)) as (node, _):
            target = StoreTarget(GATEWAY_AE, *node.address, MODALITY_AE)  # type: ignore[misc]
            assert send_files(target, [p.path for p in photos]) == [0, 0]
            storage = node.storage
            assert storage is not None
            assert wait_until(lambda: len(storage.quarantine.list()) == 2, 60)
            reasons = sorted(e.reason for e in storage.quarantine.list())
    finally:
        archive.stop()
    assert reasons[0] in ("lesion_iou_below_threshold", "lesion_vanished", "lesion_mask_unreliable")
    assert reasons[1] == "pixel_step_failed"
    assert archive.instances() == []
