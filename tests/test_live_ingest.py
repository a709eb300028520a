"""Black box: klined follows the fake exchange over real loopback sockets.

The fake's clock is shifted so that a five-minute boundary is a few seconds away; klined measures that
offset from ``/api/v3/time`` like it would Binance's, so its ticks land on the fake's minutes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

from daemon.app import Running, serve_daemon
from daemon.config import load_settings
from daemon.eventlog import EventLog
from daemon.fakex.server import FakeExchange, exchange_clock
from protocol.series import SeriesId

BTC = SeriesId.parse("binance:spot:BTC/USDT:1m")
BTC5 = SeriesId.parse("binance:spot:BTC/USDT:5m")
LEAD_MS = 4_000


def fake_before_boundary() -> tuple[FakeExchange, int]:
    """A fake exchange whose clock is LEAD_MS before a 5m boundary; returns it and that boundary (s)."""
    wall = time.time_ns() // 1_000_000
    boundary_ms = (wall // 300_000 + 1) * 300_000 + 300_000
    fake = FakeExchange(now_ms=exchange_clock(offset_ms=boundary_ms - LEAD_MS - wall))
    return fake, boundary_ms // 1000


@asynccontextmanager
async def daemon_against(fake: FakeExchange, tmp_path: Path, **env: str) -> AsyncIterator[Running]:
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(fake.serve)
        settings = load_settings(
            env={
                "KLINED_DATA_DIR": str(tmp_path),
                "KLINED_HTTP_PORT": "0",
                "KLINED_WHITELIST": str(BTC),
                "KLINED_ENABLE_WHITELIST_INGEST": "1",
                "KLINED_ENABLE_DERIVED_TIMEFRAMES": "1",
                "KLINED_ENABLE_DEBUG_API": "1",
                "KLINED_BINANCE_SPOT_WS_URL": urls.spot_ws,
                "KLINED_BINANCE_SPOT_REST_URL": urls.rest_url,
                "KLINED_BINANCE_FUTURES_WS_URL": urls.futures_ws,
                "KLINED_BINANCE_FUTURES_REST_URL": urls.rest_url,
                **env,
            }
        )
        running: Running = await nursery.start(serve_daemon, settings)
        yield running
        running.stop.set()
        nursery.cancel_scope.cancel()


def seed_bucket(tmp_path: Path, fake: FakeExchange, boundary: int) -> None:
    """The first four minutes of the 5m bucket closing at ``boundary`` are already stored."""
    sym = fake.market.spot["BTCUSDT"]
    with EventLog(tmp_path / "eventlog") as log:
        log.append({BTC: [sym.candle_1m(boundary - 300 + 60 * i) for i in range(4)]})


async def wait_for(running: Running, series: SeriesId, candle_time: int) -> None:
    while running.store.log.get(series, candle_time) is None:
        await running.store.wait_appended()


async def test_live_close_is_stored_and_derives_5m(tmp_path: Path) -> None:
    fake, boundary = fake_before_boundary()
    seed_bucket(tmp_path, fake, boundary)
    sym = fake.market.spot["BTCUSDT"]
    with trio.fail_after(45):
        async with daemon_against(fake, tmp_path) as running:
            await wait_for(running, BTC, boundary - 60)
            await wait_for(running, BTC5, boundary - 300)
            assert running.store.log.get(BTC, boundary - 60) == sym.candle_1m(boundary - 60)
            assert running.store.log.get(BTC5, boundary - 300) == sym.candle(BTC5.timeframe, boundary - 300)
            async with httpx.AsyncClient(base_url=running.http_url) as client:
                state = (await client.get("/api/market/debug/ingest_state")).json()
                (job,) = state["jobs"]
                assert (job["series_id"], job["source"], job["refcount"], job["running"]) == (
                    str(BTC),
                    "whitelist",
                    -1,
                    True,
                )
                assert state["stats"]["ingest"]["spot"]["connections"][0]["connected"] is True
                body = (await client.get("/api/market/candles", params={"series_id": str(BTC5)})).json()
                assert [c["candle_time"] for c in body["candles"]] == [boundary - 300]


async def test_silent_stream_is_filled_over_rest_after_the_tick(tmp_path: Path) -> None:
    fake, boundary = fake_before_boundary()
    fake.streams.faults.silent_until_ms = (boundary + 60) * 1000  # no final kline for this minute
    sym = fake.market.spot["BTCUSDT"]
    with trio.fail_after(45):
        async with daemon_against(fake, tmp_path) as running:
            await wait_for(running, BTC, boundary - 60)
            assert running.store.log.get(BTC, boundary - 60) == sym.candle_1m(boundary - 60)
            assert running.live is not None
            actor = running.live.actors[BTC]
            assert actor.state.fills_appended >= 1
