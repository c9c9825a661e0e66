"""A free TCP port on 127.0.0.1 for a server a test starts (closed again when returned)."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port() -> int:
    """A port nothing listens on now: the OS picks it, the socket is closed before returning."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
