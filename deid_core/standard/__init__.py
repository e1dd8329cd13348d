"""PS3.15 Table E.1-1, as generated from the standard by `tools/gen_ps315_table.py`.

The engine never carries a hand-typed list of attributes: it reads this generated file, whose
edition is recorded (`TABLE.edition`). To move to a newer edition, regenerate the JSON from the new
CSV and review the diff.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources

from deid_core.options import TABLE_COLUMNS, ProfileOption


@dataclass(frozen=True)
class TableRow:
    """One attribute of Table E.1-1: its basic-profile action and what each option changes."""

    name: str
    #: As printed in the standard, e.g. "(0008,0050)" or "(60xx,3000)".
    tag: str
    retired: bool
    in_std_comp_iod: bool
    #: Action code of the Basic Profile: D, Z, X, K, C, U or a combination such as "X/Z/D".
    basic: str
    #: Table column name -> action code, only for the options that change the basic action.
    options: Mapping[str, str]
    vr: str | None

    def option_action(self, option: ProfileOption) -> str | None:
        """The action the option's column gives this attribute, or None if it leaves it alone."""
        column = TABLE_COLUMNS.get(option)
        return self.options.get(column) if column else None

    @property
    def is_masked(self) -> bool:
        """A repeating-group row such as Overlay Data (60xx,3000) or Curve Data (50xx,xxxx)."""
        return "x" in self.tag

    def matches(self, tag: int) -> bool:
        group, element = self.tag[1:5], self.tag[6:10]
        for pattern, value in ((group, tag >> 16), (element, tag & 0xFFFF)):
            text = f"{value:04X}"
            if any(p != "x" and p != t for p, t in zip(pattern, text, strict=True)):
                return False
        return True


class Ps315Table:
    """The whole table, indexed by tag once."""

    def __init__(
        self, edition: str, source_sha256: str, rows: tuple[TableRow, ...], private: TableRow
    ) -> None:
        self.edition = edition
        self.source_sha256 = source_sha256
        self.rows = rows
        #: The prose row "Private Attributes": basic X, C under Retain Safe Private.
        self.private = private
        self.by_tag: dict[int, TableRow] = {
            int(r.tag[1:5] + r.tag[6:10], 16): r for r in rows if not r.is_masked
        }
        self.masked: tuple[TableRow, ...] = tuple(r for r in rows if r.is_masked)

    def lookup(self, tag: int) -> TableRow | None:
        """The row for an attribute tag (exact tags first, then repeating-group masks)."""
        row = self.by_tag.get(tag)
        if row is not None:
            return row
        group = tag >> 16
        if 0x5000 <= group <= 0x60FF and not group & 1:
            for masked in self.masked:
                if masked.matches(tag):
                    return masked
        return None


def _row(data: Mapping[str, object]) -> TableRow:
    options = data.get("options") or {}
    assert isinstance(options, dict)
    vr = data.get("vr")
    return TableRow(
        name=str(data["name"]),
        tag=str(data["tag"]),
        retired=bool(data["retired"]),
        in_std_comp_iod=bool(data["in_std_comp_iod"]),
        basic=str(data["basic"]),
        options={str(k): str(v) for k, v in options.items()},
        vr=str(vr) if vr else None,
    )


@cache
def load_table() -> Ps315Table:
    """The generated table shipped with the package (read once per process)."""
    text = resources.files(__name__).joinpath("ps315_table.json").read_text(encoding="utf-8")
    doc = json.loads(text)
    return Ps315Table(
        edition=str(doc["edition"]),
        source_sha256=str(doc["source_sha256"]),
        rows=tuple(_row(r) for r in doc["rows"]),
        private=_row(doc["private"]),
    )


__all__ = ["Ps315Table", "TableRow", "load_table"]
