"""The closed vocabulary that metrics labels and event log fields may use.

Events promise to carry only configured route and destination names and values from fixed enums
(see `gateway.events`). `Vocabulary` enforces that promise at the edge where values leave the
process (a metric label, a log line): a value outside the vocabulary becomes ``other``, so a bug
that puts a UID, a patient name or a stranger's AE title into an event cannot leak it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

from deid_core.errors import ConfigError
from gateway.events import (
    AssociationRejected,
    ForwardFailed,
    GatewayEvent,
    InstanceQuarantined,
    InstanceRefused,
    InstanceRejected,
    LesionGateDecided,
    QuarantineReason,
    RefusalReason,
    Stage,
)

#: Label value for a route or destination name that is not in the configuration.
OTHER = "other"
#: Label value for "no route matched" (and for the receive stage, which precedes routing).
NO_ROUTE = "none"
RESERVED = frozenset({OTHER, NO_ROUTE})

#: Failure kinds a forwarder reports (`ForwardFailed.reason`): the kinds of
#: `dicom_io.scu.AssociationFailed` ("aborted": the association broke in the middle of a batch)
#: plus "status", one instance refused by an archive that answered.
FORWARD_FAILURE_REASONS = (
    "refused",
    "unreachable",
    "aborted",
    "status",
    "timeout",
    "tls",
    # DICOMweb (dicom_io.dicomweb.StowFailed): credentials rejected, archive busy, other 5xx
    "auth",
    "busy",
    "server_error",
)
#: Lesion gate outcomes (`LesionGateDecided.outcome`).
GATE_OUTCOMES = ("accepted", "no_lesion_found", *(r.value for r in QuarantineReason))

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


class ClosedSet:
    """A closed set of values; anything outside it reads as ``other``."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names: tuple[str, ...] = tuple(dict.fromkeys(str(n) for n in names))
        self._allowed = frozenset(self.names)

    def __call__(self, value: str) -> str:
        return str(value) if value in self._allowed else OTHER

    def __contains__(self, value: object) -> bool:
        return value in self._allowed


def check_configured_names(kind: str, names: Sequence[str]) -> None:
    """Configured names become label values: short, plain, and not a reserved word."""
    for name in names:
        if name in RESERVED:
            raise ConfigError(
                f"metrics: a {kind} may not be named '{name}': the name is reserved for metrics"
            )
        if not _SAFE_NAME.match(name):
            raise ConfigError(
                f"metrics: {kind} names must be 1-64 letters, digits or ._:- "
                f"(got one of {len(name)} characters)"
            )


class Vocabulary:
    """The configured route and destination names plus the fixed enums."""

    def __init__(self, routes: Sequence[str], destinations: Sequence[str]) -> None:
        check_configured_names("route", routes)
        check_configured_names("destination", destinations)
        self.routes = ClosedSet(routes)
        self.destinations = ClosedSet(destinations)
        self.refusals = ClosedSet(r.value for r in RefusalReason)
        self.quarantine_reasons = ClosedSet(r.value for r in QuarantineReason)
        self.forward_failures = ClosedSet(FORWARD_FAILURE_REASONS)
        self.gate_outcomes = ClosedSet(GATE_OUTCOMES)
        self.stages = ClosedSet(s.value for s in Stage)

    def route(self, route: str) -> str:
        """A route label: a configured name, ``none`` for "no route matched", else ``other``."""
        return NO_ROUTE if route == "" else self.routes(route)

    def clean(self, event: GatewayEvent) -> GatewayEvent:
        """The same event with every free-text field mapped into the vocabulary."""
        cleaned: dict[str, str] = {}
        route = getattr(event, "route", None)
        if isinstance(route, str) and route != "":
            cleaned["route"] = self.routes(route)
        destination = getattr(event, "destination", None)
        if isinstance(destination, str):
            cleaned["destination"] = self.destinations(destination)
        stage = getattr(event, "stage", None)
        if isinstance(stage, str):
            cleaned["stage"] = self.stages(stage)
        match event:
            case ForwardFailed(reason=reason):
                cleaned["reason"] = self.forward_failures(reason)
            case LesionGateDecided(outcome=outcome):
                cleaned["outcome"] = self.gate_outcomes(outcome)
            case AssociationRejected(reason=reason) | InstanceRefused(reason=reason):
                cleaned["reason"] = self.refusals(reason)
            case InstanceQuarantined(reason=reason) | InstanceRejected(reason=reason):
                cleaned["reason"] = self.quarantine_reasons(reason)
        # A new event only when something changed: the usual event is clean already, and this
        # runs for every event in the metrics and in the event log.
        changes = {k: v for k, v in cleaned.items() if getattr(event, k) != v}
        return dataclasses.replace(event, **changes) if changes else event
