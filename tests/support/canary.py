"""A PHI-planted corpus, built in code from pydicom's bundled test files.

Every attribute of PS3.15 Table E.1-1 (basic action never K) gets a unique canary value at the top
level, and a rotating share of them again inside sequence items at depth 1 and 2; private blocks
(a private creator that is itself a canary, plain private elements, a private sequence with public
and private canaries inside, a large private block), non-table free text, overlay and curve groups,
an icon image, the File Meta Information, the 128-byte preamble and the COM/APP1 segments of
compressed frames carry canaries too. Instances
refer to each other (study, series, frame of reference, referenced instance) with the original UIDs
so that a test can check the references still resolve after de-identification.

Text canaries all start with CANARY_PREFIX, so a single search finds any of them (also partially
leaked ones); dates, times, numbers and UIDs cannot carry that prefix and are listed one by one in
`PlantedFile.needles`, each checked to occur nowhere in the input file before planting.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames, parse_basic_offsets
from pydicom.sequence import Sequence

from deid_core.standard import TableRow, load_table

CANARY_PREFIX = "CNRY"

#: Varied IODs, encodings and structures from pydicom's own test files (MIT licence, see
#: pydicom's test_files/README.txt for each file's origin).
BASE_FILES = (
    "CT_small.dcm",  # CT, explicit LE, GE private block, sequences
    "MR_small.dcm",  # MR
    "MR_small_implicit.dcm",  # implicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "ExplVR_BigEnd.dcm",  # US, big endian
    "SC_rgb_small_odd.dcm",  # SC RGB, odd size
    "SC_rgb_rle.dcm",  # RLE encapsulated
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, sequences
    "JPEG2000.dcm",  # JPEG 2000, private elements
    "examples_palette.dcm",  # US palette colour
    "test-SR.dcm",  # Comprehensive SR: deep content tree
    "reportsi.dcm",  # Basic Text SR
    "liver_1frame.dcm",  # Segmentation: functional groups
    "rtplan.dcm",  # RT Plan, implicit VR, nested beams
    "rtdose.dcm",  # RT Dose
    "waveform_ecg.dcm",  # 12-lead ECG waveform, private elements
    "examples_overlay.dcm",  # MR with an overlay plane
    "JPGExtended.dcm",  # SC, JPEG extended, 65 private elements
)
#: Non-ASCII Specific Character Sets (patient names kept as they are and searched for).
CHARSET_FILES = ("chrH31.dcm", "chrRuss.dcm", "chrX1.dcm", "chrArab.dcm")

#: Non-table sequences used as containers at depth 1 and 2 (both kept by the profile, so their
#: items are de-identified rather than dropped wholesale).
DEPTH1 = 0x00082218  # Anatomic Region Sequence
DEPTH2 = 0x00082220  # Anatomic Region Modifier Sequence
REFERENCES = 0x00081115  # Referenced Series Sequence
REFERENCED_INSTANCES = 0x0008114A  # Referenced Instance Sequence


@dataclass
class PlantedFile:
    path: Path
    base: str
    #: Original UIDs, to check references after de-identification.
    study_uid: str
    series_uid: str
    sop_uid: str
    frame_of_reference_uid: str
    #: (series UID, SOP instance UID) of the instance this one refers to, if any.
    refers_to: tuple[str, str] | None
    #: Values without the canary prefix that must not appear in any output byte.
    needles: list[bytes] = field(default_factory=list)
    #: Needles that are dates (DA) or times (TM): shifted dates may meet another planted date by
    #: chance, and times are kept under Retain Longitudinal Modified Dates by design.
    temporal: list[bytes] = field(default_factory=list)
    #: Every text canary planted (each starts with CANARY_PREFIX), for counting leaks.
    texts: list[bytes] = field(default_factory=list)


@dataclass
class Corpus:
    files: list[PlantedFile]

    def needles(self) -> list[bytes]:
        return [n for f in self.files for n in f.needles]


class _Planter:
    def __init__(self, rng: random.Random, original: bytes) -> None:
        self.rng = rng
        self.original = original
        self.counter = 0
        self.needles: list[bytes] = []
        self.temporal: list[bytes] = []
        self.texts: list[bytes] = []

    def text(self, max_len: int = 16) -> str:
        self.counter += 1
        value = f"{CANARY_PREFIX}{self.counter:05d}{self.rng.getrandbits(16):04X}"
        self.texts.append(value.encode())
        return value

    def _unique(self, make: object, temporal: bool = False) -> str:
        while True:
            value = make()  # type: ignore[operator]
            if value.encode() not in self.original:
                (self.temporal if temporal else self.needles).append(value.encode())
                return value

    def uid(self) -> str:
        return self._unique(lambda: "2.25." + str(self.rng.getrandbits(125) | (1 << 124)))

    def date(self) -> str:
        return self._unique(
            lambda: (
                f"19{self.rng.randint(1, 19):02d}{self.rng.randint(1, 12):02d}"
                f"{self.rng.randint(1, 28):02d}"
            ),
            temporal=True,
        )

    def time(self) -> str:
        return self._unique(
            lambda: (
                f"{self.rng.randint(0, 23):02d}{self.rng.randint(0, 59):02d}"
                f"{self.rng.randint(0, 59):02d}.{self.rng.randint(100000, 999999)}"
            ),
            temporal=True,
        )

    def datetime(self) -> str:
        # A shifted DT never equals its original, and a kept one (Full Dates) is by design:
        # DT canaries are ordinary needles.
        return self._unique(lambda: self.date_raw() + self.time_raw())

    def date_raw(self) -> str:
        r = self.rng
        return f"19{r.randint(1, 19):02d}{r.randint(1, 12):02d}{r.randint(1, 28):02d}"

    def time_raw(self) -> str:
        r = self.rng
        return (
            f"{r.randint(0, 23):02d}{r.randint(0, 59):02d}{r.randint(0, 59):02d}"
            f".{r.randint(100000, 999999)}"
        )

    def number(self, vr: str) -> str:
        if vr == "DS":
            return self._unique(lambda: f"0.{self.rng.randint(10**11, 10**12 - 1)}")
        return self._unique(lambda: str(self.rng.randint(10**8, 2 * 10**9)))

    def code_item(self) -> Dataset:
        item = Dataset()
        item.CodeValue = self.text()
        item.CodingSchemeDesignator = self.text()
        item.CodeMeaning = self.text(64)
        return item

    def value(self, vr: str, depth: int) -> object:
        vr = vr.split(" or ")[0]
        if vr in ("AE", "CS", "SH"):
            return self.text(16)
        if vr in ("LO", "LT", "ST", "UT", "UC"):
            return self.text(64) + " " + self.text(64)
        if vr == "PN":
            return f"{self.text()}^{self.text()}"
        if vr == "UR":
            return f"https://{self.text().lower()}.example/{self.text()}"
        if vr == "UI":
            return self.uid()
        if vr == "DA":
            return self.date()
        if vr == "TM":
            return self.time()
        if vr == "DT":
            return self.datetime()
        if vr in ("DS", "IS"):
            return self.number(vr)
        if vr == "AS":
            return "042Y"
        if vr in ("US", "SS", "UL", "SL", "SV", "UV", "AT"):
            return 4242
        if vr in ("FL", "FD"):
            return 42.42
        if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            data = self.text(16).encode().ljust(16, b"_")
            return data
        if vr == "SQ":
            item = self.code_item()
            if depth < 3:
                item.PatientComments = self.text(64)
                item.PersonName = self.text()
            return Sequence([item])
        raise ValueError(f"no canary for VR {vr}")


def _tag(row: TableRow) -> int:
    return int(row.tag[1:5] + row.tag[6:10], 16)


def _plant_rows(ds: Dataset, rows: list[TableRow], planter: _Planter, depth: int) -> None:
    for row in rows:
        tag = _tag(row)
        vr = row.vr or "LO"
        if tag >> 16 in (0x0000, 0x0002):  # command set: pydicom refuses to write it into files
            continue
        ds[tag] = DataElement(tag, vr.split(" or ")[0], planter.value(vr, depth))


def _free_text_tags() -> list[tuple[int, str]]:
    table = load_table()
    return sorted(
        (tag, entry[0])
        for tag, entry in DicomDictionary.items()
        if entry[0] in ("LT", "ST", "UT", "UC")
        and not entry[3]
        and table.lookup(tag) is None
        and tag >> 16 not in (0x0000, 0x0002, 0x0004)
    )


def _plant_private(ds: Dataset, planter: _Planter, big: bool, hostile: bool) -> None:
    ds.add_new(0x00090010, "LO", planter.text(64))  # a canary as the private creator
    ds.add_new(0x00091001, "LO", planter.text(64))
    ds.add_new(0x00091002, "UN", planter.text(16).encode().ljust(16, b"_"))
    inner = Dataset()
    inner.PatientName = planter.text()
    inner.add_new(0x00110010, "LO", "CANARY INNER CREATOR")
    inner.add_new(0x00111001, "LT", planter.text(64))
    ds.add_new(0x00091003, "SQ", Sequence([inner]))
    if hostile:
        # A vendor block that Retain Safe Private knows, holding text where a number belongs
        # (pydicom's private dictionary says FD: tools that decode it by that VR fail).
        ds.add_new(0x00190010, "LO", "SIEMENS MR HEADER")
        ds.add_new(0x0019100C, "IS", "1000")
        ds.add_new(0x0019100E, "LO", planter.text(64))
    if big:
        ds.add_new(0x00290010, "LO", "CANARY BULK")
        for i in range(0x00, 0xFF):
            ds.add_new(0x00291000 | i, "LO", planter.text(64))


def plant_dataset(
    ds: Dataset, planter: _Planter, index: int, charset: bool, hostile: bool = True
) -> None:
    table = load_table()
    rows = [r for r in table.rows if not r.is_masked]
    keep_name = ds.get("PatientName") if charset else None
    _plant_rows(ds, rows, planter, 0)
    if keep_name is not None:
        ds.PatientName = keep_name
    # Depth 1 and 2: a rotating third of the rows in each file.
    share = rows[index % 3 :: 3]
    level1 = Dataset()
    level2 = Dataset()
    _plant_rows(level1, share, planter, 1)
    _plant_rows(level2, share, planter, 2)
    level1[DEPTH2] = DataElement(DEPTH2, "SQ", Sequence([level2]))
    ds[DEPTH1] = DataElement(DEPTH1, "SQ", Sequence([level1]))
    # Free text outside the table, at the top and at depth 1.
    free = _free_text_tags()
    for tag, vr in planter.rng.sample(free, 8):
        ds[tag] = DataElement(tag, vr, planter.text(64))
    for tag, vr in planter.rng.sample(free, 4):
        level1[tag] = DataElement(tag, vr, planter.text(64))
    # Overlay plane and curve (repeating groups), icon image.
    ds.add_new(0x60000010, "US", 8)
    ds.add_new(0x60000011, "US", 8)
    ds.add_new(0x60000022, "LO", planter.text(64))
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60003000, "OW", planter.text(16).encode().ljust(16, b"_"))
    ds.add_new(0x60004000, "LT", planter.text(64))
    ds.add_new(0x50000022, "LO", planter.text(64))
    ds.add_new(0x50003000, "OB", planter.text(16).encode().ljust(16, b"_"))
    icon = Dataset()
    icon.Rows = 2
    icon.Columns = 8
    icon.BitsAllocated = 8
    icon.add_new(0x7FE00010, "OB", planter.text(16).encode())
    ds.IconImageSequence = Sequence([icon])
    _plant_private(ds, planter, big=index % 4 == 0, hostile=hostile)
    _plant_pixel_comments(ds, planter)


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _j2k_main_header_end(frame: bytes) -> int | None:
    """Offset of the first SOT of a JPEG 2000 codestream (end of its main header)."""
    i = 2
    while i + 4 <= len(frame) and frame[i] == 0xFF:
        if frame[i + 1] == 0x90:
            return i
        i += 2 + struct.unpack(">H", frame[i + 2 : i + 4])[0]
    return None


def _plant_pixel_comments(ds: Dataset, planter: _Planter) -> None:
    """Compressed frames carry text outside the header: a COM segment (and for JPEG an XMP
    APP1) with a canary in every JPEG / JPEG 2000 frame. Decoders ignore them."""
    if "PixelData" not in ds or not ds["PixelData"].is_undefined_length:
        return
    frames = list(
        generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1))
    )
    planted = []
    for frame in frames:
        if frame.startswith(b"\xff\xd8"):
            text = planter.text(16).encode()
            xmp = b"http://ns.adobe.com/xap/1.0/\x00" + planter.text(16).encode()
            frame = frame[:2] + _segment(0xFE, text) + _segment(0xE1, xmp) + frame[2:]
        elif frame.startswith(b"\xff\x4f\xff\x51"):
            at = _j2k_main_header_end(frame)
            if at is None:
                return
            frame = (
                frame[:at] + _segment(0x64, b"\x00\x01" + planter.text(16).encode()) + frame[at:]
            )
        else:
            return  # RLE and others: no place for text
        planted.append(frame)
    ds.PixelData = encapsulate(planted, has_bot=bool(parse_basic_offsets(ds.PixelData)))


def build_corpus(
    dest: Path,
    copies: int = 1,
    seed: int = 1234,
    charset: bool = True,
    limit: int | None = None,
    hostile: bool = True,
) -> Corpus:
    """Write the planted corpus into `dest` (copies x base files, at most `limit` files).

    `hostile=False` leaves out the one element planted to break decoders (text in a vendor's
    numeric private slot), so that peer tools can be timed on the rest in a benchmark."""
    rng = random.Random(seed)
    dest.mkdir(parents=True, exist_ok=True)
    sources = [(name, get_testdata_file(name), False) for name in BASE_FILES]
    if charset:
        by_name = {Path(p).name: p for p in get_charset_files()}
        sources += [(name, by_name[name], True) for name in CHARSET_FILES]
    files: list[PlantedFile] = []
    for copy in range(copies):
        group_uids: dict[int, tuple[str, str]] = {}
        previous: PlantedFile | None = None
        for index, (name, source, is_charset) in enumerate(sources):
            assert source is not None, name
            if limit is not None and len(files) >= limit:
                break
            original = Path(source).read_bytes()
            ds = pydicom.dcmread(source)
            planter = _Planter(random.Random(rng.getrandbits(64)), original)
            plant_dataset(ds, planter, index, is_charset, hostile)
            group = index // 5
            if group not in group_uids:
                group_uids[group] = (planter.uid(), planter.uid())
            study, frame = group_uids[group]
            series, sop = planter.uid(), planter.uid()
            ds.StudyInstanceUID = study
            ds.FrameOfReferenceUID = frame
            ds.SeriesInstanceUID = series
            ds.SOPInstanceUID = sop
            refers_to = None
            if previous is not None:
                ref = Dataset()
                ref.SeriesInstanceUID = previous.series_uid
                inst = Dataset()
                inst.ReferencedSOPClassUID = ds.SOPClassUID
                inst.ReferencedSOPInstanceUID = previous.sop_uid
                ref[REFERENCED_INSTANCES] = DataElement(
                    REFERENCED_INSTANCES, "SQ", Sequence([inst])
                )
                ds[REFERENCES] = DataElement(REFERENCES, "SQ", Sequence([ref]))
                refers_to = (previous.series_uid, previous.sop_uid)
            meta = ds.file_meta
            meta.MediaStorageSOPInstanceUID = sop
            meta.SourceApplicationEntityTitle = planter.text(16)
            meta.SendingApplicationEntityTitle = planter.text(16)
            meta.ImplementationVersionName = planter.text(16)
            meta.PrivateInformationCreatorUID = planter.uid()
            meta.PrivateInformation = planter.text(16).encode()
            ds.preamble = planter.text(16).encode().ljust(128, b"\x00")
            path = dest / f"{copy:03d}-{index:02d}-{Path(name).stem}.dcm"
            ds.save_as(path, enforce_file_format=True)
            planted = PlantedFile(
                path=path,
                base=name,
                study_uid=study,
                series_uid=series,
                sop_uid=sop,
                frame_of_reference_uid=frame,
                refers_to=refers_to,
                needles=planter.needles,
                temporal=planter.temporal,
                texts=planter.texts,
            )
            if is_charset and keep_name_bytes(original):
                planted.needles.extend(keep_name_bytes(original))
            files.append(planted)
            previous = planted
    return Corpus(files)


def keep_name_bytes(original: bytes) -> list[bytes]:
    """The raw bytes of the patient name of a character-set sample (its own PHI)."""
    ds = pydicom.dcmread(__import__("io").BytesIO(original))
    raw = ds.get_item(0x00100010)
    if raw is None or not raw.value:
        return []
    value = raw.value if isinstance(raw.value, bytes) else str(raw.value).encode()
    return [part for part in value.split(b"=") if len(part) >= 4]


def _found(needle: bytes, data: bytes) -> bool:
    """A numeric needle counts only as a whole token: a date's 8 digits can occur by chance inside
    a 39-digit pseudonymous UID."""
    start = data.find(needle)
    while start >= 0:
        before = data[start - 1 : start]
        after = data[start + len(needle) : start + len(needle) + 1]
        if not (before.isdigit() or before == b".") and not (after.isdigit() or after == b"."):
            return True
        start = data.find(needle, start + 1)
    return False


def leaks(data: bytes, needles: list[bytes]) -> list[str]:
    """Where canaries appear in output bytes: the prefix in ASCII (any case), UTF-16 (both
    byte orders), and every listed needle."""
    found = []
    lower = data.lower()
    prefix = CANARY_PREFIX.encode()
    if prefix.lower() in lower:
        found.append("canary prefix (ASCII)")
    for codec in ("utf-16-le", "utf-16-be", "utf-32-le"):
        if CANARY_PREFIX.encode(codec) in data:
            found.append(f"canary prefix ({codec})")
    found.extend(f"needle {n!r}" for n in needles if _found(n, data))
    return found


__all__ = ["CANARY_PREFIX", "Corpus", "PlantedFile", "build_corpus", "leaks", "plant_dataset"]
