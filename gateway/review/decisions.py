"""What a reviewer may decide about a quarantine entry, and what each decision does.

Three decisions, each with a reason the reviewer must give:

- **release** — send it onward as it is, because a person has checked what the gateway could not:
  a dead letter goes back to its destination's outbox; a burned-in annotation is released with
  its pixels as they are (the reviewer saw no identifying text); a photograph the lesion check
  rejected is edited again (deterministically: the same pixels) and sent although the gate failed.
  Not offered where nothing can be released as it is (no route, de-identification failed, ...).
- **re-run** — put the original back into the pipeline as a new arrival, by matching the routes
  again or on a route the reviewer picks (another profile, pixel step or destination). Not offered
  for a dead letter, whose original is no longer kept.
- **purge** — overwrite and delete it; only the journal rows (no PHI) remain.

Every decision is recorded with who and why in the journal's `decisions` table (by the
quarantine) and in the audit trail (by the station).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from gateway.events import QuarantineReason
from gateway.interlock import ACCEPT_PIXELS_REASONS
from gateway.journal import QuarantineRow
from gateway.outbox import Outbox
from gateway.quarantine import Quarantine, QuarantineError
from gateway.spool import Spool

#: The shortest reason accepted for a decision ("ok" is not a reason).
MIN_WHY = 4
MAX_WHY = 2000

LESION_REASONS = frozenset(
    {
        QuarantineReason.LESION_VANISHED.value,
        QuarantineReason.LESION_IOU_BELOW_THRESHOLD.value,
        QuarantineReason.LESION_MASK_UNRELIABLE.value,
    }
)


class Decision(StrEnum):
    RELEASE = "release"
    RERUN = "rerun"
    PURGE = "purge"


class DecisionRefused(QuarantineError):
    """A decision that cannot be carried out as asked; the message is shown to the reviewer."""


@dataclass(frozen=True)
class Choices:
    """The decisions offered for one entry, each with what it will do, in words."""

    release: str | None
    release_unavailable: str
    rerun: str | None
    rerun_needs_route: bool
    purge: str = "Overwrite and delete the kept instance and images. Only the journal record stays."


def choices_for(row: QuarantineRow, route_pixels: Mapping[str, str] | None = None) -> Choices:
    """The decisions the item page offers. `route_pixels` (route name -> pixel step) lets it
    withhold a release that the interlock would refuse: unedited pixels from a flowedit route."""
    reason = row.reason
    rerun = (
        "Process the received original again as a new arrival: on the route you pick, or by "
        "matching the routes again (after a configuration change)."
    )
    if reason == QuarantineReason.DEAD_LETTER.value:
        return Choices(
            release=f"Send the de-identified copy to {row.destination or 'its destination'} again; "
            "attempts start from zero.",
            release_unavailable="",
            rerun=None,
            rerun_needs_route=False,
        )
    if reason in ACCEPT_PIXELS_REASONS and (route_pixels or {}).get(row.route) == "flowedit":
        return Choices(
            release=None,
            release_unavailable="This route edits photographs: its pixels cannot leave unedited. "
            "Re-run it (the edit and the lesion check run again) or purge it.",
            rerun=rerun,
            rerun_needs_route=False,
        )
    if reason in ACCEPT_PIXELS_REASONS:
        return Choices(
            release="You checked the image: it shows no identifying text. The metadata is "
            "de-identified as usual and the pixels are sent as they are.",
            release_unavailable="",
            rerun=rerun,
            rerun_needs_route=False,
        )
    if reason in LESION_REASONS:
        return Choices(
            release="You accept the de-identified photograph although the lesion check failed. "
            "It is edited again (the edit is deterministic: the same picture) and sent.",
            release_unavailable="",
            rerun=rerun,
            rerun_needs_route=False,
        )
    if reason == QuarantineReason.NO_ROUTE.value:
        return Choices(
            release=None,
            release_unavailable="No route matched: pick one and re-run.",
            rerun="Process the received original on the route you pick.",
            rerun_needs_route=True,
        )
    return Choices(
        release=None,
        release_unavailable="Nothing here can be sent as it is: re-run it (e.g. after fixing the "
        "configuration) or purge it.",
        rerun=rerun,
        rerun_needs_route=False,
    )


def check_why(why: str) -> str:
    text = why.strip()
    if len(text) < MIN_WHY:
        raise DecisionRefused(f"give a reason for the decision (at least {MIN_WHY} characters)")
    if len(text) > MAX_WHY:
        raise DecisionRefused(f"the reason is too long (at most {MAX_WHY} characters)")
    return text


def carry_out(
    decision: Decision,
    row: QuarantineRow,
    *,
    quarantine: Quarantine,
    spool: Spool,
    outbox: Outbox,
    why: str,
    by: str,
    route: str | None,
    routes: frozenset[str],
) -> str:
    """Carry out one decision; returns what happened, in words. Raises DecisionRefused when the
    decision is not offered for this entry or its inputs are wrong (nothing changes then)."""
    why = check_why(why)
    if row.state != "held":
        raise DecisionRefused(f"entry {row.id} is already {row.state}")
    choices = choices_for(row)
    if decision is Decision.PURGE:
        quarantine.purge(row.id, operator_note=why, decided_by=by)
        return "purged"
    if decision is Decision.RELEASE:
        if choices.release is None:
            raise DecisionRefused(choices.release_unavailable)
        try:
            return quarantine.release(
                row.id,
                spool=spool,
                outbox=outbox,
                accept_pixels=row.reason in ACCEPT_PIXELS_REASONS,
                waive_gate=row.reason in LESION_REASONS,
                operator_note=why,
                decided_by=by,
            )
        except DecisionRefused:
            raise
        except QuarantineError as exc:
            raise DecisionRefused(str(exc)) from None
    if choices.rerun is None:
        raise DecisionRefused("a dead letter has no original to process again; release or purge it")
    if route and route not in routes:
        raise DecisionRefused(f"no route named {route!r} in the configuration")
    if choices.rerun_needs_route and not route:
        raise DecisionRefused("no route matched this instance: pick a route to re-run it on")
    # No force here: a re-run onto a weaker pixel step than the entry's route is refused by the
    # quarantine, and only an operator can force it (`quarantine release --route ... --force`).
    try:
        return quarantine.release(
            row.id,
            spool=spool,
            outbox=outbox,
            route=route or None,
            operator_note=why,
            decided_by=by,
        )
    except DecisionRefused:
        raise
    except QuarantineError as exc:
        raise DecisionRefused(str(exc)) from None
