"""systemd's notify protocol against a fake NOTIFY_SOCKET: READY after the listeners, WATCHDOG from the
loop, STOPPING on shutdown."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx
import trio

from daemon.app import Running, serve_daemon
from daemon.config import load_settings
from daemon.sdnotify import Notifier
from tests.features_off import OFF_ENV


async def test_ready_watchdog_and_stopping_reach_the_notify_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await sock.bind(path)
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    settings = load_settings(env={**OFF_ENV, "KLINED_DATA_DIR": str(tmp_path / "data"), "KLINED_HTTP_PORT": "0"})
    messages: list[str] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            running: Running = await nursery.start(
                lambda task_status: serve_daemon(settings, notifier=notifier, task_status=task_status)
            )
            ready = (await sock.recv(4096)).decode()
            assert "READY=1" in ready.split("\n")
            assert f"MAINPID={os.getpid()}" in ready
            async with httpx.AsyncClient() as http:  # READY means the listener already answers
                assert (await http.get(running.http_url + "/api/version")).status_code == 200
            for _ in range(2):  # every 0.1 s: half of WATCHDOG_USEC
                messages.append((await sock.recv(4096)).decode())
            assert messages == ["WATCHDOG=1", "WATCHDOG=1"]
            running.stop.set()
            while "STOPPING=1" not in (message := (await sock.recv(4096)).decode()).split("\n"):
                assert message == "WATCHDOG=1"
    sock.close()


def test_no_notify_socket_means_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.send("READY=1")  # nothing happens, nothing raises
    assert Notifier({"NOTIFY_SOCKET": "@abstract"}).address == "\0abstract"
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}).watchdog_s is None
