"""structlog set-up: JSON lines on stderr, one event per state change, never PHI.

Callers bind context such as the association id, the hashed study key and the route; values read
from a dataset (names, IDs, UIDs) must never be bound or logged. As defence in depth, the
`redact_identifying_keys` processor blanks any field whose *key* names an identifying attribute
(``patient_name``, ``PatientID``, ``accession``, ``study_uid``...), whatever its value, before a
line is written: a slip in a caller then leaks a key name, never the value.

Libraries log through the standard `logging` module (pynetdicom, pydicom's warnings, our
`dicom_io`); `configure_logging` sends those records through the same JSON renderer, one object per
line, with ``logger`` naming the source. Libraries are heard from warnings up, whatever the level.
Their messages are free text we do not write, so their text (and every exception's text) is
scrubbed before it is written: quoted values, UID-like numbers, long digit runs and person-name
shaped tokens become placeholders (`scrub_text`). That is defence in depth; the rule remains that
nobody logs a value read from a dataset.

`EventLog` is the event sink that writes one line per `gateway.events` event.
"""

from __future__ import annotations

import dataclasses
import functools
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
#: Our own packages: they log at the configured level. Everything else from warnings up.
OWN_LOGGERS = ("gateway", "dicom_io", "deid_core")
_SCRUB = (
    # quoted values, as repr() and most messages write them: 'DOE^JOHN', "1.2.3.4.5"
    (re.compile(r"(?<![A-Za-z0-9])[bru]?'[^'\n]*'"), "'…'"),
    (re.compile(r'(?<![A-Za-z0-9])[bru]?"[^"\n]*"'), "'…'"),
    # UIDs: five or more dot-separated numbers (an IPv4 address has four and stays)
    (re.compile(r"\d+(?:\.\d+){4,}"), "<uid>"),
    # person names in DICOM form (family^given^...)
    (re.compile(r"[^\s'\"]*\^[^\s'\"]*"), "<name>"),
    # dates, MRNs and other long numbers (ports, errno values and counts are shorter)
    (re.compile(r"\d{6,}"), "<number>"),
)


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


#: A traceback's frame line (file, line number, function): code locations, kept as they are.
_TRACEBACK_FRAME = re.compile(r'^\s*File "[^"\n]*", line \d+, in [\w<>.]+$')


def scrub_text(text: str) -> str:
    """Free text from elsewhere (a library's message, an exception) with anything shaped like a
    value from a dataset replaced by a placeholder. Heuristic, and meant to be: it keeps error
    kinds, errno values, host:port and exception types readable."""
    for pattern, placeholder in _SCRUB:
        text = pattern.sub(placeholder, text)
    return text


def scrub_exception(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor (after format_exc_info): scrub rendered tracebacks; an exception's
    message may quote the value it choked on."""
    text = event_dict.get("exception")
    if isinstance(text, str):
        event_dict["exception"] = "\n".join(
            line if _TRACEBACK_FRAME.match(line) else scrub_text(line) for line in text.split("\n")
        )
    return event_dict


def _from_library(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Pre-chain for records of the standard `logging` module: name the source, scrub the text."""
    record = event_dict.get("_record")
    if isinstance(record, logging.LogRecord):
        event_dict["logger"] = record.name
    event_dict["event"] = scrub_text(str(event_dict.get("event", "")))
    return event_dict


class _SharedLineHandler(logging.Handler):
    """Writes formatted records through a structlog PrintLogger on the same stream, so lines from
    `logging` and from structlog share one lock and never interleave."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._out = structlog.PrintLogger(stream)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._out.msg(self.format(record))
        except Exception:
            self.handleError(record)


def configure_logging(
    level: str = "info", fmt: Literal["json", "console"] = "json", stream: TextIO | None = None
) -> None:
    out = stream or sys.stderr
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            scrub_exception,
            redact_identifying_keys,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # The standard library's records: same renderer, same stream, one line each.
    handler = _SharedLineHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.processors.add_log_level,
                timestamper,
                structlog.processors.format_exc_info,
                scrub_exception,
                _from_library,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redact_identifying_keys,
                renderer,
            ],
        )
    )
    handler._deid_gateway = True  # type: ignore[attr-defined]
    _remove_library_handler()
    root = logging.getLogger()
    root.addHandler(handler)
    # Libraries from warnings up (their debug output is costly and may dump data sets); our own
    # packages at the configured level.
    root.setLevel(max(numeric_level, logging.WARNING))
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(numeric_level)
    logging.captureWarnings(True)


def _remove_library_handler() -> None:
    root = logging.getLogger()
    for previous in [h for h in root.handlers if getattr(h, "_deid_gateway", False)]:
        root.removeHandler(previous)


def reset_logging() -> None:
    """Undo `configure_logging` (for tests that configure it several times in one process)."""
    _remove_library_handler()
    logging.captureWarnings(False)
    logging.getLogger().setLevel(logging.WARNING)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    structlog.reset_defaults()


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
        "InstanceLost",
    }
)
#: Timing observations, several per instance: the metrics' business; in the log at debug only.
_DEBUG_EVENTS = frozenset({"StageCompleted", "GpuWork"})
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


@functools.cache
def _event_name(kind: str) -> str:
    return _CAMEL.sub("_", kind).lower()


class EventLog:
    """Event sink: one JSON line per state change, named after the event (``instance_stored``).

    Events carry only configured names, enum values, counts, durations and opaque ids. Given the
    configuration's `Vocabulary`, the sink also maps any route, destination, reason or outcome
    outside it to ``other`` before writing, as the metrics do. Refusals, failures and quarantines
    are warnings; per-stage timings are debug (the latency histograms carry them).
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
        name = _event_name(kind)
        fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
        if kind in _WARNING_EVENTS:
            self._log.warning(name, **fields)
        elif kind in _DEBUG_EVENTS:
            self._log.debug(name, **fields)
        else:
            self._log.info(name, **fields)
