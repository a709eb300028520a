"""systemd's notify protocol without libsystemd: a few datagrams on ``$NOTIFY_SOCKET``.

``READY=1`` once the daemon serves, ``STATUS=...`` summaries, ``WATCHDOG=1`` at half of ``$WATCHDOG_USEC``
from the main trio loop (a wedged loop stops the pings and systemd restarts the service), ``STOPPING=1``.
Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog
import trio

log = structlog.get_logger(__name__)


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path  # "@name": the abstract namespace
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_s: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1_000_000 / 2

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as e:  # systemd went away: notification is best effort, never fatal
            log.warning("sd_notify_failed", error=repr(e))

    async def watchdog(self) -> None:
        """Ping forever at half the watchdog interval (returns at once when there is no watchdog)."""
        if self.watchdog_s is None or not self.address:
            return
        while True:
            self.send("WATCHDOG=1")
            await trio.sleep(self.watchdog_s)
