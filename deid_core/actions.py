"""The action codes of PS3.15 Table E.1-1a and how a combination is settled.

A combination such as X/Z/D means: remove, unless the attribute's Type in the instance's IOD needs
it present (Type 2 -> zero length, Type 1 -> dummy). X/Z/U* keeps a needed reference
sequence with its UIDs replaced (Type 1 and 2; see `resolve`). The Type comes from
`deid_core.iod`; when it is
not known the most demanding Type the attribute has in any IOD we know is used, so the output keeps
its conformance (every outcome is equally free of identity: X, Z, D and U all drop the value).
"""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    """A resolved action on one attribute."""

    #: Remove the attribute (a sequence with all its items).
    REMOVE = "X"
    #: Replace with a zero-length value (an empty sequence).
    ZERO = "Z"
    #: Replace with a dummy value of the VR (a sequence: its items kept, every value in them dummy).
    DUMMY = "D"
    #: Keep (a sequence: its items are still de-identified attribute by attribute).
    KEEP = "K"
    #: Clean: keep the information that is not identifying (see `deid_core.clean`).
    CLEAN = "C"
    #: Replace the UID by its keyed pseudonym (a sequence: keep it, UIDs inside replaced).
    UID = "U"


#: Every code the table uses, combinations included.
TABLE_CODES = frozenset({"D", "Z", "X", "K", "C", "U", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"})


def resolve(code: str, attr_type: int | None) -> Action:
    """Settle a table code for an attribute of the given Type (1, 2 or 3; None when unknown).

    Type 1C/2C count as 1/2: the attribute is present in the input, so its condition may hold.
    """
    if code not in TABLE_CODES:
        raise ValueError(f"unknown action code {code!r}")
    if "/" not in code:
        return Action(code)
    t = attr_type if attr_type in (1, 2) else 3
    if code == "X/Z":
        return Action.REMOVE if t == 3 else Action.ZERO
    if code == "X/D":
        return Action.REMOVE if t == 3 else Action.DUMMY
    if code == "Z/D":
        return Action.DUMMY if t == 1 else Action.ZERO
    if code == "X/Z/D":
        return {1: Action.DUMMY, 2: Action.ZERO, 3: Action.REMOVE}[t]
    # X/Z/U*: a sequence of references. Where the IOD needs it (Type 1, and Type 2 too) it is
    # kept with the UIDs inside replaced by their pseudonyms: an empty Type 2 sequence would also
    # conform, but would leave other references dangling (e.g. a segmentation's Referenced Series
    # Sequence listing instances no Source Image Sequence names), and keyed UIDs reveal nothing.
    return Action.REMOVE if t == 3 else Action.UID


__all__ = ["TABLE_CODES", "Action", "resolve"]
