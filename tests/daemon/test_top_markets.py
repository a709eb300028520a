"""Top markets (docs/http.md) against the fake exchange over loopback: ranking, caches, forced refresh, SSE stream.

The fake's clock is frozen, so its tickers only change when a test moves a price; the caches' clock is a
manual one the test advances, so expiry is a step, not a wait.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import orjson
import pytest
import trio

from daemon.fakex.market import Market, Symbol
from daemon.fakex.server import FakeExchange, FakeExchangeUrls
from daemon.top_markets import (
    PING,
    TICKERS_TTL_S,
    Ticker,
    TopMarkets,
    TopMarketsError,
    parse_tickers,
    rank,
)
from protocol.binance import Listing

FROZEN_MS = 1_717_000_020_000
DEADLINE_S = 20


class ManualClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_fake() -> FakeExchange:
    market = Market.default(
        spot=["BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT", "XRPUSDT"], futures=["BTCUSDT", "BNBUSDT", "SOLUSDT"]
    )
    market.spot["ETHBTC"] = Symbol("ETHBTC", "ETH", "BTC", 0.052, decimals=5)  # another quote asset
    return FakeExchange(market, now_ms=lambda: FROZEN_MS)


@asynccontextmanager
async def top_markets_against(fake: FakeExchange, clock: ManualClock) -> AsyncIterator[TopMarkets]:
    async with trio.open_nursery() as nursery:
        urls: FakeExchangeUrls = await nursery.start(fake.serve)
        top = TopMarkets(urls.rest_url, urls.rest_url, now=clock, wall_ms=lambda: 42)
        try:
            yield top
        finally:
            await top.aclose()
            nursery.cancel_scope.cancel()


def symbol_ids(answer: dict[str, Any]) -> list[str]:
    return [item["symbol_id"] for item in answer["items"]]


def parse_event(chunk: str) -> tuple[str, dict[str, Any]]:
    head, data, empty = chunk.split("\n", 2)
    assert head.startswith("event: ")
    assert data.startswith("data: ")
    assert empty == "\n"
    return head.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))


async def test_spot_items_sorted_by_quote_volume() -> None:
    fake, clock = make_fake(), ManualClock()
    with trio.fail_after(DEADLINE_S):
        async with top_markets_against(fake, clock) as top:
            answer = await top.get("binance", "spot", "usdt", limit=20, force=False)
    assert {k: v for k, v in answer.items() if k != "items"} == {
        "exchange": "binance",
        "market": "spot",
        "quote_asset": "USDT",
        "limit": 20,
        "generated_at_ms": 42,
        "cached": False,
        "stale": False,
    }
    assert sorted(symbol_ids(answer)) == ["BTCUSDT", "DOGEUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]  # no ETHBTC
    volumes = [item["quote_volume"] for item in answer["items"]]
    assert volumes == sorted(volumes, reverse=True)
    btc = next(item for item in answer["items"] if item["symbol_id"] == "BTCUSDT")
    assert btc["symbol"] == "BTC/USDT"
    assert (btc["exchange"], btc["market"], btc["base_asset"], btc["quote_asset"]) == ("binance", "spot", "BTC", "USDT")
    for key in ("last_price", "quote_volume", "price_change_percent"):
        assert type(btc[key]) is float
    assert 50_000 < btc["last_price"] < 80_000


async def test_futures_items_come_from_fapi_and_limit_cuts() -> None:
    fake, clock = make_fake(), ManualClock()
    with trio.fail_after(DEADLINE_S):
        async with top_markets_against(fake, clock) as top:
            everything = await top.get("binance", "futures", "USDT", limit=20, force=False)
            top2 = await top.get("binance", "futures", "USDT", limit=2, force=False)
            btc_quoted = await top.get("binance", "spot", "BTC", limit=20, force=False)
    assert sorted(symbol_ids(everything)) == ["BNBUSDT", "BTCUSDT", "SOLUSDT"]
    assert {item["market"] for item in everything["items"]} == {"futures"}
    volumes = [item["quote_volume"] for item in everything["items"]]
    assert volumes == sorted(volumes, reverse=True)
    assert top2["items"] == everything["items"][:2]
    assert symbol_ids(btc_quoted) == ["ETHBTC"]


async def test_second_call_is_cached_until_the_tickers_expire() -> None:
    fake, clock = make_fake(), ManualClock()
    with trio.fail_after(DEADLINE_S):
        async with top_markets_against(fake, clock) as top:
            first = await top.get("binance", "spot", "USDT", limit=20, force=False)
            assert top.statistics().upstream_requests == 2  # exchangeInfo + tickers

            # A fault armed for the next request stays armed: the cached answer never reached the exchange.
            fake.rest_faults.status, fake.rest_faults.count = 503, 1
            second = await top.get("binance", "spot", "USDT", limit=5, force=False)
            assert second["cached"] is True
            assert second["items"] == first["items"][:5]
            assert fake.rest_faults.count == 1
            assert top.statistics().upstream_requests == 2
            fake.rest_faults.count = 0

            clock.t += TICKERS_TTL_S  # tickers expire; exchangeInfo (1 h) does not
            third = await top.get("binance", "spot", "USDT", limit=20, force=False)
            assert third["cached"] is False
            assert top.statistics().upstream_requests == 3

            clock.t += 3600
            await top.get("binance", "spot", "USDT", limit=20, force=False)
            assert top.statistics().upstream_requests == 5

            # Each market has its own cache.
            futures = await top.get("binance", "futures", "USDT", limit=20, force=False)
            assert futures["cached"] is False
            assert top.statistics().upstream_requests == 7


async def test_force_bypasses_the_cache_once_per_10s_per_market() -> None:
    fake, clock = make_fake(), ManualClock()
    with trio.fail_after(DEADLINE_S):
        async with top_markets_against(fake, clock) as top:
            await top.get("binance", "spot", "USDT", limit=20, force=False)
            forced = await top.get("binance", "spot", "USDT", limit=20, force=True)
            assert forced["cached"] is False
            assert top.statistics().upstream_requests == 4  # both caches bypassed

            clock.t += 9.5
            with pytest.raises(TopMarketsError) as caught:
                await top.get("binance", "spot", "USDT", limit=20, force=True)
            assert (caught.value.status, caught.value.code) == (429, "rate_limited")
            assert caught.value.retry_after_s == pytest.approx(0.5)
            assert top.statistics().upstream_requests == 4

            # Unforced reads and the other market are not held back.
            assert (await top.get("binance", "spot", "USDT", limit=20, force=False))["cached"] is True
            assert (await top.get("binance", "futures", "USDT", limit=20, force=True))["cached"] is False

            clock.t += 0.5
            assert (await top.get("binance", "spot", "USDT", limit=20, force=True))["cached"] is False
            assert top.statistics().rate_limited == 1


async def test_upstream_failure_with_nothing_cached_is_502() -> None:
    fake, clock = make_fake(), ManualClock()
    with trio.fail_after(DEADLINE_S):
        async with top_markets_against(fake, clock) as top:
            fake.rest_faults.status, fake.rest_faults.count = 503, 1
            with pytest.raises(TopMarketsError) as caught:
                await top.get("binance", "spot", "USDT", limit=20, force=False)
            assert (caught.value.status, caught.value.code) == (502, "upstream_error")
            assert "503" in caught.value.detail

            answer = await top.get("binance", "spot", "USDT", limit=20, force=False)  # the next call recovers
            assert (answer["cached"], answer["stale"]) == (False, False)
            assert "stale_age_s" not in answer
            assert len(answer["items"]) == 5

            # exchangeInfo cached, the tickers never fetched: nothing to answer with, so still a 502.
            fake.rest_faults.status, fake.rest_faults.count, fake.rest_faults.path_prefix = 500, 1, "/fapi/v1/ticker"
            with pytest.raises(TopMarketsError) as caught:
                await top.get("binance", "futures", "USDT", limit=20, force=False)
            assert caught.value.status == 502
            assert top.statistics().upstream_errors == 2


async def test_a_failing_exchange_answers_the_cached_list_as_stale_with_its_age() -> None:
    fake, clock = make_fake(), ManualClock()
    with trio.fail_after(DEADLINE_S):
        async with top_markets_against(fake, clock) as top:
            fresh = await top.get("binance", "spot", "USDT", limit=3, force=False)
            clock.t += TICKERS_TTL_S + 5
            fake.rest_faults.status, fake.rest_faults.count = 503, 100
            stale = await top.get("binance", "spot", "USDT", limit=3, force=False)
            assert {k: stale[k] for k in ("cached", "stale", "stale_age_s", "generated_at_ms")} == {
                "cached": True,
                "stale": True,
                "stale_age_s": 15.0,
                "generated_at_ms": 42,
            }
            assert stale["items"] == fresh["items"]
            assert top.statistics().upstream_requests == 3  # the tickers were asked for, and failed

            # Within a TTL of the failure the cached list is answered without asking again.
            clock.t += 1
            again = await top.get("binance", "spot", "USDT", limit=5, force=False)
            assert (again["stale"], again["stale_age_s"], len(again["items"])) == (True, 16.0, 5)
            assert top.statistics().upstream_requests == 3

            # A TTL later it asks again; a forced refresh always asks; both fall back to the cache.
            clock.t += TICKERS_TTL_S
            assert (await top.get("binance", "spot", "USDT", limit=3, force=False))["stale_age_s"] == 26.0
            assert (await top.get("binance", "spot", "USDT", limit=3, force=True))["stale"] is True
            assert top.statistics().upstream_requests == 5  # the tickers once, then exchangeInfo (forced)
            assert top.statistics().stale_answers == 4

            # The exchange is back: the next refresh (a TTL after the last failure) is fresh again.
            fake.rest_faults.count = 0
            fake.market.spot["DOGEUSDT"].base_price *= 1e7
            clock.t += TICKERS_TTL_S
            recovered = await top.get("binance", "spot", "USDT", limit=3, force=False)
            assert (recovered["cached"], recovered["stale"]) == (False, False)
            assert "stale_age_s" not in recovered
            assert recovered["items"][0]["symbol_id"] == "DOGEUSDT"


async def test_unreachable_exchange_is_502() -> None:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: the connection is refused
    top = TopMarkets(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}")
    with trio.fail_after(DEADLINE_S):
        try:
            with pytest.raises(TopMarketsError) as caught:
                await top.get("binance", "futures", "USDT", limit=20, force=False)
        finally:
            await top.aclose()
    assert (caught.value.status, caught.value.code) == (502, "upstream_error")
    assert "ConnectError" in caught.value.detail


@pytest.mark.parametrize(
    ("exchange", "market", "limit"), [("okx", "spot", 20), ("binance", "options", 20), ("binance", "spot", 0)]
)
async def test_bad_parameters_are_422(exchange: str, market: str, limit: int) -> None:
    top = TopMarkets("http://127.0.0.1:9", "http://127.0.0.1:9")
    try:
        with pytest.raises(TopMarketsError) as caught:
            await top.get(exchange, market, "USDT", limit=limit, force=False)
        assert (caught.value.status, caught.value.code) == (422, "bad_request")
        with pytest.raises(TopMarketsError):
            await anext(aiter(top.stream(exchange, market, "USDT", limit=limit)))
        with pytest.raises(TopMarketsError):
            await anext(aiter(top.stream("binance", "spot", "USDT", limit=20, interval_s=0.1)))
    finally:
        await top.aclose()


async def test_stream_sends_changes_pings_and_stops_after_max_events() -> None:
    fake, clock = make_fake(), ManualClock()
    with trio.fail_after(DEADLINE_S):
        async with (
            top_markets_against(fake, clock) as top,
            aclosing(top.stream("binance", "spot", "USDT", limit=3, interval_s=0.2, max_events=2)) as chunks,
        ):
            event, first = parse_event(await anext(chunks))  # the first snapshot always goes out
            assert event == "top_markets"
            assert len(first["items"]) == 3
            assert first == await top.get("binance", "spot", "USDT", limit=3, force=False) | {"cached": False}

            assert await anext(chunks) == PING  # unchanged (still cached)
            clock.t += TICKERS_TTL_S
            assert await anext(chunks) == PING  # refetched, but the same items

            fake.market.spot["DOGEUSDT"].base_price *= 1e7  # DOGE's quote volume jumps to the top
            clock.t += TICKERS_TTL_S
            event, second = parse_event(await anext(chunks))
            assert event == "top_markets"
            assert second["items"][0]["symbol_id"] == "DOGEUSDT"
            assert [c async for c in chunks] == []  # max_events reached: the stream ends


async def test_stream_reports_upstream_errors_and_keeps_going() -> None:
    fake, clock = make_fake(), ManualClock()
    with trio.fail_after(DEADLINE_S):
        async with (
            top_markets_against(fake, clock) as top,
            aclosing(top.stream("binance", "futures", "USDT", limit=20, interval_s=0.2)) as chunks,
        ):
            event, first = parse_event(await anext(chunks))
            assert event == "top_markets"

            clock.t += TICKERS_TTL_S
            fake.rest_faults.status, fake.rest_faults.count = 503, 1
            event, error = parse_event(await anext(chunks))
            assert event == "error"
            assert error["code"] == "upstream_error"
            assert set(error) == {"code", "detail"}

            assert await anext(chunks) == PING  # recovered with the same items
            fake.market.futures["BNBUSDT"].base_price *= 2
            clock.t += TICKERS_TTL_S
            event, changed = parse_event(await anext(chunks))
            assert event == "top_markets"
            assert changed["items"] != first["items"]


def test_tickers_skip_malformed_rows_and_rank_ties_by_symbol() -> None:
    rows = [
        {"symbol": "B", "lastPrice": "2", "quoteVolume": "100", "priceChangePercent": "-1.5"},
        {"symbol": "A", "lastPrice": "1", "quoteVolume": "100", "priceChangePercent": "0"},
        {"symbol": "C", "lastPrice": "x", "quoteVolume": "1", "priceChangePercent": "0"},
        {"symbol": "D"},
        "junk",
    ]
    tickers = parse_tickers(rows)
    assert tickers == {"A": Ticker("A", 1.0, 100.0, 0.0), "B": Ticker("B", 2.0, 100.0, -1.5)}
    listings = {s: Listing(s, s, "USDT") for s in "AB"}
    assert [i["symbol_id"] for i in rank("binance", "spot", listings, tickers, "USDT", 10)] == ["A", "B"]
    assert rank("binance", "spot", listings, tickers, "BTC", 10) == []
