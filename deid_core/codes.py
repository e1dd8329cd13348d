"""Code Meaning (0008,0104) checked against the coding scheme: a meaning is display text, and a
sender can type anything there ("Lesion of Mr Smith" next to a valid SNOMED code).

A meaning survives when it is the standard meaning of its code in one of the schemes pydicom
ships concept tables for (DCM, SCT, LN, UCUM, NCIt, RADLEX ...); a known code with another text
gets its standard meaning; any other meaning is cleaned like a descriptor.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any, cast

_SPACE = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _SPACE.sub(" ", text).strip(" \x00").casefold()


@cache
def _meanings() -> dict[tuple[str, str], tuple[str, ...]]:
    """(scheme, code value) -> the standard meanings, first the preferred one."""
    index: dict[tuple[str, str], list[str]] = {}
    try:
        from pydicom.sr._concepts_dict import concepts
    except ImportError:  # pragma: no cover - a pydicom without concept tables
        return {}
    for scheme, by_keyword in concepts.items():
        for codes in by_keyword.values():
            for value, (meaning, _cids) in cast(dict[str, Any], codes).items():
                index.setdefault((scheme, value), []).append(meaning)
    return {k: tuple(v) for k, v in index.items()}


def standard_meanings(scheme: str, value: str) -> tuple[str, ...]:
    """The meanings the scheme gives this code; () when the code is not known here."""
    return _meanings().get((scheme.strip(" \x00"), value.strip(" \x00")), ())


def verified_meaning(scheme: str, value: str, meaning: str) -> str | None:
    """The Code Meaning to write: `meaning` itself when it is standard (UCUM units may also be
    their own code), the standard meaning when the code is known, None when neither."""
    known = standard_meanings(scheme, value)
    norm = _norm(meaning)
    if any(_norm(m) == norm for m in known):
        return meaning
    if scheme.strip(" \x00") == "UCUM" and norm == _norm(value) and norm:
        return meaning
    if known:
        return known[0][:64]
    return None


__all__ = ["standard_meanings", "verified_meaning"]
