"""Private attributes kept under the Retain Safe Private option.

A private element is identified by its private creator, not by its tag: a vendor's block lands in
whatever block number (gggg,00xx) was free in that file. So a rule names the creator string, the
odd group and the element offsets within the block (the low byte of (gggg,xxee)).

Everything else private is removed, in every option set: vendors put names, IDs and free text in
private blocks. The default list holds only well-known numeric acquisition parameters (diffusion
b-values and gradient directions); for those it also checks that the value really looks numeric, so
text hidden in such a slot is dropped, not carried through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

#: What a kept value may look like: anything (the operator vouches for it) or numbers only.
ValueCheck = Literal["any", "numeric"]

_NUMERIC_TEXT = re.compile(rb"^[\s\x00]*[0-9+\-.eE]*(?:\\[\s]*[0-9+\-.eE]*)*[\s\x00]*$")
_LETTER_RUN = re.compile(rb"[A-Za-z]{4,}")
_PRINTABLE = re.compile(rb"^[\x20-\x7e\x00]*$")


@dataclass(frozen=True)
class SafePrivateElement:
    """Private elements retained under Retain Safe Private."""

    creator: str
    #: Offsets within the block (0x00-0xFF); None means every element of the block.
    elements: frozenset[int] | None
    #: Restrict to one odd group, e.g. 0x0019 (None: any group).
    group: int | None = None
    values: ValueCheck = "any"
    note: str = ""

    def matches(self, group: int, creator: str, offset: int) -> bool:
        if self.group is not None and group != self.group:
            return False
        if creator != self.creator:
            return False
        return self.elements is None or offset in self.elements

    def value_allowed(self, raw_value: bytes | None) -> bool:
        """For "numeric" rules: text must be numbers only; binary must not hide words."""
        if self.values == "any" or not raw_value:
            return True
        if _PRINTABLE.match(raw_value):
            return bool(_NUMERIC_TEXT.match(raw_value))
        return _LETTER_RUN.search(raw_value) is None


def _rule(creator: str, group: int, offsets: tuple[int, ...], note: str) -> SafePrivateElement:
    return SafePrivateElement(creator, frozenset(offsets), group, "numeric", note)


#: Shipped default: diffusion and timing parameters researchers need and that describe only the
#: acquisition (as published in vendors' conformance statements and in PS3.15 Annex E.3.10's
#: spirit). Numeric only.
DEFAULT_SAFE_PRIVATE: tuple[SafePrivateElement, ...] = (
    _rule(
        "SIEMENS MR HEADER",
        0x0019,
        (0x0A, 0x0B, 0x0C, 0x0E, 0x27, 0x28, 0x29),
        "mosaic count, slice duration, b-value, gradient direction, B-matrix, bandwidth, "
        "slice times",
    ),
    _rule("GEMS_PARM_01", 0x0043, (0x39,), "b-value (slop integers)"),
    _rule("GEMS_ACQU_01", 0x0019, (0xBB, 0xBC, 0xBD), "diffusion gradient direction"),
    _rule("Philips Imaging DD 001", 0x2001, (0x03,), "diffusion b-factor"),
    _rule("Philips MR Imaging DD 001", 0x2005, (0xB0, 0xB1, 0xB2), "diffusion direction"),
)

__all__ = ["DEFAULT_SAFE_PRIVATE", "SafePrivateElement", "ValueCheck"]
