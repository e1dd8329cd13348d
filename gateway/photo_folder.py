"""A folder of photographs to evaluate: PNG/JPEG files and DICOM files, with optional expert masks.

Files are found recursively and sorted by relative path; each gets an id (p0001, ...) that is all
the report prints, since file names may carry patient names. Photographs are decoded one at a time
when the evaluation asks for them, so a folder of large dermoscopy images never sits in memory at
once.

Expert masks are matched by file stem, with or without the suffixes the public sets use
(ISIC ``_segmentation``, Fitzpatrick17k/DermSynth3D ``_lesions``, and ``_mask``). A mask is any
image whose grey level is above 127 where the lesion is (8-bit 255, or RGBA white).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np
from PIL import Image, UnidentifiedImageError

from deid_core.errors import InvalidInputError
from deid_core.evaluation import Photo, fit_long_side
from deid_core.keys import ProjectKey
from deid_core.seeds import SEED_BITS, derive_seed

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
MASK_SUFFIXES = ("_segmentation", "_lesions", "_lesion", "_mask")
_PHOTO_MODES = frozenset({"RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "YCbCr"})


@dataclass(frozen=True)
class PhotoSource:
    id: str
    path: Path
    relative: str
    kind: str  # "image" or "dicom"
    mask: Path | None


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _mask_key(stem: str) -> str:
    for suffix in MASK_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _index_masks(masks: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in sorted(masks.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        key = _mask_key(path.stem)
        if key in index:
            raise InvalidInputError(
                f"two expert masks for the same photograph: {index[key].relative_to(masks)} and "
                f"{path.relative_to(masks)}"
            )
        index[key] = path
    return index


def read_mask(path: Path) -> np.ndarray:
    """An expert mask as bool (True = lesion)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L")) > 127
    except (OSError, UnidentifiedImageError) as exc:
        raise InvalidInputError(f"expert mask {path.name} cannot be read: {exc}") from None


def read_photo(path: Path) -> np.ndarray:
    """A PNG/JPEG photograph as (H, W, 3) uint8, pixels as stored (no EXIF rotation, so that expert
    masks drawn on the stored pixels stay aligned)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise InvalidInputError(f"photograph {path.name} cannot be read: {exc}") from None


def read_dicom_photo(path: Path) -> np.ndarray:
    """The first frame of a DICOM file as RGB (photographs have one); decoding to RGB belongs to
    dicom_io."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from dicom_io.pixels import read_frames_rgb

    try:
        dataset = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise InvalidInputError(f"DICOM file {path.name} cannot be read: {exc}") from None
    frames = read_frames_rgb(dataset)
    return np.ascontiguousarray(frames[0])


class PhotoFolder(Sequence[Photo]):
    """The photographs of a folder, loaded lazily, with seeds and expert masks."""

    def __init__(
        self,
        folder: Path,
        masks: Path | None = None,
        *,
        max_side: int | None = None,
        key: ProjectKey | None = None,
        limit: int | None = None,
    ) -> None:
        if not folder.is_dir():
            raise InvalidInputError(f"{folder} is not a folder of photographs")
        if masks is not None and not masks.is_dir():
            raise InvalidInputError(f"--masks {masks} is not a folder")
        self.folder = folder
        self.max_side = max_side
        self._key = key
        mask_index = _index_masks(masks) if masks is not None else {}
        masks_inside = masks.resolve() if masks is not None else None
        sources: list[PhotoSource] = []
        #: Files that looked like photographs but cannot be opened, or are not 8-bit photographs
        #: (relative paths): left out, and said so.
        self.unreadable: list[str] = []
        for path in sorted(folder.rglob("*")):
            hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
            if hidden or not path.is_file():
                continue
            if masks_inside is not None and masks_inside in path.resolve().parents:
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                kind = "image"
            elif _is_dicom(path):
                kind = "dicom"
            else:
                continue
            relative = path.relative_to(folder).as_posix()
            if not _opens(path, kind):
                self.unreadable.append(relative)
                continue
            mask = mask_index.get(_mask_key(path.stem))
            sources.append(PhotoSource(f"p{len(sources) + 1:04d}", path, relative, kind, mask))
            if limit is not None and len(sources) >= limit:
                break
        if not sources:
            broken = f"; {len(self.unreadable)} could not be read" if self.unreadable else ""
            raise InvalidInputError(
                f"{folder} holds no photographs (PNG, JPEG, TIFF, BMP or DICOM files){broken}"
            )
        self.sources = sources
        self.unmatched_masks = len(set(mask_index.values()) - {s.mask for s in sources})

    def __len__(self) -> int:
        return len(self.sources)

    @overload
    def __getitem__(self, index: int) -> Photo: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Photo]: ...

    def __getitem__(self, index: int | slice) -> Photo | Sequence[Photo]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.load(self.sources[index])

    def __iter__(self) -> Iterator[Photo]:
        for source in self.sources:
            yield self.load(source)

    def seed(self, source: PhotoSource) -> int:
        """The edit's noise seed: derived from the project key like the gateway's when a key is
        given, else a plain hash; either way a rerun of the evaluation gives the same pixels."""
        if self._key is not None:
            return derive_seed(self._key, "evaluation", source.relative, "identity")
        digest = hashlib.sha256(b"evaluation-seed\x00" + source.relative.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)

    def load(self, source: PhotoSource) -> Photo:
        try:
            image = (
                read_photo(source.path) if source.kind == "image" else read_dicom_photo(source.path)
            )
        except InvalidInputError as exc:
            raise InvalidInputError(f"{source.id} ({source.relative}): {exc}") from None
        mask = read_mask(source.mask) if source.mask is not None else None
        if mask is not None:
            _check_aspect(source, image.shape[:2], mask.shape)
        if self.max_side is not None:
            image = fit_long_side(image, self.max_side)
        return Photo(source.id, image, self.seed(source), mask)


def _opens(path: Path, kind: str) -> bool:
    """A cheap check at scan time (header only), so that a broken file is left out with a note
    instead of stopping an hour-long run halfway."""
    try:
        if kind == "image":
            with Image.open(path) as im:
                # 16-bit and float images are not photographs this path edits; converting them
                # to 8-bit RGB would silently rescale them
                return im.mode in _PHOTO_MODES and im.width > 0 and im.height > 0
        import pydicom

        dataset = pydicom.dcmread(path, stop_before_pixels=False, defer_size=1024)
        return "PixelData" in dataset or "FloatPixelData" in dataset
    except Exception:  # any failure to parse means "not usable"; the file is reported, not lost
        return False


def _check_aspect(source: PhotoSource, image: tuple[int, int], mask: tuple[int, ...]) -> None:
    """A mask of another aspect ratio belongs to another photograph: refuse rather than stretch."""
    if abs(image[0] / image[1] - mask[0] / mask[1]) > 0.02 * image[0] / image[1]:
        raise InvalidInputError(
            f"{source.id} ({source.relative}): expert mask is {mask[1]}x{mask[0]} px but the "
            f"photograph is {image[1]}x{image[0]} px"
        )
