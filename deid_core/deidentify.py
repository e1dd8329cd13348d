"""The de-identifier: applies a ConfidentialityProfile to a dataset with keyed pseudonyms.

`Deidentifier.deidentify(ds)` returns a new dataset; the input is never modified. Every element at
every depth gets exactly one decision from the profile's rules (`explain` lists them, without
values). Elements that are kept are carried over as they were read (raw bytes, no decoding), so
their encoding and character set stay exactly as received; only values this module writes are
new, and those are ASCII, valid in any Specific Character Set.

Sequences: X removes the sequence with all its items; Z leaves it empty; K and U keep the items and
de-identify each one; D keeps the items with every value in them replaced by a dummy ("dummy
mode"); C keeps them with descriptive text cleaned ("clean mode", see `deid_core.clean`).
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID, UID_dictionary

from deid_core import iod
from deid_core.actions import Action, resolve
from deid_core.clean import clean_text
from deid_core.codes import verified_meaning
from deid_core.dates import shift_values
from deid_core.encapsulated import strip_pixel_data
from deid_core.errors import ClinicalContentLossError, InvalidInputError
from deid_core.keys import ProjectKey
from deid_core.options import BASIC_PROFILE_CODE, OPTION_CODES, TABLE_COLUMNS, ProfileOption
from deid_core.profile import Category, ConfidentialityProfile, Rule, keyword_of
from deid_core.pseudonyms import Pseudonymizer
from deid_core.standard import load_table
from deid_core.values import (
    BINARY_VRS,
    DUMMY,
    DUMMY_CODE_TAGS,
    FREE_TEXT_VRS,
    KNOWN_CODING_SCHEMES,
    NEVER,
    STRING_VRS,
    TEMPORAL_KEPT,
    VALID_AE,
    encode_value,
)

#: This implementation's UID (File Meta Information), fixed for the project.
IMPLEMENTATION_CLASS_UID = "2.25." + str(
    int.from_bytes(hashlib.sha256(b"deid-gateway implementation class").digest()[:16], "big")
)
IMPLEMENTATION_VERSION_NAME = "DEIDGW_0_1"

_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DICOMDIR = "1.2.840.10008.1.3.10"

_PATIENT_ID = 0x00100020
_PATIENT_NAME = 0x00100010
_SOP_CLASS = 0x00080016
_SOP_INSTANCE = 0x00080018
_STUDY_UID = 0x0020000D
_BIRTH_DATE = 0x00100030
_ISSUER = 0x00100021
_ISSUER_QUALIFIERS = 0x00100024
_PIXEL_DATA = 0x7FE00010
_CODE_MEANING = 0x00080104
_EXTENDED_OFFSETS = 0x7FE00001
_EXTENDED_LENGTHS = 0x7FE00002
_NUMBER_OF_FRAMES = 0x00280008

_ACTIONS = {a.value: a for a in Action}
_MODE_CATEGORIES = frozenset({Category.KEEP, Category.CODE, Category.TEXT})
# (codes are settled by context in every mode; see _Run._mode_code)


class Mode(IntEnum):
    """How values not covered by a table row are treated inside a sequence."""

    NORMAL = 0
    CLEAN = 1
    DUMMY = 2


@dataclass(frozen=True)
class ClinicalTrialSubject:
    """Clinical Trial Subject module values written into every output (from the site's config).

    The Subject ID is the pseudonymous patient ID, so it is not configured here."""

    sponsor_name: str
    protocol_id: str
    protocol_name: str | None = None
    site_id: str | None = None
    site_name: str | None = None


@dataclass(frozen=True)
class AttributeDecision:
    """One line of `explain`: what happens to an attribute and why. Never holds a value."""

    path: str
    tag: str
    keyword: str
    action: str
    rule: str
    reason: str


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def record_method(ds: Dataset, option: ProfileOption | None, note: str | None = None) -> None:
    """Record in `ds` that a de-identification step was applied (pixel steps call this after they
    succeed): appends the option's CID 7050 code to De-identification Method Code Sequence and a
    line to De-identification Method, and for Clean Pixel Data / Clean Recognizable Visual
    Features sets Burned In Annotation / Recognizable Visual Features to NO. `option=None` records
    the Basic Profile itself. `note` must not contain PHI (it is written into the output)."""
    code, meaning = BASIC_PROFILE_CODE if option is None else OPTION_CODES[option]
    item = Dataset()
    item.CodeValue = code
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    seq = ds.get("DeidentificationMethodCodeSequence")
    if seq is None:
        ds.DeidentificationMethodCodeSequence = Sequence([item])
    elif not any(getattr(i, "CodeValue", None) == code for i in seq):
        seq.append(item)
    current = ds.get("DeidentificationMethod")
    methods = [] if current is None else [current] if isinstance(current, str) else list(current)
    line = meaning if not note else f"{meaning}: {note}"
    line = line[:64]
    if line not in methods:
        methods.append(line)
    ds.DeidentificationMethod = methods if len(methods) > 1 else methods[0]
    if option is ProfileOption.CLEAN_PIXEL_DATA:
        ds.BurnedInAnnotation = "NO"
    elif option is ProfileOption.CLEAN_RECOGNIZABLE_VISUAL_FEATURES:
        ds.RecognizableVisualFeatures = "NO"


def _keep(elem: DataElement | RawDataElement) -> DataElement | RawDataElement:
    """A kept element for the output: raw ones are immutable and shared, decoded ones copied so
    that changing the output never changes the input."""
    return elem if isinstance(elem, RawDataElement) else copy.deepcopy(elem)


def _vr_of(rule: Rule, elem: DataElement | RawDataElement) -> str:
    """The VR to write: the dictionary's, or the file's when the dictionary gives a choice."""
    vr = rule.vr
    raw_vr = elem.VR
    if vr and len(vr) == 2:
        return vr
    if raw_vr and len(raw_vr) == 2 and raw_vr != "UN":
        return str(raw_vr)
    if vr:
        return vr.split(" or ")[0]
    return str(raw_vr) if raw_vr else "UN"


class _Run:
    """The state of de-identifying (or explaining) one dataset."""

    def __init__(
        self,
        deid: Deidentifier,
        src: Dataset,
        trace: list[AttributeDecision] | None,
    ) -> None:
        self.profile = deid.profile
        self.pseudo = deid.pseudonymizer
        self.trace = trace
        sop_class = self._text(src, src.get_item(_SOP_CLASS)) if _SOP_CLASS in src else ""
        self.iod_name = iod.iod_name(sop_class)
        self.types = iod.iod_types(sop_class)
        pid_elem = src.get_item(_PATIENT_ID) if _PATIENT_ID in src else None
        self.patient_id = self._text(src, pid_elem) if pid_elem is not None else ""
        #: Who the patient is, for every patient pseudonym (see Pseudonymizer.patient_identity).
        self.identity: dict[str, str] = {
            "issuer": self._issuer(src) or deid.default_issuer,
            "name": self._text(src, src.get_item(_PATIENT_NAME)) if _PATIENT_NAME in src else "",
            "birth_date": (
                self._text(src, src.get_item(_BIRTH_DATE)) if _BIRTH_DATE in src else ""
            ),
            "study_uid": self._text(src, src.get_item(_STUDY_UID)) if _STUDY_UID in src else "",
        }
        self.subject_id = self.pseudo.patient_id(
            self.patient_id,
            self.identity["issuer"],
            name=self.identity["name"],
            birth_date=self.identity["birth_date"],
            study_uid=self.identity["study_uid"],
        )
        self.encoding = _encoding(src)
        meta = getattr(src, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID", "") if meta is not None else ""
        self.transfer_syntax = str(syntax or "").strip(" \x00")
        self.shift: int | None = None
        if deid.profile.has(ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES):
            self.shift = self.pseudo.date_shift_days(
                self.patient_id,
                self.identity["issuer"],
                name=self.identity["name"],
                birth_date=self.identity["birth_date"],
                study_uid=self.identity["study_uid"],
            )

    def _issuer(self, src: Dataset) -> str:
        """Issuer of Patient ID, else the Universal or Local Namespace Entity ID of its
        qualifiers; "" when the instance names none."""
        if _ISSUER in src:
            issuer = self._text(src, src.get_item(_ISSUER)).strip()
            if issuer:
                return issuer
        if _ISSUER_QUALIFIERS in src:
            items = self._value(src, src.get_item(_ISSUER_QUALIFIERS))
            for item in items or ():
                for tag in (0x00400032, 0x00400031):
                    if isinstance(item, Dataset) and tag in item:
                        text = self._text(item, item.get_item(tag)).strip()
                        if text:
                            return text
        return ""

    # --- reading values -------------------------------------------------------------------

    @staticmethod
    def _value(src: Dataset, elem: DataElement | RawDataElement) -> Any:
        if isinstance(elem, RawDataElement):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return convert_raw_data_element(elem, encoding=src._character_set, ds=src).value
            except Exception:
                return None
        return elem.value

    def _text(self, src: Dataset, elem: DataElement | RawDataElement | None) -> str:
        """A string value as text (multi-valued joined by backslash); "" when unreadable."""
        if elem is None:
            return ""
        value = elem.value
        if isinstance(elem, RawDataElement) and isinstance(value, bytes) and elem.VR != "SQ":
            if elem.VR in ("UI", "DA", "DT", "TM", "CS", "AE", "AS", "DS", "IS"):
                return value.decode("latin-1").strip(" \x00")
            value = self._value(src, elem)
        if value is None:
            return ""
        if isinstance(value, bytes):
            return value.decode("latin-1").strip(" \x00")
        if isinstance(value, str):
            return value
        if isinstance(value, Iterable):
            return "\\".join(str(v) for v in value)
        return str(value)

    # --- writing values -------------------------------------------------------------------

    def _make(self, tag: int, vr: str, value: Any) -> DataElement | RawDataElement:
        """A new element, already encoded in the dataset's own encoding when that is known (a
        raw element costs a fraction of a DataElement to build and to write)."""
        implicit, little = self.encoding
        if implicit is not None:
            data = encode_value(vr, value, bool(little))
            if data is not None:
                return RawDataElement(BaseTag(tag), vr, len(data), data, 0, implicit, bool(little))
        return DataElement(tag, vr, value)

    # --- explain ----------------------------------------------------------------------------

    def _note(self, path: str, tag: int, action: str, rule: str, reason: str) -> None:
        assert self.trace is not None
        keyword = keyword_of(tag) if not (tag >> 16) & 1 else ""
        name = keyword or _tag_text(tag)
        self.trace.append(
            AttributeDecision(f"{path}{name}", _tag_text(tag), keyword, action, rule, reason)
        )

    # --- the walk ---------------------------------------------------------------------------

    def walk(self, src: Dataset, depth: int, mode: Mode, path: str) -> Dataset:
        out = Dataset()
        read_implicit, read_little = _encoding(src)
        out.set_original_encoding(read_implicit, read_little, src.original_character_set)
        out._parent_encoding = src._parent_encoding
        if hasattr(src, "_pixel_rep"):
            out._pixel_rep = src._pixel_rep
        profile = self.profile
        rules = profile._cache
        out_dict = out._dict
        tracing = self.trace is not None
        fast = mode is Mode.NORMAL and not tracing
        privates: list[tuple[int, DataElement | RawDataElement]] = []
        for key, elem in src._dict.items():
            tag = int(key)  # plain int: BaseTag compares in Python, int in C
            if (tag >> 16) & 1:
                privates.append((tag, elem))
                continue
            rule = rules.get(tag) or profile.rule(tag)
            if rule.vr != "SQ" and (
                elem.VR == "SQ"
                or (
                    type(elem) is RawDataElement
                    and elem.length == 0xFFFFFFFF
                    and tag != _PIXEL_DATA
                )
            ):
                # Items (undefined length, or read as a sequence from UN) under a tag that is
                # not a sequence: whatever they hide cannot be kept as it is, nor written as a
                # sequence the dictionary does not know.
                if tracing:
                    self._note(path, tag, "X", "X", "items under a non-sequence tag: removed")
                continue
            if fast:
                # Most elements are settled by the rule alone: drop, or carry the raw bytes over.
                if rule.action is Action.REMOVE:
                    continue
                if (
                    rule.action is Action.KEEP
                    and rule.vr != "SQ"
                    and type(elem) is RawDataElement
                    and elem.VR != "SQ"
                    and tag != _PIXEL_DATA
                ):
                    out_dict[key] = elem
                    continue
            code = rule.code
            if rule.category == Category.CODE or (
                mode is not Mode.NORMAL and rule.category in _MODE_CATEGORIES
            ):
                code = self._mode_code(src, rule, elem, mode)
            if "/" in code:
                attr_type = iod.attribute_type(tag, self.types if depth == 0 else None)
                action = resolve(code, attr_type)
            else:
                action = _ACTIONS[code]
            slot = -1
            if tracing:
                assert self.trace is not None
                slot = len(self.trace)
                why = self._why(rule, code, action, depth, tag, mode)
                self._note(path, tag, action.value, code, why)
            if action is Action.REMOVE:
                continue
            vr = _vr_of(rule, elem)
            new: DataElement | RawDataElement | None
            if tag == _PIXEL_DATA and action is Action.KEEP:
                new = self._pixel_data(src, out, elem)
            elif tag == _CODE_MEANING and action is Action.KEEP:
                new = self._code_meaning(src, elem)
            else:
                new = self._apply(src, tag, elem, vr, action, rule, depth, mode, path)
            if new is None:
                if self.trace is not None:
                    d = self.trace[slot]
                    self.trace[slot] = AttributeDecision(
                        d.path, d.tag, d.keyword, "X", d.rule, d.reason + "; unreadable: removed"
                    )
                continue
            out_dict[key] = new
        if privates:
            self._privates(src, out, privates, depth, path)
        return out

    def _why(self, rule: Rule, code: str, action: Action, depth: int, tag: int, mode: Mode) -> str:
        reason = rule.reason
        if mode is not Mode.NORMAL and code != rule.code:
            inside = "dummied (D)" if mode is Mode.DUMMY else "cleaned (C)"
            reason += f"; inside a {inside} sequence: {code}"
        if "/" in code:
            attr_type = iod.attribute_type(tag, self.types if depth == 0 else None)
            where = self.iod_name if depth == 0 and self.types and tag in self.types else None
            t = f"Type {attr_type}" if attr_type else "Type unknown (treated as 3)"
            ctx = f" in {where}" if where else " (most demanding Type in known IODs)"
            reason += f"; {code} settled as {action.value}: {t}{ctx}"
        if tag == _PATIENT_ID and action in (Action.ZERO, Action.DUMMY):
            reason += "; keyed pseudonymous patient ID"
        elif tag == _PATIENT_NAME and action in (Action.ZERO, Action.DUMMY):
            reason += "; keyed pseudonymous patient name"
        return reason

    def _mode_code(
        self, src: Dataset, rule: Rule, elem: DataElement | RawDataElement, mode: Mode
    ) -> str:
        """Values the table does not list, by context. Codes survive only when they come from a
        published coding scheme (a local scheme's codes and meanings can be anything), and never
        inside a dummied (D) sequence. Inside a cleaned (C) sequence text is cleaned, inside a
        dummied one it is replaced."""
        vr = _vr_of(rule, elem)
        if vr == "SQ":
            return "K"
        if rule.category == Category.CODE:
            if vr in ("CS", "UI"):
                return "K"  # enumerated flags and terminology UIDs: structure, not content
            if mode is Mode.DUMMY:
                return "D"
            scheme = src.get_item(0x00080102) if 0x00080102 in src else None
            return "K" if self._text(src, scheme).strip() in KNOWN_CODING_SCHEMES else "D"
        if rule.category == Category.TEXT:
            return "C" if mode is Mode.CLEAN else rule.code
        if vr in FREE_TEXT_VRS:
            return "D" if mode is Mode.DUMMY else "C"
        return rule.code

    def _apply(
        self,
        src: Dataset,
        tag: int,
        elem: DataElement | RawDataElement,
        vr: str,
        action: Action,
        rule: Rule,
        depth: int,
        mode: Mode,
        path: str,
    ) -> DataElement | RawDataElement | None:
        if vr == "SQ" or elem.VR == "SQ":
            return self._sequence(src, tag, elem, action, depth, mode, path)
        if tag == _PATIENT_ID and action in (Action.ZERO, Action.DUMMY):
            return self._make(tag, "LO", self.subject_id)
        if tag == _PATIENT_NAME and action in (Action.ZERO, Action.DUMMY):
            return self._make(tag, "PN", self.subject_id)
        if action is Action.KEEP:
            return _keep(elem)
        if action is Action.ZERO:
            return self._make(tag, vr, self._empty(vr))
        if action is Action.DUMMY:
            return self._make(tag, vr, self._dummy(src, tag, elem, vr))
        if action is Action.UID:
            return self._make(tag, vr, self._uids(self._text(src, elem)))
        return self._clean(src, tag, elem, vr, rule, depth)

    def _code_meaning(
        self, src: Dataset, elem: DataElement | RawDataElement
    ) -> DataElement | RawDataElement:
        """A kept Code Meaning only when it is the standard meaning of its code
        (`deid_core.codes`); else the standard meaning, else the meaning cleaned."""
        scheme = self._text(src, src.get_item(0x00080102)) if 0x00080102 in src else ""
        value = ""
        for tag in (0x00080100, 0x00080119, 0x00080120):
            if tag in src:
                value = self._text(src, src.get_item(tag))
                if value:
                    break
        meaning = self._text(src, elem)
        verified = verified_meaning(scheme, value, meaning)
        if verified == meaning:
            return _keep(elem)
        if verified:
            return self._make(_CODE_MEANING, "LO", verified)
        cleaned = clean_text(meaning)
        return self._make(_CODE_MEANING, "LO", cleaned or DUMMY_CODE_TAGS[_CODE_MEANING])

    def _pixel_data(
        self, src: Dataset, out: Dataset, elem: DataElement | RawDataElement
    ) -> DataElement | RawDataElement:
        """Pixel Data, with comments and application segments cut out of every compressed frame
        (`deid_core.encapsulated`: byte surgery, the decoded pixels stay identical)."""
        value = elem.value
        if isinstance(elem, RawDataElement):
            encapsulated = elem.length == 0xFFFFFFFF
        else:
            encapsulated = bool(elem.is_undefined_length)
        if not encapsulated or not isinstance(value, bytes):
            return _keep(elem)
        frames_text = (
            self._text(src, src.get_item(_NUMBER_OF_FRAMES)) if _NUMBER_OF_FRAMES in src else ""
        )
        try:
            frames = int(frames_text.split("\\")[0] or 1)
        except ValueError:
            frames = 1
        extended = None
        if _EXTENDED_OFFSETS in src and _EXTENDED_LENGTHS in src:
            offsets = self._raw_bytes(src, src.get_item(_EXTENDED_OFFSETS))
            lengths = self._raw_bytes(src, src.get_item(_EXTENDED_LENGTHS))
            extended = (offsets, lengths) if offsets and lengths else None
        result = strip_pixel_data(value, self.transfer_syntax, frames, extended)
        if result is None:
            return _keep(elem)
        data, tables = result
        if tables is not None:
            out[_EXTENDED_OFFSETS] = DataElement(_EXTENDED_OFFSETS, "OV", tables[0])
            out[_EXTENDED_LENGTHS] = DataElement(_EXTENDED_LENGTHS, "OV", tables[1])
        new = DataElement(_PIXEL_DATA, "OB", data, is_undefined_length=True)
        return new

    @staticmethod
    def _empty(vr: str) -> Any:
        if vr in STRING_VRS:
            return ""
        if vr in BINARY_VRS:
            return b""
        return None

    def _dummy(self, src: Dataset, tag: int, elem: DataElement | RawDataElement, vr: str) -> Any:
        if vr == "UI":
            original = self._text(src, elem)
            return self._uids(original) if original else self.pseudo.uid(f"dummy:{tag:08X}")
        code = DUMMY_CODE_TAGS.get(tag)
        if code is not None:
            return code
        return DUMMY.get(vr, b"")

    def _uids(self, text: str) -> str:
        out = []
        for uid in text.split("\\"):
            uid = uid.strip(" \x00")
            out.append(uid if not uid or uid in UID_dictionary else self.pseudo.uid(uid))
        return "\\".join(out)

    def _clean(
        self,
        src: Dataset,
        tag: int,
        elem: DataElement | RawDataElement,
        vr: str,
        rule: Rule,
        depth: int,
    ) -> DataElement | RawDataElement | None:
        """The C action, by VR (see the module docstring of deid_core.clean for text)."""
        if rule.option is ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES or vr in ("DA", "DT"):
            if vr in BINARY_VRS:  # binary timestamps: no day shift can be applied
                return self._make(tag, vr, bytes(len(self._raw_bytes(src, elem))))
            text = self._text(src, elem)
            if vr in ("DA", "DT"):
                shifted = shift_values(text, vr, self.shift) if self.shift is not None else None
                if shifted is not None:
                    return self._make(tag, vr, shifted)
            elif TEMPORAL_KEPT.get(vr, NEVER).match(text):
                # Times of day and UTC offsets: a shift by whole days leaves them as they are.
                return _keep(elem)
            # Not a valid value of its kind, or no shift in this profile: the basic action.
            return self._basic(tag, vr, depth, "+0000" if vr == "SH" else None)
        if vr in BINARY_VRS:  # overlay/curve data, maker notes: zeroed, size kept
            return self._make(tag, vr, bytes(len(self._raw_bytes(src, elem))))
        if vr == "UI":
            return self._make(tag, vr, self._uids(self._text(src, elem)))
        if vr == "PN":
            return self._make(tag, vr, DUMMY["PN"])
        if vr == "AE":
            # Under Retain Device Identity: an AE title names a device, and is kept when it is a
            # valid AE title (at most 16 characters: no room for free text).
            text = self._text(src, elem)
            if all(VALID_AE.match(v) for v in text.split("\\")):
                return _keep(elem)
            return self._make(tag, vr, DUMMY[vr])
        if vr == "CS":
            # A coded string is kept when each of its words is known vocabulary (and in overlay
            # and curve groups, whose coded strings are enumerated types such as "G" or "R").
            text = self._text(src, elem)
            if 0x5000 <= tag >> 16 <= 0x60FF or all(
                clean_text(v) == v.strip() for v in text.split("\\")
            ):
                return _keep(elem)
            return self._basic(tag, vr, depth)
        if vr in FREE_TEXT_VRS:
            values = [clean_text(v) for v in self._text(src, elem).split("\\")]
            if not any(values):
                # Nothing survives cleaning: do what the basic profile does (keeps a Type 1
                # attribute present with a dummy, empties a Type 2 one, removes the rest).
                return self._basic(tag, vr, depth)
            return self._make(
                tag,
                vr,
                "\\".join(values)
                if vr not in ("LT", "ST", "UT")
                else " ".join(v for v in values if v),
            )
        if vr == "UR":
            return self._make(tag, vr, "")
        # Numbers, ages, attribute tags: carry no identity.
        return _keep(elem)

    def _basic(
        self, tag: int, vr: str, depth: int, dummy: str | None = None
    ) -> DataElement | RawDataElement | None:
        """The Basic Profile's outcome, for values an option could not keep (unreadable dates,
        text that cleaning empties): removed, emptied or a dummy as the IOD's Type needs."""
        row = load_table().lookup(tag)
        code = row.basic if row else "X/Z/D"
        if code in ("C", "K", "U"):
            code = "X/Z/D"
        action = resolve(code, iod.attribute_type(tag, self.types if depth == 0 else None))
        if action is Action.REMOVE:
            return None
        if action is Action.ZERO:
            return self._make(tag, vr, self._empty(vr))
        return self._make(tag, vr, dummy if dummy is not None else DUMMY.get(vr, ""))

    def _raw_bytes(self, src: Dataset, elem: DataElement | RawDataElement) -> bytes:
        value = elem.value if isinstance(elem, RawDataElement) else self._value(src, elem)
        if isinstance(value, bytes):
            return value
        if value is None:
            return b""
        return str(value).encode("latin-1", errors="replace")

    def _sequence(
        self,
        src: Dataset,
        tag: int,
        elem: DataElement | RawDataElement,
        action: Action,
        depth: int,
        mode: Mode,
        path: str,
    ) -> DataElement:
        if action is Action.ZERO:
            return DataElement(tag, "SQ", Sequence())
        child = mode
        if action is Action.DUMMY:
            child = Mode.DUMMY
        elif action is Action.CLEAN and mode is Mode.NORMAL:
            child = Mode.CLEAN
        if isinstance(elem, RawDataElement) and elem.VR in (None, "UN"):
            # A sequence the reader could not recognise (implicit VR and a tag newer than
            # pydicom's dictionary, or encoded as UN): its items are implicit VR (PS3.5 6.2.2).
            little = True if elem.VR == "UN" else elem.is_little_endian
            elem = elem._replace(VR="SQ", is_implicit_VR=True, is_little_endian=little)
        value = self._value(src, elem)
        if value is None or isinstance(value, bytes | str):
            raise InvalidInputError(f"sequence {_tag_text(tag)} cannot be parsed")
        name = keyword_of(tag) or _tag_text(tag)
        items = [
            self.walk(item, depth + 1, child, f"{path}{name}[{i}].") for i, item in enumerate(value)
        ]
        return DataElement(tag, "SQ", Sequence(items))

    def _privates(
        self,
        src: Dataset,
        out: Dataset,
        privates: list[tuple[int, DataElement | RawDataElement]],
        depth: int,
        path: str,
    ) -> None:
        profile = self.profile
        row = load_table().private
        if not profile.has(ProfileOption.RETAIN_SAFE_PRIVATE):
            if self.trace is not None:
                for tag, _ in privates:
                    self._note(path, tag, "X", row.basic, "private attribute: basic profile")
            return
        creators: dict[tuple[int, int], str] = {}
        for tag, elem in privates:
            if 0x10 <= tag & 0xFFFF <= 0xFF:
                creators[(tag >> 16, tag & 0xFFFF)] = self._text(src, elem).strip()
        kept_blocks: set[tuple[int, int]] = set()
        decisions: dict[int, tuple[str, str]] = {}
        for tag, elem in privates:
            group, element = tag >> 16, tag & 0xFFFF
            if element < 0x1000:
                continue
            block = element >> 8
            creator = creators.get((group, block))
            safe = profile.private_rule(group, creator, element & 0xFF)
            if safe is None:
                decisions[tag] = ("X", "private attribute: not on the safe list")
                continue
            if isinstance(elem, RawDataElement) and elem.length == 0xFFFFFFFF and elem.VR != "SQ":
                # Items under a VR other than SQ (implicit VR, or UN): read them as a sequence,
                # de-identify them; when they are not items, drop the element.
                try:
                    seq = self._sequence(
                        src, tag, elem._replace(VR="UN"), Action.KEEP, depth, Mode.NORMAL, path
                    )
                except Exception:
                    decisions[tag] = ("X", "undefined length, not a readable sequence")
                    continue
                kept_blocks.add((group, block))
                out[BaseTag(tag)] = seq
                decisions[tag] = ("K", f"safe private sequence of {safe.creator!r}")
                continue
            if elem.VR != "SQ" and not safe.value_allowed(self._raw_bytes(src, elem)):
                decisions[tag] = ("X", "private attribute on the safe list, value not numeric")
                continue
            kept_blocks.add((group, block))
            if elem.VR == "SQ":
                new = self._sequence(src, tag, elem, Action.KEEP, depth, Mode.NORMAL, path)
                out[BaseTag(tag)] = new
            else:
                out._dict[BaseTag(tag)] = _keep(elem)
            note = f"; {safe.note}" if safe.note else ""
            decisions[tag] = ("K", f"safe private element of {safe.creator!r}{note}")
        for tag, elem in privates:
            group, element = tag >> 16, tag & 0xFFFF
            if 0x10 <= element <= 0xFF:
                if (group, element) in kept_blocks:
                    out._dict[BaseTag(tag)] = _keep(elem)
                    decisions[tag] = ("K", "private creator of a kept block")
                else:
                    decisions[tag] = ("X", "private creator of a removed block")
            elif element < 0x10:
                decisions[tag] = ("X", "private attribute outside any block")
        if self.trace is not None:
            for tag, _ in privates:
                action, reason = decisions[tag]
                self._note(path, tag, action, "C" if action == "K" else "X", reason)


