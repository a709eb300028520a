"""The fake exchange is a listener too (issue 16): its WebSocket streams and REST API survive every hostile
peer of ``tests/chaos/hostile_peers.py``, one at a time and 200 at once, and keep serving a real client."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import orjson
import pytest
import trio
from trio_websocket import open_websocket_url

from daemon.fakex.server import FakeExchange, FakeExchangeUrls
from tests.chaos.hostile_peers import PEERS, Listener, crowd

# How long a peer waits for the exchange to end its connection. Only the exchange's survival is asserted
# here: trio-websocket cuts a stalled handshake only after 60 s, a test tool's default, not a daemon's bound.
WAIT_S = 0.5


def fake_listeners(urls: FakeExchangeUrls) -> list[Listener]:
    ws, rest = urlsplit(urls.ws_url), urlsplit(urls.rest_url)

    def get(port: int | None, target: str, extra: str = "") -> bytes:
        return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode()

    upgrade = get(
        ws.port,
        "/ws/btcusdt@kline_1m",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n",
    )
    klines = get(rest.port, "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1000")
    return [
        Listener("fakex_ws", port=ws.port or 0, request=upgrade, partial=upgrade[:40]),
        Listener("fakex_rest", port=rest.port or 0, request=klines, partial=klines[:30]),
    ]


async def still_serves(urls: FakeExchangeUrls) -> None:
    async with httpx.AsyncClient(base_url=urls.rest_url) as http:
        r = await http.get("/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1m", "limit": 5})
        assert r.status_code == 200
        assert len(r.json()) == 5
    with trio.fail_after(10):
        async with open_websocket_url(urls.ws_url + "/ws/btcusdt@kline_1m") as ws:
            assert orjson.loads(await ws.get_message())["e"] == "kline"


@pytest.mark.parametrize("which", ["fakex_ws", "fakex_rest"])
async def test_no_peer_can_end_the_fake_exchange(which: str) -> None:
    fake = FakeExchange()
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(fake.serve)
        listener = next(x for x in fake_listeners(urls) if x.name == which)
        for kind in ("garbage_then_close", "reset_mid_request", "reset_mid_answer", "half_close_after_partial"):
            await PEERS[kind](listener, WAIT_S)
            await still_serves(urls)
        await crowd(listener, WAIT_S, count=200)
        await still_serves(urls)
        nursery.cancel_scope.cancel()
