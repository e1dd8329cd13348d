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
from typing import Any

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
    """pynetdicom EVT_CONN_OPEN handler: TCP_NODELAY on the association's socket, and a shorter
    DUL poll sleep."""
    assoc = event.assoc
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        enable_nodelay(sock)
    if hasattr(assoc.dul, "_run_loop_delay"):
        assoc.dul._run_loop_delay = DUL_POLL_SECONDS


def has_nodelay(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
