"""The real ``klined`` as a child process on loopback, for end-to-end and chaos tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import trio

from daemon.fakex.server import FakeExchangeUrls
from tests.features_off import OFF_ENV

BIN = Path(sys.executable).parent
BTC = "binance:spot:BTC/USDT:1m"
# The bound on any one wait for the real process (started, an answer, a frame, an event): a cold start alone
# takes seconds on a loaded 2-core machine. A passing run never waits it out; it only ends a stuck one.
PROCESS_DEADLINE_S: Final = 60.0


def free_port() -> int:
    """A loopback port nobody listens on now (pin it to restart a daemon at the same address, or point a client
    at a closed one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def klined(
    data: Path, urls: FakeExchangeUrls, log_to: Path | None = None, **extra: str
) -> AsyncIterator[tuple[trio.Process, str]]:
    """``klined run`` on the fake exchange; ``log_to`` keeps its log lines (appended) for a post-mortem."""
    env = {
        **os.environ,
        **OFF_ENV,  # after the shell's: a test states the features it uses
        "KLINED_DATA_DIR": str(data),
        "KLINED_HTTP_PORT": "0",
        "KLINED_WHITELIST": BTC,
        "KLINED_ENABLE_WHITELIST_INGEST": "1",
        "KLINED_BINANCE_SPOT_WS_URL": urls.spot_ws,
        "KLINED_BINANCE_SPOT_REST_URL": urls.rest_url,
        "KLINED_BINANCE_FUTURES_WS_URL": urls.futures_ws,
        "KLINED_BINANCE_FUTURES_REST_URL": urls.rest_url,
        **extra,
    }

    def keep(chunk: bytes) -> None:
        if log_to is not None:
            with log_to.open("ab") as f:
                f.write(chunk)

    proc = await trio.lowlevel.open_process([str(BIN / "klined"), "run"], env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    buffer = b""
    url = None
    with trio.fail_after(PROCESS_DEADLINE_S):
        while url is None:
            chunk = await proc.stdout.receive_some(65536)
            assert chunk, "klined exited before it was ready"
            keep(chunk)
            buffer += chunk
            for line in buffer.split(b"\n"):
                if b'"daemon_ready"' in line:
                    url = json.loads(line)["http_url"]
    async with trio.open_nursery() as nursery:

        async def drain() -> None:  # a full pipe must never stall the daemon
            assert proc.stdout is not None
            while chunk := await proc.stdout.receive_some(65536):
                keep(chunk)

        nursery.start_soon(drain)
        try:
            yield proc, url
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(10):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
            await proc.wait()
            nursery.cancel_scope.cancel()
