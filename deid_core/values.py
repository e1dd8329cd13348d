"""Values the de-identifier writes: dummies per VR, what counts as a valid kept value, and the
encoding of new values straight into bytes.

Every value written here is ASCII, so it is valid under any Specific Character Set the dataset
keeps, and is encoded in the dataset's own transfer syntax: a new element costs a fraction of a
pydicom DataElement to build and to write.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from pydicom.datadict import tag_for_keyword

DUMMY_TEXT = "ANONYMIZED"
DUMMY: dict[str, Any] = {
    "AE": DUMMY_TEXT,
    "AS": "000Y",
    "CS": DUMMY_TEXT,
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "DS": "0",
    "IS": "0",
    "LO": DUMMY_TEXT,
    "LT": DUMMY_TEXT,
    "PN": "ANONYMOUS",
    "SH": DUMMY_TEXT,
    "ST": DUMMY_TEXT,
    "UC": DUMMY_TEXT,
    "UT": DUMMY_TEXT,
    "UR": "urn:deid-gateway:removed",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "FL": 0.0,
    "FD": 0.0,
    "SV": 0,
    "UV": 0,
    "AT": 0,
    "OB": b"\x00" * 8,
    "OW": b"\x00" * 8,
    "OF": b"\x00" * 8,
    "OD": b"\x00" * 8,
    "OL": b"\x00" * 8,
    "OV": b"\x00" * 8,
    "UN": b"\x00" * 8,
}
#: Dummies for the attributes of a coded entry in dummy mode: a valid code that says nothing.
DUMMY_CODE = {
    "CodeValue": "DEID",
    "CodingSchemeDesignator": "99DEID",
    "CodeMeaning": "De-identified",
    "LongCodeValue": "DEID",
    "URNCodeValue": "urn:deid-gateway:removed",
}
DUMMY_CODE_TAGS = {int(tag_for_keyword(k)): v for k, v in DUMMY_CODE.items()}  # type: ignore[arg-type]
STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI"}
    | {"UR", "UT"}
)
BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
FREE_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC"})
#: Values a day shift leaves unchanged, kept only when they are exactly that (no text).
TEMPORAL_KEPT = {
    "TM": re.compile(
        r"^(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?(\\(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)*$"
    ),
    "SH": re.compile(r"^[+-]\d{4}$"),
}
NEVER = re.compile(r"(?!)")
VALID_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{0,16}$")


#: Coding schemes published by standards bodies (PS3.16 Table 8-1): their codes and meanings are
#: fixed by the scheme, so they survive cleaning. Local schemes ("99...") do not.
KNOWN_CODING_SCHEMES = frozenset(
    {
        "DCM",
        "SCT",
        "SRT",
        "SNM3",
        "LN",
        "I10",
        "I10P",
        "I9",
        "I9C",
        "ICD10",
        "ICDO3",
        "UCUM",
        "RADLEX",
        "NCIt",
        "MSH",
        "UMLS",
        "FMA",
        "NEU",
        "MDC",
        "ACR",
        "HL7",
        "RXNORM",
        "NDC",
        "CPT4",
        "C4",
        "C5",
        "ATC",
        "NCDR",
        "BARI",
        "CAS",
        "PUBCHEM_CID",
        "UBERON",
    }
)
NUMBER_FORMATS = {
    "US": "H",
    "SS": "h",
    "UL": "I",
    "SL": "i",
    "FL": "f",
    "FD": "d",
    "SV": "q",
    "UV": "Q",
    "AT": "I",
}


def encode_value(vr: str, value: Any, little: bool) -> bytes | None:
    """Bytes of a value this module writes, or None when pydicom's encoder must do it (text
    outside ASCII, which depends on the Specific Character Set)."""
    if value is None or value == "" or value == b"":
        return b""
    if isinstance(value, str):
        if vr not in STRING_VRS or not value.isascii():
            return None
        data = value.encode("ascii")
        if len(data) % 2:
            data += b"\x00" if vr == "UI" else b" "
        return data
    if isinstance(value, bytes):
        if vr not in BINARY_VRS:
            return None
        return value + b"\x00" if len(value) % 2 else value
    if isinstance(value, int | float) and vr in NUMBER_FORMATS:
        if vr == "AT":
            value = int(value)
            fmt = ("<" if little else ">") + "HH"
            return struct.pack(fmt, value >> 16, value & 0xFFFF)
        return struct.pack(("<" if little else ">") + NUMBER_FORMATS[vr], value)
    return None
