"""Reading a site's folder of photographs and expert masks for the evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deid_core.errors import InvalidInputError
from deid_core.keys import ProjectKey
from gateway.photo_folder import PhotoFolder
from tests.support.evaluation_photos import skin_photo, write_photo_folder


def test_photographs_and_masks_are_paired_by_name(tmp_path: Path) -> None:
    photos, masks = write_photo_folder(tmp_path, 5)
    folder = PhotoFolder(photos, masks)
    assert len(folder) == 5
    assert [s.id for s in folder.sources] == ["p0001", "p0002", "p0003", "p0004", "p0005"]
    assert [s.relative for s in folder.sources][:3] == ["case00.png", "case01.png", "case02.jpg"]
    for i, photo in enumerate(folder):
        image, lesion = skin_photo(i)
        assert photo.image.shape == image.shape and photo.image.dtype == np.uint8
        assert photo.expert_mask is not None
        assert np.array_equal(photo.expert_mask, lesion)  # 8-bit and RGBA masks alike
    assert folder.unmatched_masks == 0


def test_seeds_are_stable_and_keyed(tmp_path: Path) -> None:
    photos, _ = write_photo_folder(tmp_path, 3, masks=False)
    plain = [p.seed for p in PhotoFolder(photos)]
    assert plain == [p.seed for p in PhotoFolder(photos)]
    assert len(set(plain)) == 3 and all(0 <= s < 2**63 for s in plain)
    keyed = [p.seed for p in PhotoFolder(photos, key=ProjectKey(b"a" * 40))]
    other = [p.seed for p in PhotoFolder(photos, key=ProjectKey(b"b" * 40))]
    assert keyed != plain and keyed != other


def test_max_side_and_limit(tmp_path: Path) -> None:
    photos, masks = write_photo_folder(tmp_path, 4)
    folder = PhotoFolder(photos, masks, max_side=88, limit=2)
    assert len(folder) == 2
    photo = folder[1]
    assert max(photo.image.shape[:2]) == 88
    assert photo.expert_mask is not None and photo.expert_mask.shape == (144, 176)


def test_hidden_files_other_files_and_a_masks_folder_inside_are_skipped(tmp_path: Path) -> None:
    photos, _ = write_photo_folder(tmp_path, 2, masks=False)
    (photos / ".thumbs").mkdir()
    Image.fromarray(skin_photo(9)[0]).save(photos / ".thumbs" / "x.png")
    (photos / "notes.txt").write_text("not a photograph")
    inner = photos / "masks"
    inner.mkdir()
    Image.fromarray(np.zeros((144, 176), np.uint8)).save(inner / "case00_mask.png")
    folder = PhotoFolder(photos, inner)
    assert [s.relative for s in folder.sources] == ["case00.png", "case01.png"]
    assert folder.sources[0].mask is not None and folder.sources[1].mask is None


def test_a_broken_file_is_left_out_and_reported(tmp_path: Path) -> None:
    photos, _ = write_photo_folder(tmp_path, 2, masks=False)
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    folder = PhotoFolder(photos)
    assert len(folder) == 2 and folder.unreadable == ["broken.png"]


def test_a_mask_of_another_shape_is_refused(tmp_path: Path) -> None:
    photos, masks = write_photo_folder(tmp_path, 1)
    (masks / "case00_segmentation.png").unlink()
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(masks / "case00_segmentation.png")
    with pytest.raises(InvalidInputError, match="expert mask is 100x100 px"):
        PhotoFolder(photos, masks)[0]


def test_two_masks_for_one_photograph_are_refused(tmp_path: Path) -> None:
    photos, masks = write_photo_folder(tmp_path, 1)
    Image.fromarray(np.zeros((144, 176), np.uint8)).save(masks / "case00.png")
    with pytest.raises(InvalidInputError, match="two expert masks"):
        PhotoFolder(photos, masks)


def test_an_empty_or_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not a folder"):
        PhotoFolder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="holds no photographs"):
        PhotoFolder(tmp_path / "empty")


def test_a_16_bit_image_is_left_out_not_rescaled(tmp_path: Path) -> None:
    photos, _ = write_photo_folder(tmp_path, 2, masks=False)
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(photos / "deep.png")
    folder = PhotoFolder(photos)
    assert folder.unreadable == ["deep.png"] and len(folder) == 2


def test_dicom_photographs_are_read_through_dicom_io(tmp_path: Path) -> None:
    pytest.importorskip("dicom_io.pixels", reason="DICOM pixel I/O (issue 4) is not merged yet")
    import pydicom.data

    # an RLE-compressed RGB secondary capture from pydicom's wheel (MIT), read without a download
    source = Path(pydicom.data.__file__).parent / "test_files" / "SC_rgb_rle.dcm"
    folder_path = tmp_path / "photos"
    folder_path.mkdir()
    (folder_path / "a.dcm").write_bytes(Path(source).read_bytes())
    (folder_path / "b").write_bytes(Path(source).read_bytes())  # no suffix: found by its preamble
    folder = PhotoFolder(folder_path)
    assert [s.kind for s in folder.sources] == ["dicom", "dicom"]
    photo = folder[1]
    assert photo.image.dtype == np.uint8 and photo.image.shape == (100, 100, 3)
    assert np.array_equal(photo.image, folder[0].image)
