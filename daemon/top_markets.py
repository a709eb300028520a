"""Top markets by 24 h quote volume (``/api/market/top_markets`` and its SSE stream, docs/http.md), from Binance REST.

exchangeInfo (which symbols trade, their assets) is cached an hour and the 24 h tickers ten seconds, per
market, so any number of clients and streams cost the exchange one ticker call per market every 10 s. A
forced refresh bypasses both caches but is allowed once per 10 s per market. When the exchange fails and a
list is cached, that list is answered with ``stale: true`` and its age (``stale_age_s``) rather than a 502, and
the exchange is asked again no sooner than the tickers' TTL later. exchangeInfo is parsed by
``protocol.binance``; the tickers' parsing and the ranking are pure functions here; ``TopMarkets`` owns the
caches and the HTTP client.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, Final

import attrs
import httpx
import orjson
import structlog
import trio

from actors.clock import WallClock, system_wall_ms
from protocol.binance import Listing, parse_exchange_info
from protocol.errors import ExchangeInfoError

log = structlog.get_logger(__name__)

EXCHANGES: Final = frozenset({"binance"})
MARKETS: Final = frozenset({"spot", "futures"})
MAX_LIMIT: Final = 1000
EXCHANGE_INFO_TTL_S: Final = 3600.0
TICKERS_TTL_S: Final = 10.0
FORCE_INTERVAL_S: Final = 10.0
MIN_INTERVAL_S: Final = 0.2
MAX_INTERVAL_S: Final = 30.0
REQUEST_TIMEOUT_S: Final = 10.0
PATHS: Final = {
    "spot": ("/api/v3/exchangeInfo", "/api/v3/ticker/24hr"),
    "futures": ("/fapi/v1/exchangeInfo", "/fapi/v1/ticker/24hr"),
}
PING: Final = ": ping\n\n"


class TopMarketsError(Exception):
    """An error the HTTP layer turns into ``{"code", "detail"}`` with ``status`` (422, 429 or 502)."""

    def __init__(self, status: int, code: str, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.retry_after_s = retry_after_s  # for a Retry-After header on 429


@attrs.frozen
class Ticker:
    symbol_id: str
    last_price: float
    quote_volume: float
    price_change_percent: float


@attrs.frozen
class TopMarketsStatistics:
    upstream_requests: int
    upstream_errors: int
    cache_hits: int
    forced_refreshes: int
    rate_limited: int
    stale_answers: int


# -- pure core ---------------------------------------------------------------------------------------------


def parse_tickers(rows: object) -> dict[str, Ticker]:
    """24 h tickers by symbol id; a malformed row is skipped (one odd symbol must not hide the rest)."""
    if not isinstance(rows, list):
        raise TypeError("ticker/24hr answer is not a list")
    out: dict[str, Ticker] = {}
    for row in rows:
        try:
            ticker = Ticker(
                str(row["symbol"]),
                float(row["lastPrice"]),
                float(row["quoteVolume"]),
                float(row["priceChangePercent"]),
            )
        except (KeyError, TypeError, ValueError):
            continue
        out[ticker.symbol_id] = ticker
    return out


def rank(
    exchange: str,
    market: str,
    listings: Mapping[str, Listing],
    tickers: Mapping[str, Ticker],
    quote_asset: str,
    limit: int,
) -> list[dict[str, Any]]:
    """The ``limit`` listed symbols quoted in ``quote_asset`` with the largest quote volume, as wire items."""
    rows = [
        (listing, ticker)
        for symbol_id, ticker in tickers.items()
        if (listing := listings.get(symbol_id)) is not None and listing.quote_asset == quote_asset
    ]
    rows.sort(key=lambda r: (-r[1].quote_volume, r[0].symbol_id))  # ties by id: a stable order for the stream
    return [
        {
            "exchange": exchange,
            "market": market,
            "symbol": listing.symbol,
            "symbol_id": listing.symbol_id,
            "base_asset": listing.base_asset,
            "quote_asset": listing.quote_asset,
            "last_price": ticker.last_price,
            "quote_volume": ticker.quote_volume,
            "price_change_percent": ticker.price_change_percent,
        }
        for listing, ticker in rows[:limit]
    ]


def sse_event(event: str, payload: object) -> str:
    """One Server-Sent Events frame; the JSON is a single line, so one ``data:`` field carries it."""
    return f"event: {event}\ndata: {orjson.dumps(payload).decode()}\n\n"


def check_params(exchange: str, market: str, limit: int) -> None:
    if exchange not in EXCHANGES:
        raise TopMarketsError(422, "bad_request", f"invalid exchange: expected binance, got {exchange!r}")
    if market not in MARKETS:
        raise TopMarketsError(422, "bad_request", f"invalid market: expected spot or futures, got {market!r}")
    if not 1 <= limit <= MAX_LIMIT:
        raise TopMarketsError(422, "bad_request", f"invalid limit: expected 1..{MAX_LIMIT}, got {limit}")


# -- the service -------------------------------------------------------------------------------------------


@attrs.define
class _MarketCache:
    lock: trio.Lock = attrs.field(factory=trio.Lock)  # one refresh at a time; waiters then read its result
    listings: dict[str, Listing] | None = None
    listings_at: float = 0.0
    tickers: dict[str, Ticker] | None = None
    tickers_at: float = 0.0
    tickers_wall_ms: int = 0
    forced_at: float | None = None
    failed_at: float | None = None  # of the last failed refresh, cleared by a good one

    def complete(self) -> bool:
        return self.listings is not None and self.tickers is not None


class TopMarkets:
    """Serves top markets of Binance spot and USD-M futures from cached REST answers."""

    def __init__(
        self,
        spot_rest_url: str,
        futures_rest_url: str,
        now: Callable[[], float] = trio.current_time,
        *,
        wall_ms: WallClock = system_wall_ms,
    ) -> None:
        self._bases = {"spot": spot_rest_url.rstrip("/"), "futures": futures_rest_url.rstrip("/")}
        self._now = now
        self._wall_ms = wall_ms
        self._client = httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S)
        self._caches = {market: _MarketCache() for market in MARKETS}
        self._requests = self._errors = self._hits = self._forced = self._rate_limited = self._stale = 0

    async def aclose(self) -> None:
        await self._client.aclose()

    def statistics(self) -> TopMarketsStatistics:
        return TopMarketsStatistics(
            self._requests, self._errors, self._hits, self._forced, self._rate_limited, self._stale
        )

    async def get(
        self, exchange: str, market: str, quote_asset: str, limit: int, force: bool, *, stale_ok: bool = True
    ) -> dict[str, Any]:
        """The answer of ``GET /api/market/top_markets``; ``cached`` says no upstream call was needed.

        An upstream failure raises (502) unless ``stale_ok`` and a list is cached: then that list, marked stale.
        """
        check_params(exchange, market, limit)
        quote_asset = quote_asset.upper()
        cache = self._caches[market]
        if force:
            self._claim_force(market, cache)
        async with cache.lock:
            stale = stale_ok and not force and self._failed_recently(cache)
            cached = True
            if not stale:
                try:
                    cached = await self._refresh(market, cache, force)
                except TopMarketsError:
                    cache.failed_at = self._now()
                    if not (stale_ok and cache.complete()):
                        raise
                    stale = True
                else:
                    cache.failed_at = None
        assert cache.listings is not None
        assert cache.tickers is not None
        answer = {
            "exchange": exchange,
            "market": market,
            "quote_asset": quote_asset,
            "limit": limit,
            "generated_at_ms": cache.tickers_wall_ms,  # when the ticker snapshot was taken, so age is visible
            "cached": cached,
            "stale": stale,
            "items": rank(exchange, market, cache.listings, cache.tickers, quote_asset, limit),
        }
        if stale:
            self._stale += 1
            answer["stale_age_s"] = round(self._now() - cache.tickers_at, 3)
        elif cached:
            self._hits += 1
        return answer

    def _failed_recently(self, cache: _MarketCache) -> bool:
        """A failing exchange is asked again once per tickers TTL; meanwhile the cached list is the answer
        (without this, each waiter on the lock would sit through its own request timeout in turn)."""
        return cache.complete() and cache.failed_at is not None and self._now() - cache.failed_at < TICKERS_TTL_S

    async def stream(
        self,
        exchange: str,
        market: str,
        quote_asset: str,
        limit: int,
        interval_s: float = 2.0,
        max_events: int | None = None,
    ) -> AsyncGenerator[str, None]:
        """SSE chunks for ``GET /api/market/top_markets/stream``: polls every ``interval_s`` (through the caches).

        A ``top_markets`` event when the items change (the first always), a ping otherwise, an ``error`` event
        when upstream fails (and polling goes on). Ends after ``max_events`` ``top_markets`` events.
        """
        check_params(exchange, market, limit)
        if not MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S:
            raise TopMarketsError(
                422, "bad_request", f"invalid interval_s: expected {MIN_INTERVAL_S}..{MAX_INTERVAL_S}, got {interval_s}"
            )
        if max_events is not None and max_events < 1:
            raise TopMarketsError(422, "bad_request", f"invalid max_events: expected >= 1, got {max_events}")
        sent = 0
        last_items: list[dict[str, Any]] | None = None
        while True:
            try:  # not stale: the stream's subscribers are told of a failure by an ``error`` event
                answer = await self.get(exchange, market, quote_asset, limit, force=False, stale_ok=False)
            except TopMarketsError as e:
                yield sse_event("error", {"code": e.code, "detail": e.detail})
            else:
                if answer["items"] != last_items:
                    last_items = answer["items"]
                    yield sse_event("top_markets", answer)
                    sent += 1
                    if max_events is not None and sent >= max_events:
                        return
                else:
                    yield PING
            await trio.sleep(interval_s)

    def _claim_force(self, market: str, cache: _MarketCache) -> None:
        """Take this market's forced-refresh slot, or refuse with 429 (attempts count, failed ones too)."""
        now = self._now()
        if cache.forced_at is not None and now - cache.forced_at < FORCE_INTERVAL_S:
            self._rate_limited += 1
            retry_after = FORCE_INTERVAL_S - (now - cache.forced_at)
            raise TopMarketsError(
                429,
                "rate_limited",
                f"force refresh of {market} allowed once per {FORCE_INTERVAL_S:g} s; retry in {retry_after:.1f} s",
                retry_after_s=retry_after,
            )
        cache.forced_at = now
        self._forced += 1

    async def _refresh(self, market: str, cache: _MarketCache, force: bool) -> bool:
        """Bring stale parts of ``cache`` up to date (all of it when forced); True when nothing was fetched."""
        info_path, tickers_path = PATHS[market]
        cached = True
        now = self._now()
        if force or cache.listings is None or now - cache.listings_at >= EXCHANGE_INFO_TTL_S:
            info = await self._fetch(market, info_path)
            try:
                cache.listings = parse_exchange_info(info, futures=market == "futures")
            except ExchangeInfoError as e:
                raise self._upstream(market, info_path, f"unexpected answer: {e}") from None
            cache.listings_at = self._now()
            cached = False
        if force or cache.tickers is None or now - cache.tickers_at >= TICKERS_TTL_S:
            rows = await self._fetch(market, tickers_path)
            try:
                cache.tickers = parse_tickers(rows)
            except TypeError as e:
                raise self._upstream(market, tickers_path, f"unexpected answer: {e}") from None
            cache.tickers_at, cache.tickers_wall_ms = self._now(), self._wall_ms()
            cached = False
        return cached

    async def _fetch(self, market: str, path: str) -> object:
        url = self._bases[market] + path
        self._requests += 1
        try:
            response = await self._client.get(url)
        except httpx.HTTPError as e:
            raise self._upstream(market, path, f"{type(e).__name__}: {e}") from None
        if response.status_code != 200:
            raise self._upstream(market, path, f"HTTP {response.status_code} {response.text[:200]}")
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as e:
            raise self._upstream(market, path, f"invalid JSON: {e}") from None

    def _upstream(self, market: str, path: str, error: str) -> TopMarketsError:
        self._errors += 1
        log.warning("top_markets_upstream_error", market=market, path=path, error=error)
        return TopMarketsError(502, "upstream_error", f"binance {market} {path}: {error}")
