"""The Basic Application Level Confidentiality Profile with its options, compiled to a rule per tag.

`ConfidentialityProfile` is what a route configures: a set of options and the safe-private list.
Its `rule()` gives, for any public tag, the table code after the options (still possibly a
combination like "X/Z/D", settled per instance by the IOD's Type) and the reason, in words, for
`explain`. Rules are computed once per tag and kept, so the per-element cost of de-identifying is
one dictionary lookup.

Attributes that Table E.1-1 does not list (the profile requires removing those that could identify
anyone) follow this policy, safe by default:

- not in the DICOM dictionary (unknown public tags), retired ones, group lengths: removed;
- text (LO, SH, LT, ST, UT, UC, UR, PN, AE) not on the short `TECHNICAL_TEXT` allow-list of
  equipment/technique values: removed (emptied or dummied where the IOD requires them; cleaned
  under Clean Descriptors, except names, URLs and AE titles); Encrypted Attributes: removed;
- dates and times: treated like the table's own dates (removed, kept under Full Dates, shifted
  under Modified Dates);
- UIDs: replaced by their keyed pseudonym, unless they are class/transfer-syntax/coding UIDs or a
  registered DICOM UID;
- codes (Code Value, Coding Scheme Designator, Code Meaning ...; not the free-text VRs LT, ST, UT,
  UC even where they describe a coding scheme), coded strings, numbers, binary data
  and allow-listed technical text (Manufacturer, Convolution Kernel ...): kept;
- overlay groups (60xx) follow their Overlay Data row, curves (50xx) their table row.

Options that both touch one attribute are combined by retaining the most: K over C over the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

from pydicom.datadict import DicomDictionary, RepeatersDictionary

from deid_core.actions import Action
from deid_core.options import MUTUALLY_EXCLUSIVE, TABLE_COLUMNS, ProfileOption
from deid_core.private import DEFAULT_SAFE_PRIVATE, SafePrivateElement
from deid_core.standard import Ps315Table, TableRow, load_table


class Category:
    """What kind of attribute a rule is about; decides what happens inside cleaned sequences."""

    TABLE = "table"
    CODE = "code"
    KEEP = "keep"
    TEXT = "text"
    DATE = "date"
    UID = "uid"
    REMOVE = "remove"


class Rule(NamedTuple):
    #: Table code after options ("X/Z/D", "K", "C", "U" ...).
    code: str
    category: str
    #: The VR from the data dictionary (None if unknown).
    vr: str | None
    reason: str
    #: The option whose column set `code` (None for the basic profile and the policy).
    option: ProfileOption | None = None
    #: The action when it does not depend on the IOD (no combination), else None.
    action: Action | None = None


_SIMPLE = {a.value: a for a in Action}

#: Table options in the order their columns appear; later ones never silently override K.
_TABLE_OPTIONS = tuple(o for o in ProfileOption if o in TABLE_COLUMNS)
_RANK = {"K": 3, "C": 2}

#: Attributes of coded entries: controlled terminology, not free text.
CODE_KEYWORDS = frozenset(
    {
        "CodeValue",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "CodeMeaning",
        "URNCodeValue",
        "ContextIdentifier",
        "ContextUID",
        "MappingResource",
        "MappingResourceUID",
        "MappingResourceName",
        "ContextGroupExtensionFlag",
        "CodingSchemeUID",
    }
)
#: Text attributes outside the table that are kept: equipment and technique values that a
#: modality writes from its own configuration (never typed about a patient), and that analysis
#: needs (kernel, coil, nucleus, rescale type ...). Every other text attribute outside the table
#: (LO, SH, LT, ST, UT, UC, UR, PN, AE) is removed, or cleaned under Clean Descriptors. The list
#: is deliberately short: an attribute missing here loses a value, one wrongly here leaks one.
TECHNICAL_TEXT = frozenset(
    {
        # Equipment (Retain Device Identity covers the serial numbers and names in the table).
        "Manufacturer",
        "ManufacturerModelName",
        "SoftwareVersions",
        "SecondaryCaptureDeviceManufacturer",
        "SecondaryCaptureDeviceManufacturerModelName",
        "SecondaryCaptureDeviceSoftwareVersions",
        "DetectorManufacturerName",
        "DetectorManufacturerModelName",
        "ReceiveCoilManufacturerName",
        "TransmitCoilManufacturerName",
        # Acquisition and reconstruction technique.
        "ConvolutionKernel",
        "FilterType",
        "ImagedNucleus",
        "SequenceName",
        "PulseSequenceName",
        "ReceiveCoilName",
        "TransmitCoilName",
        "ContrastBolusRoute",
        "TransducerData",
        "ProcessingFunction",
        # Pixel value meaning and geometry.
        "RescaleType",
        "ModalityLUTType",
        "PositionReferenceIndicator",
        "DimensionDescriptionLabel",
        "SegmentAlgorithmName",
        "AlgorithmName",
        "AlgorithmVersion",
        "AlgorithmSource",
    }
)
#: Value representations of text: outside the table, removed unless in TECHNICAL_TEXT.
_TEXT_VRS = frozenset({"LO", "SH", "LT", "ST", "UT", "UC", "UR", "PN", "AE"})
#: Always removed, whatever the options: it holds encrypted copies of original attributes.
_ALWAYS_REMOVED = frozenset({"EncryptedAttributesSequence"})
#: UIDs outside the table that name a class, a syntax or a terminology, never an instance.
_CLASS_UID = re.compile(
    r"(ClassUID|ClassUIDInFile|ClassesInStudy|ClassesInSeries|ClassesSupported|TransferSyntaxUID|"
    r"TransferSyntaxUIDInFile|^CodingSchemeUID|^ContextUID|^MappingResourceUID|"
    r"^ContextGroupExtensionCreatorUID|^TemplateExtension\w*UID|^PrivateInformationCreatorUID)$"
)
_ALTERNATIVE_CALENDAR = frozenset(
    {
        "PatientAlternativeCalendar",
        "PatientBirthDateInAlternativeCalendar",
        "PatientDeathDateInAlternativeCalendar",
    }
)
_DATE_VRS = frozenset({"DA", "DT", "TM"})


def _dictionary_entry(tag: int) -> tuple[str, str, str, bool] | None:
    """(VR, keyword, name, retired) from pydicom's dictionary, repeating groups included."""
    entry = DicomDictionary.get(tag)
    if entry is None:
        group, elem = tag >> 16, tag & 0xFFFF
        if 0x5000 <= group <= 0x60FF:
            mask = f"{group >> 8:02X}xx{elem:04X}"
            entry = RepeatersDictionary.get(mask)
        if entry is None:
            return None
    vr, _vm, name, retired, keyword = entry
    return str(vr), str(keyword), str(name), retired == "Retired"


