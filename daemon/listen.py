"""The HTTP/WebSocket listening socket, made here and handed to hypercorn as ``fd://N``.

hypercorn has no write timeout: its socket sends are shielded, so a peer that stops reading (its TCP window
closed) would hold its connection, its task and the answer's bytes forever. ``TCP_USER_TIMEOUT`` on the
listener, inherited by every accepted socket, has the kernel abort a connection whose sent data has gone
unacknowledged this long (on Linux also while the peer advertises a zero window); the blocked send then fails
and hypercorn ends that connection alone. A slow reader that still makes progress is never cut.
"""

from __future__ import annotations

import socket


def http_listener_bind(host: str, port: int, *, send_timeout_s: float) -> str:
    """Bind ``host:port`` (port 0: any free one) and return the ``fd://`` bind hypercorn takes over."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux; elsewhere the shutdown deadline still bounds a stop
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, round(send_timeout_s * 1000)))
        sock.bind((host.strip("[]"), port))
    except BaseException:
        sock.close()
        raise
    return f"fd://{sock.detach()}"  # hypercorn's socket owns the descriptor from here on
