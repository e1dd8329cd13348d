#!/usr/bin/env python3
"""Generate deid_core/standard/ps315_table.json from DICOM PS3.15 Table E.1-1 (CSV).

Next year's edition is one command away:

    python tools/gen_ps315_table.py ../shared/standard/ps3.15_2026a_table_E.1-1.csv

The edition is read from the file name (``ps3.15_<edition>_table_E.1-1.csv``) unless ``--edition``
is given, and written into the generated file together with the CSV's SHA-256, so a reader can tell
which table the engine carries. The VR of each attribute is added from pydicom's data dictionary
(or, for attributes newer than pydicom's dictionary, from the short supplement below, transcribed
from PS3.6): the engine needs it to write a dummy or empty value of the right VR.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CSV = REPO.parent / "shared" / "standard" / "ps3.15_2025e_table_E.1-1.csv"
DEFAULT_OUT = REPO / "deid_core" / "standard" / "ps315_table.json"

OPTION_COLUMNS = (
    "rtn_safe_priv_opt",
    "rtn_uids_opt",
    "rtn_dev_id_opt",
    "rtn_inst_id_opt",
    "rtn_pat_chars_opt",
    "rtn_long_full_dates_opt",
    "rtn_long_modif_dates_opt",
    "clean_desc_opt",
    "clean_struct_cont_opt",
    "clean_graph_opt",
)
REQUIRED_COLUMNS = ("attribute_name", "tag", "retired", "in_std_comp_iod", "basic_profile")
ACTIONS = {"D", "Z", "X", "K", "C", "U", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"}

#: VRs (PS3.6 2025e) of table attributes that pydicom 3.0's dictionary does not know yet.
VR_SUPPLEMENT = {
    "(0008,1301)": "SQ",  # Principal Diagnosis Code Sequence
    "(0008,1302)": "SQ",  # Primary Diagnosis Code Sequence
    "(0008,1303)": "SQ",  # Secondary Diagnoses Code Sequence
    "(0008,1304)": "SQ",  # Histological Diagnoses Code Sequence
    "(0010,0011)": "SQ",  # Person Names to Use Sequence
    "(0010,0012)": "PN",  # Name to Use
    "(0010,0013)": "UT",  # Name to Use Comment
    "(0010,0014)": "SQ",  # Third Person Pronouns Sequence
    "(0010,0015)": "SQ",  # Pronoun Code Sequence
    "(0010,0016)": "UT",  # Pronoun Comment
    "(0010,0041)": "SQ",  # Gender Identity Sequence
    "(0010,0042)": "UT",  # Sex Parameters for Clinical Use Category Comment
    "(0010,0043)": "SQ",  # Sex Parameters for Clinical Use Category Sequence
    "(0010,0044)": "SQ",  # Gender Identity Code Sequence
    "(0010,0045)": "UT",  # Gender Identity Comment
    "(0010,0046)": "SQ",  # Sex Parameters for Clinical Use Category Code Sequence
    "(0010,0047)": "UR",  # Sex Parameters for Clinical Use Category Reference
    "(0010,2162)": "UC",  # Ethnic Groups
    "(0040,A034)": "DT",  # Effective Start DateTime
    "(0040,A035)": "DT",  # Effective Stop DateTime
    "(0040,B034)": "DT",  # Annotation DateTime
    "(0040,B036)": "DT",  # Segment Definition DateTime
    "(0040,B03B)": "LO",  # Montage Name
    "(0040,B03F)": "LO",  # Montage Channel Label
}

_TAG = re.compile(r"^\(([0-9A-Fx]{4}),([0-9A-Fx]{4})\)$")


def _vr_for(tag: str) -> str | None:
    from pydicom.datadict import DicomDictionary, RepeatersDictionary

    match = _TAG.match(tag)
    if match is None:
        return None
    group, element = match.groups()
    if "x" not in group + element:
        entry = DicomDictionary.get(int(group + element, 16))
        if entry is not None:
            return str(entry[0])
        return VR_SUPPLEMENT.get(tag)
    if element == "xxxx":  # a whole repeating group (curves): VR differs per element
        return None
    repeater = RepeatersDictionary.get((group + element).upper().replace("X", "x"))
    return str(repeater[0]) if repeater else VR_SUPPLEMENT.get(tag)


def read_rows(csv_path: Path) -> tuple[list[dict[str, object]], dict[str, object]]:
    with csv_path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [
            c for c in (*REQUIRED_COLUMNS, *OPTION_COLUMNS) if c not in (reader.fieldnames or [])
        ]
        if missing:
            raise SystemExit(f"{csv_path}: missing columns {missing}")
        raw = list(reader)
    rows: list[dict[str, object]] = []
    private: dict[str, object] | None = None
    seen: set[str] = set()
    for line, rec in enumerate(raw, start=2):
        basic = rec["basic_profile"].strip()
        if basic not in ACTIONS:
            raise SystemExit(f"{csv_path}:{line}: unknown basic profile action {basic!r}")
        options = {c: rec[c].strip() for c in OPTION_COLUMNS if rec[c].strip()}
        for col, act in options.items():
            if act not in ACTIONS:
                raise SystemExit(f"{csv_path}:{line}: unknown action {act!r} in {col}")
        tag = rec["tag"].strip()
        entry: dict[str, object] = {
            "name": rec["attribute_name"].strip(),
            "tag": tag,
            "retired": rec["retired"].strip() == "Y",
            "in_std_comp_iod": rec["in_std_comp_iod"].strip() == "Y",
            "basic": basic,
            "options": options,
        }
        if tag.startswith("(gggg,eeee)"):
            private = entry
            continue
        if _TAG.match(tag) is None:
            raise SystemExit(f"{csv_path}:{line}: cannot read tag {tag!r}")
        if tag in seen:
            raise SystemExit(f"{csv_path}:{line}: tag {tag} listed twice")
        seen.add(tag)
        entry["vr"] = _vr_for(tag)
        rows.append(entry)
    if private is None:
        raise SystemExit(f"{csv_path}: no row for private attributes")
    rows.sort(key=lambda r: str(r["tag"]))
    return rows, private


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="?", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--edition", help="edition, e.g. 2025e (default: from the file name)")
    args = parser.parse_args(argv)
    edition = args.edition
    if edition is None:
        match = re.search(r"ps3\.15_(\d{4}[a-z])_", args.csv.name)
        if match is None:
            parser.error("cannot read the edition from the file name; pass --edition")
        edition = match.group(1)
    rows, private = read_rows(args.csv)
    import pydicom

    doc = {
        "edition": edition,
        "table": "PS3.15 Table E.1-1 Application Level Confidentiality Profile Attributes",
        "source": args.csv.name,
        "source_sha256": hashlib.sha256(args.csv.read_bytes()).hexdigest(),
        "vr_source": f"pydicom {pydicom.__version__} data dictionary, PS3.6 supplement",
        "option_columns": list(OPTION_COLUMNS),
        "private": private,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # One attribute per line: a new edition then reads as a short, reviewable diff.
    head = {k: v for k, v in doc.items() if k != "rows"}
    text = json.dumps(head, indent=1, ensure_ascii=True)[:-2] + ',\n "rows": [\n'
    text += ",\n".join("  " + json.dumps(r, ensure_ascii=True) for r in rows) + "\n ]\n}\n"
    json.loads(text)  # the hand-assembled layout must still be valid JSON
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(rows)} attributes, edition {edition})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
