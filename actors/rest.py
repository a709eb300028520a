"""Binance REST for the live path: exchange time (clock offset) and closed klines (fills), over httpx.

Paginates 1000 rows a call with a cursor that must advance, retries 429 / 418 / 5xx / timeouts with
jittered backoff (never sooner than a Retry-After asks), and returns closed candles only.
"""

from __future__ import annotations

import random
from typing import Final

import httpx
import structlog
import trio

from protocol.backoff import Backoff, Jitter, parse_retry_after
from protocol.binance import parse_exchange_info
from protocol.candle import Candle, make_candle
from protocol.errors import ExchangeInfoError, ProtocolError
from protocol.series import SeriesId

log = structlog.get_logger(__name__)

PAGE: Final = 1000
# Concurrent requests per REST base. Without a bound, a minute when a thousand series miss their close
# sends a thousand requests at once: httpcore's pool assignment is quadratic in waiting requests (a core's
# worth of work for nothing) and Binance's request-weight budget would not like it either.
MAX_CONCURRENT: Final = 8
RETRIES: Final = 5
RETRY_FIRST_S: Final = 1.0
RETRY_MAX_S: Final = 60.0
RETRY_STATUS: Final = frozenset({418, 429, 500, 502, 503, 504})


class RestError(Exception):
    """The exchange answered with an error we cannot retry past."""


class BinanceRest:
    """One market's REST base (``https://api.binance.com`` or ``https://fapi.binance.com``)."""

    def __init__(
        self,
        base_url: str,
        *,
        futures: bool,
        client: httpx.AsyncClient | None = None,
        jitter: Jitter = random.random,
    ) -> None:
        self._futures = futures
        self._prefix = "/fapi/v1" if futures else "/api/v3"
        self._client = client or httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=10.0)
        self._limiter = trio.CapacityLimiter(MAX_CONCURRENT)
        self._jitter = jitter

    async def aclose(self) -> None:
        await self._client.aclose()

    async def server_time_ms(self) -> int:
        data = await self._get("/time", {})
        if not isinstance(data, dict) or type(data.get("serverTime")) is not int:
            raise RestError(f"unexpected time answer: {data!r}")
        return int(data["serverTime"])

    async def trading_symbols(self, quote: str) -> dict[str, str]:
        """Symbols trading now with ``quote`` (``exchangeInfo``): id -> ``BASE/QUOTE``; futures: perpetuals."""
        try:
            listings = parse_exchange_info(await self._get("/exchangeInfo", {}), futures=self._futures)
        except ExchangeInfoError as e:
            raise RestError(f"unexpected exchangeInfo answer: {e}") from None
        # Only bases klined can name in a series id: upper-case letters and digits.
        return {
            symbol_id: listing.symbol
            for symbol_id, listing in listings.items()
            if listing.quote_asset == quote and listing.base_asset.isalnum() and listing.base_asset.isupper()
        }

    async def closed_klines(self, series: SeriesId, first: int, last: int) -> list[Candle]:
        """Closed candles with ``first <= candle_time <= last`` (open times, UTC seconds).

        Only rows the exchange has already followed with a later row are taken: the last row of an answer
        may be its forming candle (it answers with the current period as it stands), and our clock's idea
        of "closed" may be ahead of the exchange's. So the request reaches one period past ``last``, and a
        page's last row is asked again with the next page.
        """
        tf = series.timeframe
        out: list[Candle] = []
        cursor = first
        end_ms = tf.next_open(tf.next_open(last)) * 1000 - 1
        while cursor <= last:
            rows = await self._get(
                "/klines",
                {
                    "symbol": series.symbol_id,
                    "interval": tf.name,
                    "startTime": cursor * 1000,
                    "endTime": end_ms,
                    "limit": PAGE,
                },
            )
            if not isinstance(rows, list) or not rows:
                break
            page = [c for c in (_candle(row, series) for row in rows) if c is not None]
            if not page or page[-1].candle_time < cursor:
                break  # an exchange that does not advance: stop rather than loop forever
            # A full page ending well before ``last`` is history, final whatever the clocks say.
            settled = len(rows) >= PAGE and tf.next_open(page[-1].candle_time) < last
            confirmed = page if settled else page[:-1]
            out.extend(c for c in confirmed if cursor <= c.candle_time <= last)
            if not confirmed or confirmed[-1].candle_time >= last:
                break
            following = tf.next_open(confirmed[-1].candle_time)
            if following <= cursor:
                break
            cursor = following  # an unconfirmed last row comes again, with what follows it
        return out

    async def _get(self, path: str, params: dict[str, str | int]) -> object:
        backoff = Backoff(first_s=RETRY_FIRST_S, cap_s=RETRY_MAX_S)
        for attempt in range(RETRIES + 1):
            try:
                async with self._limiter:
                    response = await self._client.get(self._prefix + path, params=params)
            except httpx.TransportError as e:
                if attempt == RETRIES:
                    raise RestError(f"{path}: {e!r}") from e
                delay = backoff.next_delay(self._jitter())
                log.warning("rest_retry", path=path, error=repr(e), retry_in_s=round(delay, 3))
            else:
                if response.status_code == 200:
                    return response.json()
                if response.status_code not in RETRY_STATUS or attempt == RETRIES:
                    raise RestError(f"{path}: HTTP {response.status_code} {response.text[:200]}")
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                delay = backoff.next_delay(self._jitter(), retry_after_s=retry_after)
                log.warning("rest_retry", path=path, status=response.status_code, retry_in_s=round(delay, 3))
            await trio.sleep(delay)
        raise RestError(f"{path}: retries exhausted")


def _candle(row: object, series: SeriesId) -> Candle | None:
    """A kline row as a candle; a malformed row is logged and skipped."""
    try:
        return _parse_row(row, series)
    except (ValueError, TypeError, ProtocolError) as e:
        log.warning("rest_bad_kline", series_id=str(series), row=repr(row)[:200], error=repr(e))
        return None


def _parse_row(row: object, series: SeriesId) -> Candle:
    if not isinstance(row, list) or len(row) < 6:
        raise ValueError("not a kline row")
    open_ms = row[0]
    if type(open_ms) is not int or open_ms % 1000:
        raise ValueError(f"open time {open_ms!r} is not whole seconds in ms")
    o, h, low, c, v = (float(x) for x in row[1:6])
    return make_candle(open_ms // 1000, o, h, low, c, v, timeframe=series.timeframe)