class Deidentifier:
    """PS3.15 de-identification of one dataset at a time under a profile and a project key.

    Holds no state that depends on the datasets it has seen (apart from a memo of UID
    pseudonyms), so one instance serves a whole process and every output depends only on the
    key, the profile and the input."""

    def __init__(
        self,
        profile: ConfidentialityProfile,
        key: ProjectKey,
        trial: ClinicalTrialSubject | None = None,
        *,
        patient_id_prefix: str = "SUBJ-",
        max_shift_days: int = 3652,
        default_issuer: str = "",
    ) -> None:
        self.profile = profile
        #: Issuer of Patient ID assumed for instances that name none (the site's own IDs).
        self.default_issuer = default_issuer.strip()
        self.key = key
        self.trial = trial
        self.pseudonymizer = Pseudonymizer(key, patient_id_prefix, max_shift_days)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "key": self.key,
            "trial": self.trial,
            "prefix": self.pseudonymizer.patient_id_prefix,
            "shift": self.pseudonymizer.max_shift_days,
            "issuer": self.default_issuer,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["profile"],
            state["key"],
            state["trial"],
            patient_id_prefix=state["prefix"],
            max_shift_days=state["shift"],
            default_issuer=state.get("issuer", ""),
        )

    @staticmethod
    def _check(ds: Dataset) -> None:
        if not isinstance(ds, Dataset):
            raise InvalidInputError("not a DICOM dataset")
        meta = getattr(ds, "file_meta", None)
        if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR:
            raise InvalidInputError(
                "a DICOMDIR is a media index, not an instance: de-identify the files it lists"
            )
        for tag, what in ((_SOP_CLASS, "SOP Class UID"), (_SOP_INSTANCE, "SOP Instance UID")):
            elem = ds.get_item(tag) if tag in ds else None
            value = elem.value if elem is not None else None
            if isinstance(value, bytes):
                value = value.strip(b" \x00")
            if not value:
                raise InvalidInputError(
                    f"no {what} {_tag_text(tag)}: not a storable DICOM instance"
                )

    def _check_content(self, ds: Dataset) -> None:
        """Refuse structured documents whose clinical content de-identification would destroy
        (PS3.15 removes or dummies Content Sequence and Encapsulated Document under the basic
        profile), unless the profile accepts it with Clean Structured Content."""
        if ProfileOption.CLEAN_STRUCTURED_CONTENT in self.profile.options:
            return
        elem = ds.get_item(_SOP_CLASS)
        value = elem.value if elem is not None else b""
        sop_class = (value.decode("latin-1") if isinstance(value, bytes) else str(value)).strip(
            " \x00"
        )
        if sop_class in ENCAPSULATED_DOCUMENT_CLASSES:
            what = "its encapsulated document would be replaced"
        elif sop_class == KEY_OBJECT_SELECTION:
            try:
                has_text = _has_text_item(ds)
            except Exception:
                raise InvalidInputError("Content Sequence (0040,A730) cannot be parsed") from None
            if not has_text:
                return  # references only: nothing clinical is lost
            what = "its text would be removed"
        elif sop_class.startswith(_SR_ROOT):
            what = "its content tree would be removed or dummied"
        else:
            return
        name = UID_dictionary.get(sop_class, ("structured document",))[0]
        raise ClinicalContentLossError(
            f"{name}: {what} by de-identification; enable the profile option "
            f"'{ProfileOption.CLEAN_STRUCTURED_CONTENT.value}' to accept cleaned content"
        )

    def deidentify(self, ds: Dataset) -> Dataset:
        """A de-identified copy of `ds` with consistent File Meta Information.

        Raises InvalidInputError for a dataset that is not a storable instance or whose structure
        cannot be read, ClinicalContentLossError for a structured document whose content would be
        lost (see `_check_content`); the message names tags, never values."""
        self._check(ds)
        self._check_content(ds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = _Run(self, ds, None)
            try:
                out = run.walk(ds, 0, Mode.NORMAL, "")
            except InvalidInputError:
                raise
            except Exception as exc:  # a malformed element deep in the data
                raise InvalidInputError(
                    f"cannot de-identify: malformed data ({type(exc).__name__})"
                ) from None
            self._finish(out, run)
            out.file_meta = self._file_meta(ds, out)
        return out

    def explain(self, ds: Dataset) -> list[AttributeDecision]:
        """Per attribute (at every depth): the action and the reason. No values."""
        self._check(ds)
        trace: list[AttributeDecision] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = _Run(self, ds, trace)
            out = run.walk(ds, 0, Mode.NORMAL, "")
            before = set(out.keys())
            self._finish(out, run)
        for tag in sorted(set(out.keys()) - before):
            trace.append(
                AttributeDecision(
                    keyword_of(tag),
                    _tag_text(tag),
                    keyword_of(tag),
                    "set",
                    "profile",
                    "written by de-identification (PS3.15 E.1.1)",
                )
            )
        for tag in sorted(before & set(out.keys())):
            if tag in _FINISH_TAGS:
                trace.append(
                    AttributeDecision(
                        keyword_of(tag),
                        _tag_text(tag),
                        keyword_of(tag),
                        "set",
                        "profile",
                        "overwritten by de-identification (PS3.15 E.1.1 / trial config)",
                    )
                )
        return trace

    def study_key(self, ds: Dataset) -> str:
        """Non-reversible short key of the original study (for logs and grouping)."""
        elem = ds.get_item(_STUDY_UID) if _STUDY_UID in ds else None
        value = elem.value if elem is not None else b""
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value or "")
        return self.pseudonymizer.study_key(text)

    # --- what the profile adds -------------------------------------------------------------

    def _finish(self, out: Dataset, run: _Run) -> None:
        options = self.profile.options
        recorded = _recorded(options)

        def put(ds: Dataset, keyword: str, vr: str, value: Any) -> None:
            tag = tag_for_keyword(keyword)
            assert tag is not None
            new = run._make(tag, vr, value)
            if isinstance(new, RawDataElement):
                ds._dict[BaseTag(tag)] = new
            else:
                ds[tag] = new

        put(out, "PatientIdentityRemoved", "CS", "YES")
        methods = [
            f"PS3.15 {load_table().edition} Basic Application Confidentiality Profile",
            *(OPTION_CODES[o][1] for o in recorded),
            "deid-gateway keyed pseudonyms, key " + self.pseudonymizer.key_fingerprint,
        ]
        put(out, "DeidentificationMethod", "LO", "\\".join(methods))
        items = []
        for code, meaning in (BASIC_PROFILE_CODE, *(OPTION_CODES[o] for o in recorded)):
            item = Dataset()
            put(item, "CodeValue", "SH", code)
            put(item, "CodingSchemeDesignator", "SH", "DCM")
            put(item, "CodeMeaning", "LO", meaning)
            items.append(item)
        out[0x00120064] = DataElement(0x00120064, "SQ", Sequence(items))
        if ProfileOption.RETAIN_LONGITUDINAL_FULL_DATES in options:
            longitudinal = "UNMODIFIED"
        elif ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES in options:
            longitudinal = "MODIFIED"
        else:
            longitudinal = "REMOVED"
        put(out, "LongitudinalTemporalInformationModified", "CS", longitudinal)
        trial = self.trial
        if trial is not None:
            put(out, "ClinicalTrialSponsorName", "LO", trial.sponsor_name)
            put(out, "ClinicalTrialProtocolID", "LO", trial.protocol_id)
            put(out, "ClinicalTrialProtocolName", "LO", trial.protocol_name or "")
            put(out, "ClinicalTrialSiteID", "LO", trial.site_id or "")
            put(out, "ClinicalTrialSiteName", "LO", trial.site_name or "")
            put(
                out,
                "ClinicalTrialSubjectID",
                "LO",
                run.subject_id,
            )

    @staticmethod
    def _file_meta(src: Dataset, out: Dataset) -> FileMetaDataset:
        meta = FileMetaDataset()
        meta.FileMetaInformationVersion = b"\x00\x01"
        meta.MediaStorageSOPClassUID = UID(str(out[_SOP_CLASS].value))
        meta.MediaStorageSOPInstanceUID = UID(str(out[_SOP_INSTANCE].value))
        meta.TransferSyntaxUID = UID(_transfer_syntax(src))
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        return meta


