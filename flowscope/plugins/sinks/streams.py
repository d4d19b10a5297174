"""Send-only streams (IPFIX and JSON lines over TCP or TLS): noticing that the peer has closed.

A collector never sends data back on these streams, so anything readable is an end of stream or a
TLS alert (TLS 1.3 reports a refused client certificate only after the handshake). Checked after a
connection's first message and before each batch, it lets a sink keep its batch and retry on a new
connection instead of writing into one the peer has already closed.
"""

from __future__ import annotations

import select
import socket
import ssl


def check_open(sock: socket.socket, wait: float = 0.0) -> None:
    """Raise :class:`ConnectionResetError` if the peer has closed ``sock`` (waiting up to ``wait`` s)."""
    readable, _, _ = select.select([sock], [], [], wait)
    if not readable:
        return
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        data = sock.recv(4096)
    except (ssl.SSLWantReadError, BlockingIOError):
        return  # TLS housekeeping (e.g. session tickets), no application data
    finally:
        sock.settimeout(timeout)
    if not data:
        raise ConnectionResetError("the collector closed the connection")