def keyword_of(tag: int) -> str:
    entry = _dictionary_entry(tag)
    return entry[1] if entry else ""


@dataclass(frozen=True, eq=False)
class ConfidentialityProfile:
    """The basic profile plus options; `safe_private` applies under Retain Safe Private only."""

    options: frozenset[ProfileOption] = frozenset()
    safe_private: tuple[SafePrivateElement, ...] = DEFAULT_SAFE_PRIVATE
    _cache: dict[int, Rule] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", frozenset(ProfileOption(o) for o in self.options))
        for a, b in MUTUALLY_EXCLUSIVE:
            if a in self.options and b in self.options:
                raise ValueError(f"options '{a}' and '{b}' cannot be used together")

    def __getstate__(self) -> dict[str, object]:
        # Sent to worker processes: the rule cache is rebuilt there.
        return {"options": self.options, "safe_private": self.safe_private}

    def __setstate__(self, state: dict[str, object]) -> None:
        object.__setattr__(self, "options", state["options"])
        object.__setattr__(self, "safe_private", state["safe_private"])
        object.__setattr__(self, "_cache", {})

    @property
    def table(self) -> Ps315Table:
        return load_table()

    @cached_property
    def table_options(self) -> tuple[ProfileOption, ...]:
        """The options of this profile that have a column in the table, in table order."""
        return tuple(o for o in _TABLE_OPTIONS if o in self.options)

    def row_code(self, row: TableRow) -> tuple[str, ProfileOption | None]:
        """A table row's code under this profile's options, and the option that set it."""
        code, by = row.basic, None
        for option in self.table_options:
            action = row.option_action(option)
            if action is None:
                continue
            if by is None or _RANK.get(action, 0) > _RANK.get(code, 0):
                code, by = action, option
        return code, by

    def has(self, option: ProfileOption) -> bool:
        return option in self.options

    @property
    def pixel_options(self) -> frozenset[ProfileOption]:
        """Clean Pixel Data / Clean Recognizable Visual Features: flags for the pixel steps,
        which apply them and then call `deid_core.deidentify.record_method`. The metadata
        step neither applies nor records them."""
        return self.options & {
            ProfileOption.CLEAN_PIXEL_DATA,
            ProfileOption.CLEAN_RECOGNIZABLE_VISUAL_FEATURES,
        }

    def rule(self, tag: int) -> Rule:
        """The rule for a public (even group) tag."""
        rule = self._cache.get(tag)
        if rule is None:
            rule = self._compute(tag)
            # Codes depend on their item's coding scheme: never settled by the rule alone.
            if rule.category != Category.CODE:
                rule = rule._replace(action=_SIMPLE.get(rule.code))
            self._cache[tag] = rule
        return rule

    def _date_code(self) -> tuple[str, ProfileOption | None]:
        if ProfileOption.RETAIN_LONGITUDINAL_FULL_DATES in self.options:
            return "K", ProfileOption.RETAIN_LONGITUDINAL_FULL_DATES
        if ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES in self.options:
            return "C", ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES
        return "X/Z/D", None

    def _compute(self, tag: int) -> Rule:
        entry = _dictionary_entry(tag)
        vr = entry[0] if entry else None
        group, elem = tag >> 16, tag & 0xFFFF
        row = self.table.lookup(tag)
        if row is not None:
            code, option = self.row_code(row)
            why = f"option {option.value}" if option else "basic profile"
            return Rule(
                code, Category.TABLE, row.vr or vr, f"{why} (Table E.1-1 {row.tag})", option
            )
        if 0x6000 <= group <= 0x60FF:
            # The rest of an overlay plane goes with its Overlay Data.
            overlay = self.table.lookup((group << 16) | 0x3000)
            assert overlay is not None
            code, option = self.row_code(overlay)
            why = f"option {option.value}" if option else "basic profile"
            return Rule(
                code, Category.TABLE, vr, f"overlay plane follows Overlay Data ({why})", option
            )
        if elem == 0x0000:
            return Rule("X", Category.REMOVE, vr, "group length: recomputed on write")
        if entry is None:
            return Rule("X", Category.REMOVE, None, "not in the DICOM dictionary: unknown, removed")
        vr, keyword, _name, retired = entry
        if group in (0x0000, 0x0002):
            return Rule(
                "X", Category.REMOVE, vr, "command/file meta element: not part of a dataset"
            )
        if keyword in ("DeidentificationMethod", "DeidentificationMethodCodeSequence"):
            return Rule("X", Category.REMOVE, vr, "replaced by this de-identification's own record")
        if keyword in _ALWAYS_REMOVED:
            return Rule("X", Category.REMOVE, vr, "encrypted original attributes: always removed")
        if keyword in _ALTERNATIVE_CALENDAR:
            # Birth and death dates in another calendar, and the calendar they need: removed
            # like the Patient's Birth Date itself, under every option.
            return Rule("X", Category.REMOVE, vr, "alternative-calendar birth/death date")
        if retired:
            return Rule("X", Category.REMOVE, vr, "retired and not in the table: removed")
        if keyword in CODE_KEYWORDS:
            return Rule(
                "K", Category.CODE, vr, "code of a coded entry: kept if its scheme is published"
            )
        if vr == "SQ":
            return Rule("K", Category.KEEP, vr, "sequence not in the table: kept, items cleaned")
        if vr in _DATE_VRS:
            code, option = self._date_code()
            why = f"option {option.value}" if option else "not in the table, date/time"
            return Rule(code, Category.DATE, vr, f"{why}: treated like the table's dates", option)
        if vr == "UI":
            if _CLASS_UID.search(keyword):
                return Rule("K", Category.KEEP, vr, "class/syntax/terminology UID: kept")
            if ProfileOption.RETAIN_UIDS in self.options:
                return Rule("K", Category.UID, vr, "option retain_uids", ProfileOption.RETAIN_UIDS)
            return Rule("U", Category.UID, vr, "instance UID not in the table: keyed pseudonym")
        if vr in _TEXT_VRS and keyword not in TECHNICAL_TEXT:
            if vr not in ("PN", "UR", "AE") and ProfileOption.CLEAN_DESCRIPTORS in self.options:
                return Rule(
                    "C",
                    Category.TEXT,
                    vr,
                    "option clean_descriptors: free text not in the table, cleaned",
                    ProfileOption.CLEAN_DESCRIPTORS,
                )
            return Rule("X/Z/D", Category.TEXT, vr, "text not in the table: removed")
        if vr in _TEXT_VRS:
            return Rule("K", Category.KEEP, vr, "technical text on the allow-list: kept")
        return Rule("K", Category.KEEP, vr, "not in the table, not identifying by its kind: kept")

    def private_rule(
        self, group: int, creator: str | None, offset: int
    ) -> SafePrivateElement | None:
        """The safe-list entry that keeps this private element, if any (only under the option)."""
        if creator is None or ProfileOption.RETAIN_SAFE_PRIVATE not in self.options:
            return None
        for rule in self.safe_private:
            if rule.matches(group, creator, offset):
                return rule
        return None


__all__ = [
    "CODE_KEYWORDS",
    "TECHNICAL_TEXT",
    "Category",
    "ConfidentialityProfile",
    "Rule",
    "keyword_of",
]