_FINISH_TAGS = frozenset(
    {
        0x00120062,
        0x00120063,
        0x00120064,
        0x00280303,
        0x00120010,
        0x00120020,
        0x00120021,
        0x00120030,
        0x00120031,
        0x00120040,
    }
)


#: Structured Reporting SOP Classes (PS3.4 B.5): 1.2.840.10008.5.1.4.1.1.88.x.
_SR_ROOT = "1.2.840.10008.5.1.4.1.1.88."
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
#: Encapsulated PDF and CDA: the document is the content.
ENCAPSULATED_DOCUMENT_CLASSES = frozenset(
    {"1.2.840.10008.5.1.4.1.1.104.1", "1.2.840.10008.5.1.4.1.1.104.2"}
)


def _has_text_item(ds: Dataset) -> bool:
    """Whether a content tree holds a TEXT item (a Key Object Description, at any depth)."""
    for item in ds.get("ContentSequence", None) or ():
        if str(item.get("ValueType", "")).strip() == "TEXT" or _has_text_item(item):
            return True
    return False


def _recorded(options: frozenset[ProfileOption]) -> list[ProfileOption]:
    """Options this metadata step has applied (pixel options are recorded by the pixel steps)."""
    return [o for o in OPTION_CODES if o in options and o in TABLE_COLUMNS]


