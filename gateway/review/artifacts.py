"""The images kept with a quarantine entry, and what each may show.

A pixel step's rejection carries artifacts (`PixelRejected.artifacts`), stored beside the
instance in the entry's folder. The station recognises them by name:

- ``*panel*.png`` — the QA panel (original, de-identified, both lesion masks, IoU);
- ``original*.png`` — the original photograph;
- ``deidentified*.png`` / ``deid*.png`` — the de-identified photograph (the list's thumbnail);
- anything else — shown as an image when it is PNG or JPEG, else offered as a download.

Everything except the de-identified image may show the original, so it counts as an original:
reviewers only, every view audited. The received instance itself (`instance.dcm`) is rendered by
`dicom_io.preview` for entries without images (e.g. a burned-in annotation).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePath

from PIL import Image

#: Artifact names the station serves (they come from our own pixel steps, but a URL is input).
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


class ArtifactKind(StrEnum):
    PANEL = "panel"
    ORIGINAL = "original"
    DEIDENTIFIED = "deidentified"
    OTHER = "other"


@dataclass(frozen=True)
class Artifact:
    name: str
    kind: ArtifactKind

    @property
    def is_image(self) -> bool:
        return PurePath(self.name).suffix.lower() in IMAGE_TYPES

    @property
    def media_type(self) -> str:
        return IMAGE_TYPES.get(PurePath(self.name).suffix.lower(), "application/octet-stream")

    @property
    def shows_original(self) -> bool:
        """Whether viewing it is a view of the original (audited)."""
        return self.kind is not ArtifactKind.DEIDENTIFIED

    @property
    def label(self) -> str:
        return {
            ArtifactKind.PANEL: "QA panel",
            ArtifactKind.ORIGINAL: "Original",
            ArtifactKind.DEIDENTIFIED: "De-identified",
            ArtifactKind.OTHER: self.name,
        }[self.kind]


def classify(name: str) -> Artifact:
    lower = name.lower()
    if "panel" in lower:
        kind = ArtifactKind.PANEL
    elif lower.startswith(("deidentified", "deid", "de-identified", "de_identified")):
        kind = ArtifactKind.DEIDENTIFIED
    elif lower.startswith("original"):
        kind = ArtifactKind.ORIGINAL
    else:
        kind = ArtifactKind.OTHER
    return Artifact(name, kind)


def artifacts_of(names: list[str]) -> list[Artifact]:
    """The entry's servable artifacts: panel first, then original, de-identified, others."""
    order = list(ArtifactKind)
    found = [classify(n) for n in names if SAFE_NAME.match(n)]
    return sorted(found, key=lambda a: (order.index(a.kind), a.name))


def thumbnail_png(data: bytes, max_side: int = 360) -> bytes:
    """A small PNG of an image artifact (for the list). Refuses absurd sizes (decompression bombs
    raise in Pillow) and anything Pillow cannot read."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (max_side, max_side))
        small = img.convert("RGB")
        small.thumbnail((max_side, max_side))
        out = io.BytesIO()
        small.save(out, format="PNG", optimize=False)
        return out.getvalue()
