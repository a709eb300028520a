"""The fake exchange's REST API through klined's REST client, over real loopback sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import trio

from actors.rest import BinanceRest, RestError
from daemon.fakex.server import FakeExchange, FakeExchangeUrls
from protocol.series import SeriesId
from protocol.timeframes import TIMEFRAMES

BTC = SeriesId.parse("binance:spot:BTC/USDT:1m")
ETH_F = SeriesId.parse("binance:futures:ETH/USDT:1h")


@asynccontextmanager
async def fake_exchange() -> AsyncIterator[tuple[FakeExchange, FakeExchangeUrls]]:
    fake = FakeExchange()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(fake.serve)
            yield fake, urls
            nursery.cancel_scope.cancel()


async def test_klines_rows_are_binance_shaped_with_a_forming_last_row() -> None:
    async with fake_exchange() as (fake, urls), httpx.AsyncClient(base_url=urls.rest_url) as client:
        r = await client.get("/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1m", "limit": 3})
        rows = r.json()
        assert r.status_code == 200
        assert len(rows) == 3
        assert all(len(row) == 12 for row in rows)
        now = fake.now_ms() // 1000
        assert rows[-1][0] // 1000 == TIMEFRAMES["1m"].floor(now)  # the forming period, as Binance
        assert rows[0][6] == rows[0][0] + 59_999
        assert r.headers["X-MBX-USED-WEIGHT-1M"] == "2"
        bad = await client.get("/api/v3/klines", params={"symbol": "NOPE", "interval": "1m"})
        assert (bad.status_code, bad.json()) == (400, {"code": -1121, "msg": "Invalid symbol."})
        bad = await client.get("/fapi/v1/klines", params={"symbol": "BTCUSDT", "interval": "7m"})
        assert bad.json()["code"] == -1120
        bad = await client.get("/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1m", "limit": 1001})
        assert bad.json()["code"] == -1130
        info = (await client.get("/fapi/v1/exchangeInfo")).json()
        assert {s["contractType"] for s in info["symbols"]} == {"PERPETUAL"}
        tickers = (await client.get("/api/v3/ticker/24hr")).json()
        assert {t["symbol"] for t in tickers} == {"BTCUSDT", "ETHUSDT"}


async def test_closed_klines_paginate_past_1000_and_equal_the_market() -> None:
    async with fake_exchange() as (fake, urls):
        rest = BinanceRest(urls.rest_url, futures=False)
        now = fake.now_ms() // 1000
        last = TIMEFRAMES["1m"].last_closed_open(now)
        first = last - 60 * 2499
        candles = await rest.closed_klines(BTC, first, last)
        assert [c.candle_time for c in candles] == list(range(first, last + 1, 60))
        sym = fake.market.spot["BTCUSDT"]
        assert candles[0] == sym.candle_1m(first)
        assert candles[-1] == sym.candle_1m(last)
        futures = BinanceRest(urls.rest_url, futures=True)
        hours = await futures.closed_klines(ETH_F, last // 3600 * 3600 - 3600 * 5, last // 3600 * 3600 - 3600)
        assert len(hours) == 5
        assert abs(await rest.server_time_ms() - fake.now_ms()) < 5000
        await rest.aclose()
        await futures.aclose()


async def test_rate_limit_answers_are_retried() -> None:
    async with fake_exchange() as (fake, urls):
        fake.rest_faults.status, fake.rest_faults.count = 429, 1
        rest = BinanceRest(urls.rest_url, futures=False)
        assert await rest.server_time_ms() > 0
        assert fake.rest_faults.count == 0
        fake.rest_faults.status, fake.rest_faults.count = 418, 1  # an IP ban notice is waited out too
        assert await rest.server_time_ms() > 0
        await rest.aclose()


async def test_a_repeating_exchange_cannot_loop_the_pagination() -> None:
    async with fake_exchange() as (fake, urls):
        fake.rest_faults.repeat_pages = True
        rest = BinanceRest(urls.rest_url, futures=False)
        now = fake.now_ms() // 1000
        last = TIMEFRAMES["1m"].last_closed_open(now)
        with trio.fail_after(20):
            candles = await rest.closed_klines(BTC, last - 60 * 3000, last)
        assert len(candles) <= 1000
        await rest.aclose()


async def test_unknown_symbol_is_an_error_not_a_retry() -> None:
    async with fake_exchange() as (_, urls):
        rest = BinanceRest(urls.rest_url, futures=False)
        with pytest.raises(RestError, match="HTTP 400"):
            await rest.closed_klines(SeriesId.parse("binance:spot:NOPE/USDT:1m"), 0, 600)
        await rest.aclose()


async def test_a_period_still_forming_at_the_exchange_is_never_taken_as_closed() -> None:
    """Our clock says a period is closed, the exchange's (90 s behind) does not: REST answers with it as it
    stands, and neither the REST client nor ccxt's pages may store that as closed (found by the chaos run)."""
    from daemon.fakex.server import exchange_clock
    from daemon.history.exchange import CcxtSource

    fake = FakeExchange(now_ms=exchange_clock(offset_ms=-90_000))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(fake.serve)
            rest = BinanceRest(urls.rest_url, futures=False)
            ours = TIMEFRAMES["1m"].last_closed_open(fake.now_ms() // 1000 + 90)
            forming_there = TIMEFRAMES["1m"].floor(fake.now_ms() // 1000)
            assert ours >= forming_there
            candles = await rest.closed_klines(BTC, ours - 600, ours)
            assert candles
            assert candles[-1].candle_time < forming_there  # what the exchange has not closed is left out
            sym = fake.market.spot["BTCUSDT"]
            assert candles == [sym.candle_1m(c.candle_time) for c in candles]
            source = CcxtSource(urls.rest_url, urls.rest_url)
            pages = [c async for page in source.pages(BTC, ours - 600, ours) for c in page]
            assert pages == candles
            await rest.aclose()
            nursery.cancel_scope.cancel()


async def test_a_timed_outage_answers_503_until_it_ends_then_serves_again() -> None:
    async with fake_exchange() as (fake, urls), httpx.AsyncClient(base_url=urls.rest_url) as client:
        fake.rest_faults.unavailable_until_ms = fake.now_ms() + 3_600_000
        down = await client.get("/api/v3/time")
        assert down.status_code == 503
        assert down.json()["code"] == -1001
        fake.rest_faults.unavailable_until_ms = fake.now_ms() - 1
        assert (await client.get("/api/v3/time")).status_code == 200