def _encoding(src: Dataset) -> tuple[bool, bool] | tuple[None, None]:
    """(implicit VR, little endian) as the elements were actually read. pydicom's
    `original_encoding` follows the declared transfer syntax even where the reader found the other
    VR encoding and switched; the raw elements know the truth."""
    for elem in src._dict.values():
        if isinstance(elem, RawDataElement):
            return elem.is_implicit_VR, elem.is_little_endian
    return src.original_encoding


def _transfer_syntax(src: Dataset) -> str:
    """The transfer syntax the output is written in: the input's when it matches how the data
    set was actually encoded, else the one that describes that encoding."""
    implicit, little = _encoding(src)
    meta = getattr(src, "file_meta", None)
    declared = str(meta.get("TransferSyntaxUID", "") or "").strip(" \x00") if meta else ""
    if implicit is None:
        return declared or _EXPLICIT_LE
    actual = _IMPLICIT_LE if implicit else (_EXPLICIT_LE if little else _EXPLICIT_BE)
    if not declared:
        return actual
    if declared in (_IMPLICIT_LE, _EXPLICIT_LE, _EXPLICIT_BE):
        return actual  # trust how the data set was actually encoded over what the header says
    # Compressed (encapsulated) or deflated syntaxes: pixel data must keep its syntax; pydicom
    # re-encodes the rest as explicit little endian when needed.
    return declared


__all__ = [
    "ENCAPSULATED_DOCUMENT_CLASSES",
    "IMPLEMENTATION_CLASS_UID",
    "KEY_OBJECT_SELECTION",
    "AttributeDecision",
    "ClinicalTrialSubject",
    "Deidentifier",
    "Mode",
    "record_method",
]
