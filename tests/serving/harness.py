"""A daemon in-process on loopback with a WebSocket client that reads frames as dicts."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx
import orjson
import trio
from trio_websocket import WebSocketConnection, open_websocket_url, wrap_client_stream

from actors.fanout.hub import FanOut
from daemon.app import Running, serve_daemon
from daemon.config import load_settings
from tests.features_off import OFF_ENV

S1 = "binance:spot:BTC/USDT:1m"
SENTINEL = {"type": "ping"}  # answered with bad_request "unknown message type: ping": a marker in the stream
SENTINEL_REPLY = {"type": "error", "code": "bad_request", "message": "unknown message type: ping"}


def candle(t: int, close: float = 10.0) -> dict[str, Any]:
    return {
        "candle_time": t,
        "open": 10.0,
        "high": max(10.0, close) + 1,
        "low": min(10.0, close) - 1,
        "close": close,
        "volume": 1.0,
    }


def closed(t: int, series: str = S1) -> dict[str, Any]:
    return {"type": "candle_closed", "series_id": series, "candle": candle(t)}


def batch(*times: int, series: str = S1) -> dict[str, Any]:
    return {"type": "candles_batch", "series_id": series, "candles": [candle(t) for t in times]}


def gap(expected: int, actual: int, series: str = S1) -> dict[str, Any]:
    return {"type": "gap", "series_id": series, "expected_next_time": expected, "actual_time": actual}


@attrs.define
class Daemon:
    running: Running
    http: httpx.AsyncClient

    @property
    def hub(self) -> FanOut:
        assert self.running.services is not None
        return self.running.services.hub

    @property
    def ws_url(self) -> str:
        return self.running.http_url.replace("http://", "ws://") + "/ws/market"

    async def ingest(self, t: int, series: str = S1, close: float = 10.0) -> None:
        r = await self.http.post(
            "/api/market/ingest/candle_closed", json={"series_id": series, "candle": candle(t, close)}
        )
        assert r.status_code == 200, r.text

    async def ingest_many(self, times: list[int], series: str = S1) -> None:
        r = await self.http.post(
            "/api/dev/market/ingest/candles_closed_batch",
            json={"series_id": series, "candles": [candle(t) for t in times], "publish_ws": False},
        )
        assert r.status_code == 200, r.text

    async def forming(self, t: int, series: str = S1, close: float = 10.0) -> None:
        r = await self.http.post(
            "/api/market/ingest/candle_forming", json={"series_id": series, "candle": candle(t, close)}
        )
        assert r.status_code == 200, r.text

    @asynccontextmanager
    async def client(self, *, receive_buffer: int | None = None) -> AsyncIterator[Client]:
        """A client; ``receive_buffer`` shrinks its socket's receive buffer (a stalled reader fills it fast)."""
        if receive_buffer is None:
            async with open_websocket_url(self.ws_url, max_message_size=64 << 20) as ws:
                yield Client(ws, self.hub)
            return
        url = urlsplit(self.ws_url)
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before connect: no window scaling
        await sock.connect((url.hostname, url.port))
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, trio.SocketStream(sock), url.hostname or "", url.path)
            try:
                yield Client(ws, self.hub)
            finally:
                await ws.aclose()


@attrs.define
class Client:
    ws: WebSocketConnection
    hub: FanOut

    async def send(self, obj: object) -> None:
        await self.ws.send_message(orjson.dumps(obj).decode())

    async def subscribe(self, since: int | None = None, batch: bool | None = None, series: str = S1) -> None:
        await self.send({"type": "subscribe", "series_id": series, "since": since, "supports_batch": batch})

    async def recv(self) -> dict[str, Any]:
        with trio.fail_after(10):
            obj: dict[str, Any] = orjson.loads(await self.ws.get_message())
        return obj

    async def frames_until_quiet(self) -> list[dict[str, Any]]:
        """Every frame the server has for us now: wait out catchups and heals, then read up to a marker."""
        await self.hub.wait_quiet()
        await self.send(SENTINEL)
        out = []
        while (frame := await self.recv()) != SENTINEL_REPLY:
            out.append(frame)
        return out


@asynccontextmanager
async def daemon(tmp_path: Path, **env: str) -> AsyncIterator[Daemon]:
    settings = load_settings(
        env={
            **OFF_ENV,
            "KLINED_DATA_DIR": str(tmp_path),
            "KLINED_HTTP_PORT": "0",
            "KLINED_ENABLE_DEBUG_API": "1",
            "KLINED_ENABLE_KLINE_HEALTH": "1",
            **env,
        }
    )
    async with trio.open_nursery() as nursery:
        running: Running = await nursery.start(serve_daemon, settings)
        async with httpx.AsyncClient(base_url=running.http_url) as http:
            yield Daemon(running, http)
        running.stop.set()
