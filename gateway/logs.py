"""structlog set-up: JSON lines on stderr, one event per state change, never PHI.

Callers bind context such as the association id, the hashed study key and the route; values read
from a dataset (names, IDs, UIDs) must never be bound or logged. As defence in depth, the
`redact_identifying_keys` processor blanks any field whose *key* names an identifying attribute
(``patient_name``, ``PatientID``, ``accession``, ``study_uid``...), whatever its value, before a
line is written: a slip in a caller then leaks a key name, never the value.

`EventLog` is the event sink that writes one line per `gateway.events` event.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog

from gateway.events import GatewayEvent
from gateway.labels import Vocabulary

#: What a blanked field reads in the log.
REDACTED = "[redacted]"
#: Fragments of normalised keys (lower case, letters and digits only) that name identifying data.
_IDENTIFYING_FRAGMENTS = (
    "patient",
    "accession",
    "birth",
    "physician",
    "operatorname",
    "operatorsname",
    "personname",
    "institution",
    "uid",
    "studyid",
)
#: Short keys blanked only when they are the whole key ("ssn" alone, not "classname").
_IDENTIFYING_KEYS = frozenset({"mrn", "ssn", "dob"})
_NOT_ALNUM = re.compile(r"[^a-z0-9]")


def is_identifying_key(key: str) -> bool:
    """Whether a log field named ``key`` could hold an identifying value."""
    norm = _NOT_ALNUM.sub("", key.lower())
    return norm in _IDENTIFYING_KEYS or any(f in norm for f in _IDENTIFYING_FRAGMENTS)


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and is_identifying_key(k) else _redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


def redact_identifying_keys(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: blank fields whose key names identifying data, nested dicts included."""
    for key in list(event_dict):
        if key == "event":
            continue
        if is_identifying_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact(event_dict[key])
    return event_dict


def configure_logging(
    level: str = "info", fmt: Literal["json", "console"] = "json", stream: TextIO | None = None
) -> None:
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_identifying_keys,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger


_WARNING_EVENTS = frozenset(
    {
        "AssociationRejected",
        "InstanceRefused",
        "ForwardFailed",
        "InstanceQuarantined",
        "InstanceRejected",
    }
)
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


class EventLog:
    """Event sink: one JSON line per state change, named after the event (``instance_stored``).

    Events carry only configured names, enum values, counts, durations and opaque ids. Given the
    configuration's `Vocabulary`, the sink also maps any route, destination, reason or outcome
    outside it to ``other`` before writing, as the metrics do. Refusals, failures and quarantines
    are warnings.
    """

    def __init__(
        self,
        vocabulary: Vocabulary | None = None,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self._vocabulary = vocabulary
        self._log = logger or get_logger("gateway.events")

    def emit(self, event: GatewayEvent) -> None:
        if self._vocabulary is not None:
            event = self._vocabulary.clean(event)
        kind = type(event).__name__
        name = _CAMEL.sub("_", kind).lower()
        fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
        if kind in _WARNING_EVENTS:
            self._log.warning(name, **fields)
        else:
            self._log.info(name, **fields)
