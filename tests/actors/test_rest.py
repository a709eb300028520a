"""The REST client's retries on MockClock, against a scripted transport (no socket): the backoff's delays,
Retry-After as a floor, and when it gives up."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import httpx
import pytest
import trio
import trio.testing

from actors.rest import RETRIES, BinanceRest, RestError
from protocol.backoff import no_jitter

Answer = Callable[[], httpx.Response]


def scripted(answers: list[Answer], times: list[float]) -> httpx.AsyncClient:
    """A client whose n-th request gets ``answers[n]()`` (the last one repeats), noting when each came."""

    def handle(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        return answers[min(len(times), len(answers)) - 1]()

    return httpx.AsyncClient(base_url="http://exchange.test", transport=httpx.MockTransport(handle))


def ok() -> httpx.Response:
    return httpx.Response(200, json={"serverTime": 1_700_000_000_000})


def status(code: int, retry_after: str | None = None) -> Answer:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return lambda: httpx.Response(code, json={"code": -1003, "msg": "Too many requests."}, headers=headers)


def unreachable() -> httpx.Response:
    raise httpx.ConnectError("connection refused")


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in itertools.pairwise(times)]


async def test_failures_are_retried_with_growing_delays(autojump_clock: trio.testing.MockClock) -> None:
    times: list[float] = []
    client = scripted([unreachable, status(503), status(502), unreachable, ok], times)
    rest = BinanceRest("http://exchange.test", futures=False, client=client, jitter=no_jitter)
    assert await rest.server_time_ms() == 1_700_000_000_000
    assert gaps(times) == [1.0, 2.0, 4.0, 8.0]
    await rest.aclose()


async def test_retry_after_is_a_floor(autojump_clock: trio.testing.MockClock) -> None:
    times: list[float] = []
    answers = [status(429, "5"), status(429, "1"), status(418, "120"), status(500), ok]
    rest = BinanceRest(
        "http://exchange.test", futures=False, client=scripted(answers, times), jitter=random.Random(1).random
    )
    await rest.server_time_ms()
    waited = gaps(times)
    assert waited[0] >= 5.0, "never sooner than the server asked, whatever the draw"
    assert 1.0 <= waited[1] <= 2.0
    assert waited[2] >= 120.0, "an IP ban is waited out, past the cap"
    assert 0.1 <= waited[3] <= 8.0
    await rest.aclose()


async def test_an_unreadable_retry_after_falls_back_to_the_backoff(autojump_clock: trio.testing.MockClock) -> None:
    times: list[float] = []
    client = scripted([status(429, "Wed, 21 Oct 2015 07:28:00 GMT"), ok], times)
    rest = BinanceRest("http://exchange.test", futures=False, client=client, jitter=no_jitter)
    await rest.server_time_ms()
    assert gaps(times) == [1.0]
    await rest.aclose()


async def test_retries_end_with_an_error(autojump_clock: trio.testing.MockClock) -> None:
    times: list[float] = []
    rest = BinanceRest("http://exchange.test", futures=False, client=scripted([status(503)], times), jitter=no_jitter)
    with pytest.raises(RestError, match="HTTP 503"):
        await rest.server_time_ms()
    assert gaps(times) == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert len(times) == RETRIES + 1
    times.clear()
    rest = BinanceRest("http://exchange.test", futures=False, client=scripted([unreachable], times), jitter=no_jitter)
    with pytest.raises(RestError, match="ConnectError"):
        await rest.server_time_ms()
    assert len(times) == RETRIES + 1
    await rest.aclose()


async def test_a_refusal_is_not_retried(autojump_clock: trio.testing.MockClock) -> None:
    times: list[float] = []
    rest = BinanceRest("http://exchange.test", futures=False, client=scripted([status(400)], times))
    with pytest.raises(RestError, match="HTTP 400"):
        await rest.server_time_ms()
    assert len(times) == 1
    await rest.aclose()


def listing(symbol: str, base: str, quote: str = "USDT", **fields: str) -> dict[str, str]:
    return {"symbol": symbol, "baseAsset": base, "quoteAsset": quote, "status": "TRADING"} | fields


async def test_trading_symbols_in_one_quote_that_a_series_id_can_name() -> None:
    info = {
        "symbols": [
            listing("BTCUSDT", "BTC", contractType="PERPETUAL"),
            listing("ETHBTC", "ETH", "BTC", contractType="PERPETUAL"),
            listing("1000SHIBUSDT", "1000SHIB", contractType="PERPETUAL"),
            listing("BTCUSDT_240628", "BTC", contractType="CURRENT_QUARTER"),
            listing("LUNAUSDT", "LUNA", status="BREAK", contractType="PERPETUAL"),
            listing("币安人生USDT", "币安人生", contractType="PERPETUAL"),
            listing("lowerUSDT", "lower", contractType="PERPETUAL"),
        ]
    }
    answer: list[Answer] = [lambda: httpx.Response(200, json=info)]
    spot = BinanceRest("http://exchange.test", futures=False, client=scripted(answer, []))
    assert await spot.trading_symbols("USDT") == {
        "BTCUSDT": "BTC/USDT",
        "1000SHIBUSDT": "1000SHIB/USDT",
        "BTCUSDT_240628": "BTC/USDT",
    }
    futures = BinanceRest("http://exchange.test", futures=True, client=scripted(answer, []))
    assert await futures.trading_symbols("USDT") == {"BTCUSDT": "BTC/USDT", "1000SHIBUSDT": "1000SHIB/USDT"}
    assert await futures.trading_symbols("BTC") == {"ETHBTC": "ETH/BTC"}
    odd: list[Answer] = [lambda: httpx.Response(200, json={"code": -1000})]
    broken = BinanceRest("http://exchange.test", futures=False, client=scripted(odd, []))
    with pytest.raises(RestError, match="exchangeInfo"):
        await broken.trading_symbols("USDT")
