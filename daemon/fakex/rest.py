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
    api = _RestApi(market, now_ms, faults, stats or RestStats())
    routes = []
    for prefix in ("/api/v3", "/fapi/v1"):
        routes += [
            Route(f"{prefix}/klines", api.klines),
            Route(f"{prefix}/time", api.server_time),
            Route(f"{prefix}/ping", api.ping),
            Route(f"{prefix}/exchangeInfo", api.exchange_info),
            Route(f"{prefix}/ticker/24hr", api.ticker_24hr),
        ]
    return Starlette(routes=routes)


def _market_of(request: Request) -> str:
    return "futures" if request.url.path.startswith("/fapi/") else "spot"


@attrs.frozen
class _RestApi:
    """The endpoints, over one market and one exchange clock; ``faults`` is read and spent per request."""

    market: Market
    now_ms: Callable[[], int]
    faults: RestFaults
    stats: RestStats

    def fault(self, request: Request) -> JSON | None:
        """The injected failure this request gets, if any."""
        faults = self.faults
        if self.now_ms() < faults.unavailable_until_ms:
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

    async def klines(self, request: Request) -> Response:
        self.stats.klines_requests += 1
        if (bad := self.fault(request)) is not None:
            return bad
        kind = _market_of(request)
        q = request.query_params
        symbol = self.market.symbols(kind).get(q.get("symbol", ""))
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
        if self.faults.repeat_pages:
            start = None  # every page is the latest one, whatever the client asked for
        current = tf.floor(self.now_ms() // 1000)
        rows: list[list[object]] = []
        for t in _kline_opens(symbol, tf, start, end, limit, current):
            candle = symbol.forming(tf, self.now_ms()) if t == current else symbol.candle(tf, t)
            rows.append(kline_row(symbol, tf, candle))
        return JSON(rows, headers={"X-MBX-USED-WEIGHT-1M": "2"})

    async def server_time(self, request: Request) -> Response:
        if (bad := self.fault(request)) is not None:
            return bad
        return JSON({"serverTime": self.now_ms()})

    async def ping(self, request: Request) -> Response:
        return JSON({})

    async def exchange_info(self, request: Request) -> Response:
        if (bad := self.fault(request)) is not None:
            return bad
        kind = _market_of(request)
        symbols = [_symbol_info(s, kind) for s in self.market.symbols(kind).values()]
        return JSON(
            {
                "timezone": "UTC",
                "serverTime": self.now_ms(),
                "rateLimits": [],
                "exchangeFilters": [],
                "symbols": symbols,
            }
        )

    async def ticker_24hr(self, request: Request) -> Response:
        if (bad := self.fault(request)) is not None:
            return bad
        kind = _market_of(request)
        now = self.now_ms()
        return JSON([_ticker(s, now) for s in self.market.symbols(kind).values()])


def _kline_opens(
    symbol: Symbol, tf: Timeframe, start: int | None, end: int | None, limit: int, current: int
) -> list[int]:
    """The open times a klines request answers, as Binance picks them: from ``start`` (rounded up to an open,
    not before the listing) or, without one, the ``limit`` latest; never past ``end`` or the forming period."""
    last = current if end is None else min(current, tf.floor(end))
    first_allowed = (
        tf.floor(symbol.listed_at) if tf.floor(symbol.listed_at) == symbol.listed_at else tf.next_open(symbol.listed_at)
    )
    if start is None:
        first = last
        for _ in range(limit - 1):
            if first <= first_allowed:
                break
            first = tf.prev_open(first)
    else:
        first = max(tf.floor(start) if tf.floor(start) == start else tf.next_open(start), first_allowed)
    opens: list[int] = []
    t = first
    while t <= last and len(opens) < limit:
        opens.append(t)
        t = tf.next_open(t)
    return opens


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
