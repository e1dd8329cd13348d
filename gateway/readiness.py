"""Readiness checks of a gateway node: what `/readyz` asks before it says "send studies here".

- ``journal_writable``: the journal commits a write, and a new file can be made in its folder.
- ``spool_writable``: the spool is below its high-water mark and a new file can be made where
  received instances go (otherwise every C-STORE would be refused with 0xA700).
- ``dicom_listener``: the DICOM listener takes associations (false once shutdown began).
- ``destination_<name>``: the destination answers a C-ECHO. The answer is cached for a few seconds,
  so however often probes and scrapes ask, an archive is echoed at most once per TTL; each answer
  also sets ``dicomgw_destination_up``, so the dashboard shows an archive down before the first
  forward fails.
- ``model_loaded``: only when a route uses a pixel step with a model (see
  `gateway.pixels.MODEL_FREE_STEPS`). A placeholder that passes once the pipeline (and with it the
  step and its model) is built, unless the step offers its own check of that name.

Every check is read-only or writes only a throw-away probe, and reports failure by raising or
returning False; `gateway.http.Readiness` turns that into names (never messages) in the body.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from dicom_io.dicomweb import StowFailed, StowTarget
from dicom_io.scu import AssociationFailed, StoreTarget, echo
from gateway.journal import Journal
from gateway.logs import get_logger
from gateway.spool import Spool, probe_directory

LOG = get_logger("gateway.readiness")

#: Seconds a destination's C-ECHO answer is reused.
ECHO_CACHE_SECONDS = 5.0
#: Upper bound for each phase of the C-ECHO (connect, associate, echo): the readiness endpoint
#: gives each check 2 s, and an archive that needs longer to answer an echo is not "reachable".
ECHO_TIMEOUT_SECONDS = 1.0

_NOT_NAME = re.compile(r"[^a-z0-9_]")


class Listener(Protocol):
    @property
    def accepting(self) -> bool: ...


def journal_writable(journal: Journal) -> Callable[[], None]:
    def check() -> None:
        journal.check_writable()
        probe_directory(journal.path.parent)

    return check


def spool_writable(spool: Spool) -> Callable[[], None]:
    return spool.check_writable


def listener_accepting(listener: Callable[[], Listener | None]) -> Callable[[], bool]:
    def check() -> bool:
        scp = listener()
        return scp is not None and scp.accepting

    return check


def identifiers(prefix: str, names: Iterable[str]) -> dict[str, str]:
    """A check or loop name per configured name: ``<prefix>_`` plus the name in lower case with
    anything but letters, digits and underscores made an underscore (numbered if two collide),
    e.g. ``destination_archive``, ``forwarder_archive``."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for configured in names:
        base = f"{prefix}_{_NOT_NAME.sub('_', configured.lower())}"[:60]
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        taken.add(name)
        out[configured] = name
    return out


#: Asks a destination whether it is there within a timeout; raises AssociationFailed or
#: StowFailed when not (C-ECHO for DIMSE, an HTTP request for DICOMweb).
Echo = Callable[[Any, float], None]


class DestinationProbe:
    """A destination's reachability by C-ECHO, cached for `ttl_s`; callable as a readiness check.

    One echo at a time: concurrent callers wait for the one in flight and share its answer.
    ``on_result(destination, reachable)`` hears every fresh answer (the node sets the
    ``dicomgw_destination_up`` gauge with it); a change is logged once, not on every probe.
    """

    def __init__(
        self,
        destination: str,
        target: StoreTarget | StowTarget,
        *,
        on_result: Callable[[str, bool], None] | None = None,
        ttl_s: float = ECHO_CACHE_SECONDS,
        timeout_s: float = ECHO_TIMEOUT_SECONDS,
        echo_fn: Echo = echo,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.destination = destination
        self.target = target
        self._on_result = on_result
        self._ttl_s = ttl_s
        self._timeout_s = min(timeout_s, target.connect_timeout)
        self._echo = echo_fn
        self._clock = clock
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._reachable: bool | None = None

    def __call__(self) -> bool:
        with self._lock:
            if self._checked_at is not None and self._clock() - self._checked_at < self._ttl_s:
                assert self._reachable is not None
                return self._reachable
            reason = ""
            try:
                self._echo(self.target, self._timeout_s)
                reachable = True
            except (AssociationFailed, StowFailed) as exc:
                reachable, reason = False, exc.kind
            self._checked_at = self._clock()
            if reachable != self._reachable:
                if reachable:
                    LOG.info("destination_reachable", destination=self.destination)
                else:
                    LOG.warning(
                        "destination_unreachable", destination=self.destination, reason=reason
                    )
            self._reachable = reachable
        if self._on_result is not None:
            self._on_result(self.destination, reachable)
        return reachable
