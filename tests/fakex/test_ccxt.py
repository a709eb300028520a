"""Real ccxt (``ccxt.binance``, its URLs pointed at the fake) loads markets and pages through klines."""

from __future__ import annotations

from urllib.parse import urlsplit

import ccxt
import trio

from daemon.fakex.server import FakeExchange
from protocol.timeframes import TIMEFRAMES


def binance_at(base_url: str) -> ccxt.binance:
    exchange = ccxt.binance({"enableRateLimit": False, "options": {"fetchMarkets": {"types": ["spot", "linear"]}}})
    api = exchange.urls["api"]
    for name, url in list(api.items()):
        if isinstance(url, str):  # keep each API's path (/api/v3, /fapi/v1 ...), swap the host
            api[name] = base_url + urlsplit(url).path
    return exchange


async def test_ccxt_loads_markets_and_pages_klines_from_the_fake() -> None:
    fake = FakeExchange()
    btc = fake.market.spot["BTCUSDT"]
    m1 = TIMEFRAMES["1m"]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(fake.serve)

            def use_ccxt() -> tuple[dict[str, object], list[list[float]], list[list[float]]]:
                exchange = binance_at(urls.rest_url)
                markets = exchange.load_markets()
                since_s = m1.floor(fake.now_ms() // 1000) - 60 * 2500
                rows = exchange.fetch_ohlcv(
                    "BTC/USDT", "1m", since=since_s * 1000, limit=2500, params={"paginate": True}
                )
                perp = exchange.fetch_ohlcv("ETH/USDT:USDT", "5m", limit=3)
                return markets, rows, perp

            markets, rows, perp = await trio.to_thread.run_sync(use_ccxt)
            nursery.cancel_scope.cancel()
    assert {"BTC/USDT", "ETH/USDT", "BTC/USDT:USDT", "ETH/USDT:USDT"} <= set(markets)
    assert len(rows) == 2500
    first = rows[0][0] // 1000
    assert [r[0] // 1000 for r in rows] == [first + 60 * i for i in range(2500)]  # contiguous, ascending
    assert [tuple(r[1:]) for r in rows[:1000]] == [tuple(btc.candle_1m(int(r[0] // 1000)))[1:6] for r in rows[:1000]]
    assert fake.rest_stats.klines_requests >= 3 + 1  # 2500 rows at most 1000 a page, plus the futures call
    assert len(perp) == 3
    assert all(r[0] % 300_000 == 0 for r in perp)
