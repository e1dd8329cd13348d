"""Socket options for every DICOM connection we open or accept.

pynetdicom never sets TCP_NODELAY. Without it, Nagle's algorithm holds the small trailing PDU of
each C-STORE until the peer's delayed ACK, about 40 ms per instance (MACHINE-NOTES: a pynetdicom
sender went from 11–20 to 153–191 instances/s into Orthanc once it was set). `nodelay_on_open` is
bound to EVT_CONN_OPEN on both our listener and our sender, so every association socket gets it
before the first DIMSE message flows.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, Protocol

from pynetdicom import AE, evt
from pynetdicom.association import Association

#: pynetdicom's DUL reactor sleeps this long whenever a poll finds no data (its default is 1 ms).
#: Each C-STORE waits for several such polls, so the sleep bounds the rate of one association;
#: a shorter sleep trades a little idle CPU per open association for throughput.
DUL_POLL_SECONDS = 0.0002


def enable_nodelay(sock: Any) -> None:
    """Turn Nagle's algorithm off on a TCP socket (plain or TLS-wrapped); ignore other kinds."""
    # not a TCP socket (or already closed): nothing to tune
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def nodelay_on_open(event: Any) -> None:
    """pynetdicom EVT_CONN_OPEN handler: TCP_NODELAY on the association's socket, a shorter
    DUL poll sleep, and (when we request the association) a race-free reactor pause."""
    assoc = event.assoc
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        enable_nodelay(sock)
    if hasattr(assoc.dul, "_run_loop_delay"):
        assoc.dul._run_loop_delay = DUL_POLL_SECONDS
    if getattr(assoc, "is_requestor", False):
        make_reactor_pause_safe(assoc)


class ReactorCheckpoint:
    """Drop-in for the `threading.Event` an association's reactor waits on between polls, which
    also knows whether the reactor is really blocked on it.

    pynetdicom (3.0.4) pauses the reactor before each request it sends (C-STORE, C-FIND, ...)
    by clearing the event and spinning until the reactor's `_is_paused` flag is true. The reactor
    sets that flag *before* waiting and clears it after: if the sender clears the event just
    after the reactor's wait returned, it sees the stale true flag, sends, and the reactor then
    takes the peer's response off the queue and drops it ("Received unexpected C-STORE service
    message"); the sender waits out its DIMSE timeout. Under load (another thread holding the
    GIL, e.g. de-identification while forwarding) this happened within a few hundred C-STOREs:
    a 30-60 s stall and a needless re-send. Here `reactor_blocked` is true only while the
    reactor is inside `wait()` on a cleared checkpoint, so the pause cannot be seen early."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._open = True
        self.reactor_blocked = False

    def set(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._open = False

    def is_set(self) -> bool:
        return self._open

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            if not self._open:
                self.reactor_blocked = True
                try:
                    self._cond.wait_for(lambda: self._open, timeout)
                finally:
                    self.reactor_blocked = False
            return self._open


class _SafelyPausedAssociation(Association):
    """An association whose `_is_paused` reads the checkpoint's real state (see
    ReactorCheckpoint); once the association is being killed it reads as paused, as before."""

    @property
    def _is_paused(self) -> bool:
        state = self.__dict__
        checkpoint = state.get("_reactor_checkpoint")
        if isinstance(checkpoint, ReactorCheckpoint) and not state.get("_kill", False):
            if self.is_alive():
                return checkpoint.reactor_blocked
            return True  # no reactor left to steal anything
        return bool(state.get("_paused_flag", False))

    @_is_paused.setter
    def _is_paused(self, value: bool) -> None:
        self.__dict__["_paused_flag"] = value


def make_reactor_pause_safe(assoc: Any) -> None:
    """Give a pynetdicom association a race-free reactor pause (see ReactorCheckpoint)."""
    if type(assoc) is not Association:
        return  # already done, or a class we do not know
    checkpoint = ReactorCheckpoint()
    assoc.__dict__["_paused_flag"] = assoc.__dict__.get("_is_paused", False)
    assoc.__dict__["_reactor_checkpoint"] = checkpoint  # duck-typed: set, clear, is_set, wait
    assoc.__class__ = _SafelyPausedAssociation


def has_nodelay(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


class Peer(Protocol):
    """A DICOM node we call (a destination, a PACS)."""

    @property
    def ae_title(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def calling_ae_title(self) -> str: ...
    @property
    def ssl_context(self) -> ssl.SSLContext | None: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def dimse_timeout(self) -> float: ...
    def describe(self) -> str: ...


def client_ae(peer: Peer, max_pdu_size: int | None = None) -> AE:
    """Our AE towards `peer`, with its timeouts (and our maximum PDU size when given)."""
    ae = AE(ae_title=peer.calling_ae_title)
    ae.acse_timeout = peer.connect_timeout
    ae.connection_timeout = peer.connect_timeout
    ae.network_timeout = peer.dimse_timeout
    ae.dimse_timeout = peer.dimse_timeout
    if max_pdu_size is not None:
        ae.maximum_pdu_size = max_pdu_size
    return ae


def associate(
    ae: AE,
    peer: Peer,
    failure: Callable[[str, str], Exception],
    refused: str = "",
    **kwargs: Any,
) -> Any:
    """An established association with `peer` (TCP_NODELAY and the safe reactor pause via
    `nodelay_on_open`), or `failure(kind, message)` raised saying why not: kind "tls",
    "unreachable" or "refused" (`refused` adds a hint to that message)."""
    tls_args = (peer.ssl_context, peer.host) if peer.ssl_context is not None else None
    handlers = [(evt.EVT_CONN_OPEN, nodelay_on_open), *kwargs.pop("evt_handlers", [])]
    try:
        assoc = ae.associate(
            peer.host,
            peer.port,
            ae_title=peer.ae_title,
            tls_args=tls_args,
            evt_handlers=handlers,
            **kwargs,
        )
    except ssl.SSLError as exc:
        raise failure("tls", f"TLS to {peer.describe()} failed: {exc}") from None
    except OSError as exc:
        raise failure("unreachable", f"cannot connect to {peer.describe()}: {exc}") from None
    if not assoc.is_established:
        if assoc.is_rejected:
            raise failure("refused", f"{peer.describe()} rejected the association{refused}")
        # pynetdicom reports a refused TCP connection as an aborted association too
        raise failure("unreachable", f"no association with {peer.describe()}")
    return assoc
