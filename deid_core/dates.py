"""Shifting DA and DT values by a whole number of days (Retain Longitudinal Modified Dates).

Every date of one patient moves by the same number of days, so intervals between them survive.
Times of day (TM, and the time part of DT) are left as they are: a shift by whole days does not
change them, and a DA/TM pair stays consistent with the DT that combines them. A DT's UTC offset
(&ZZXX) is kept. A value that cannot be read as a date returns None: the caller then removes it
rather than passing an unknown string through.
"""

from __future__ import annotations

import datetime as _dt
import re

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DA_OLD = re.compile(r"^(\d{4})\.(\d{2})\.(\d{2})$")  # ACR-NEMA style, still seen
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?([+-]\d{4})?$")


def _shift(year: int, month: int, day: int, days: int) -> _dt.date | None:
    try:
        return _dt.date(year, month, day) + _dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None


def shift_da(value: str, days: int) -> str | None:
    """Shift one DA value ("YYYYMMDD"); None if it is not a valid date."""
    text = value.strip(" \x00")
    match = _DA.match(text) or _DA_OLD.match(text)
    if match is None:
        return None
    new = _shift(int(match[1]), int(match[2]), int(match[3]), days)
    return new.strftime("%Y%m%d") if new and new.year >= 1 else None


def shift_dt(value: str, days: int) -> str | None:
    """Shift one DT value, keeping its precision, its time of day and its UTC offset.

    A DT with only a year or a year and month is shifted as the first day of that period and
    written back with the same precision.
    """
    text = value.strip(" \x00")
    match = _DT.match(text)
    if match is None:
        return None
    year, month, day, time, offset = match.groups()
    new = _shift(int(year), int(month or 1), int(day or 1), days)
    if new is None or new.year < 1:
        return None
    out = f"{new.year:04d}"
    if month:
        out += f"{new.month:02d}"
        if day:
            out += f"{new.day:02d}" + (time or "")
    return out + (offset or "")


def shift_values(value: str, vr: str, days: int) -> str | None:
    """Shift a (possibly multi-valued) DA or DT string; None if any value cannot be read."""
    shifter = shift_da if vr == "DA" else shift_dt
    parts = []
    for part in value.split("\\"):
        if not part.strip(" \x00"):
            parts.append("")
            continue
        shifted = shifter(part, days)
        if shifted is None:
            return None
        parts.append(shifted)
    return "\\".join(parts)


__all__ = ["shift_da", "shift_dt", "shift_values"]
