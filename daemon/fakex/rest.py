"""The fake exchange's REST API (spot ``/api/v3``, USD-M futures ``/fapi/v1``) in Binance's formats.

klines (the last row may be the still-forming period, as Binance's), time, exchangeInfo, 24h tickers,
ping; Binance error bodies; faults on demand (429 / 418 / 5xx for the next N requests, a repeating page).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import attrs
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.fakex.market import Market, Symbol
from protocol.binance import format_decimal
from protocol.candle import Candle
from protocol.timeframes import TIMEFRAMES, Timeframe

MAX_LIMIT: Final = {"spot": 1000, "futures": 1500}
DEFAULT_LIMIT: Final = 500


@attrs.define
class RestFaults:
    status: int = 0  # answer the next ``count`` requests with this status (429, 418, 500, 503)
    count: int = 0
    path_prefix: str = ""  # only requests whose path starts with this
    repeat_pages: bool = False  # klines ignores startTime: a hostile exchange that repeats itself
    unavailable_until_ms: int = 0  # every request before this exchange time answers 503: a REST outage


@attrs.define
class RestStats:
    klines_requests: int = 0  # pagination tests count the pages a client asked for


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error(status: int, code: int, msg: str) -> JSON:
    return JSON({"code": code, "msg": msg}, status_code=status)


def kline_row(symbol: Symbol, tf: Timeframe, candle: Candle) -> list[object]:
    open_ms = candle.candle_time * 1000
    return [
        open_ms,
        format_decimal(candle.open),
        format_decimal(candle.high),
        format_decimal(candle.low),
        format_decimal(candle.close),
        format_decimal(candle.volume),
        tf.next_open(candle.candle_time) * 1000 - 1,
        format_decimal(candle.volume * candle.close),
        0 if candle.volume == 0 else 10 + int(candle.volume),
        format_decimal(candle.volume / 2),
        format_decimal(candle.volume * candle.close / 2),
        "0",
    ]


def build_rest_app(
    market: Market, now_ms: Callable[[], int], faults: RestFaults, stats: RestStats | None = None
) -> Starlette:
    stats = stats or RestStats()

    def market_of(request: Request) -> str:
        return "futures" if request.url.path.startswith("/fapi/") else "spot"

    def fault(request: Request) -> JSON | None:
        if now_ms() < faults.unavailable_until_ms:
            return _error(503, -1001, "Service unavailable.")
        if faults.count and request.url.path.startswith(faults.path_prefix):
            faults.count -= 1
            if faults.status == 429:
                return JSON(
                    {"code": -1003, "msg": "Too many requests; current limit is 6000 request weight per 1 MINUTE."},
                    status_code=429,
                    headers={"Retry-After": "1"},
                )
            if faults.status == 418:
                return JSON(
                    {"code": -1003, "msg": "Way too many requests; IP banned until 1700000000000."},
                    status_code=418,
                    headers={"Retry-After": "2"},
                )
            return _error(faults.status, -1001, "Internal error; unable to process your request. Please try again.")
        return None

    async def klines(request: Request) -> Response:
        stats.klines_requests += 1
        if (bad := fault(request)) is not None:
            return bad
        kind = market_of(request)
        q = request.query_params
        symbol = market.symbols(kind).get(q.get("symbol", ""))
        if symbol is None:
            return _error(400, -1121, "Invalid symbol.")
        tf = TIMEFRAMES.get(q.get("interval", ""))
        if tf is None:
            return _error(400, -1120, "Invalid interval.")
        try:
            limit = int(q.get("limit", DEFAULT_LIMIT))
            start = int(q["startTime"]) // 1000 if "startTime" in q else None
            end = int(q["endTime"]) // 1000 if "endTime" in q else None
        except ValueError:
            return _error(400, -1100, "Illegal characters found in a parameter.")
        if not 1 <= limit <= MAX_LIMIT[kind]:
            return _error(400, -1130, f"Invalid data sent for a parameter: limit must be 1..{MAX_LIMIT[kind]}.")
        now_s = now_ms() // 1000
        current = tf.floor(now_s)
        last = current if end is None else min(current, tf.floor(end))
        first_allowed = (
            tf.floor(symbol.listed_at)
            if tf.floor(symbol.listed_at) == symbol.listed_at
            else tf.next_open(symbol.listed_at)
        )
        if start is None or faults.repeat_pages:
            first = last
            for _ in range(limit - 1):
                if first <= first_allowed:
                    break
                first = tf.prev_open(first)
        else:
            first = max(tf.floor(start) if tf.floor(start) == start else tf.next_open(start), first_allowed)
        rows: list[list[object]] = []
        t = first
        while t <= last and len(rows) < limit:
            candle = symbol.forming(tf, now_ms()) if t == current else symbol.candle(tf, t)
            rows.append(kline_row(symbol, tf, candle))
            t = tf.next_open(t)
        return JSON(rows, headers={"X-MBX-USED-WEIGHT-1M": "2"})

    async def server_time(request: Request) -> Response:
        if (bad := fault(request)) is not None:
            return bad
        return JSON({"serverTime": now_ms()})

    async def ping(request: Request) -> Response:
        return JSON({})

    async def exchange_info(request: Request) -> Response:
        if (bad := fault(request)) is not None:
            return bad
        kind = market_of(request)
        symbols = [_symbol_info(s, kind) for s in market.symbols(kind).values()]
        return JSON(
            {"timezone": "UTC", "serverTime": now_ms(), "rateLimits": [], "exchangeFilters": [], "symbols": symbols}
        )

    async def ticker_24hr(request: Request) -> Response:
        if (bad := fault(request)) is not None:
            return bad
        kind = market_of(request)
        now = now_ms()
        return JSON([_ticker(s, now) for s in market.symbols(kind).values()])

    routes = []
    for prefix in ("/api/v3", "/fapi/v1"):
        routes += [
            Route(f"{prefix}/klines", klines),
            Route(f"{prefix}/time", server_time),
            Route(f"{prefix}/ping", ping),
            Route(f"{prefix}/exchangeInfo", exchange_info),
            Route(f"{prefix}/ticker/24hr", ticker_24hr),
        ]
    return Starlette(routes=routes)


def _symbol_info(s: Symbol, kind: str) -> dict[str, object]:
    tick = format_decimal(10.0**-s.decimals)
    info: dict[str, object] = {
        "symbol": s.symbol_id,
        "status": "TRADING",
        "baseAsset": s.base,
        "quoteAsset": s.quote,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000.00000000", "tickSize": tick},
            {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000", "stepSize": "0.00001000"},
            {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True},
        ],
        "permissions": ["SPOT"],
        "permissionSets": [["SPOT"]],
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "orderTypes": ["LIMIT", "MARKET"],
    }
    if kind == "futures":
        info.update(
            {
                "pair": s.symbol_id,
                "contractType": "PERPETUAL",
                "marginAsset": s.quote,
                "pricePrecision": s.decimals,
                "quantityPrecision": 3,
                "onboardDate": s.listed_at * 1000,
            }
        )
    return info


def _ticker(s: Symbol, now_ms: int) -> dict[str, object]:
    minute = now_ms // 60_000 * 60
    last = s.close_of(minute - 60)
    day_ago = s.close_of(minute - 86400)
    volume = sum(s.candle_1m(minute - 60 * i).volume for i in range(1, 25)) * 60  # a cheap 24 h estimate
    return {
        "symbol": s.symbol_id,
        "lastPrice": format_decimal(last),
        "priceChangePercent": f"{(last - day_ago) / day_ago * 100:.3f}",
        "volume": format_decimal(volume),
        "quoteVolume": format_decimal(volume * last),
        "openTime": now_ms - 86_400_000,
        "closeTime": now_ms,
    }
