"""Event sink that writes one structured (JSON) log line per state change.

Events carry no PHI by construction (see gateway.events): only configured names, fixed reasons,
counts, sizes, durations, association ids and hashed study keys. This sink renders their fields as
they are.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any

from gateway.events import GatewayEvent
from gateway.logs import get_logger


class EventLog:
    def __init__(self, name: str = "gateway.events") -> None:
        self._log = get_logger(name)

    def emit(self, event: GatewayEvent) -> None:
        kind = type(event).__name__
        fields: dict[str, Any] = {}
        for f in dataclasses.fields(event):
            value = getattr(event, f.name)
            fields[f.name] = value.value if isinstance(value, Enum) else value
        self._log.info(kind, **fields)
