"""Exchange history through ccxt: sync ``ccxt.binance`` in a worker thread, 1000 candles a call.

The cursor must advance every page or the walk stops (an exchange that repeats a page cannot loop us);
rate limits, bans and outages are retried with jittered backoff, except that an impatient walk (a reader's,
who waits seconds at most) gives up at once on an exchange it cannot reach; a cancelled walk returns at once
(the thread's one request in flight is abandoned, never awaited).
"""

from __future__ import annotations

import functools
import random
from collections.abc import AsyncGenerator, Callable
from typing import Any, Final
from urllib.parse import urlsplit

import structlog
import trio

from protocol.backoff import Backoff, Jitter
from protocol.candle import Candle, make_candle
from protocol.errors import ProtocolError
from protocol.series import Market, SeriesId

log = structlog.get_logger(__name__)

PAGE: Final = 1000
RETRIES: Final = 6
RETRY_FIRST_S: Final = 1.0
RETRY_MAX_S: Final = 60.0
BINANCE_HOSTS: Final = {"spot": "api.binance.com", "futures": "fapi.binance.com"}


class HistoryError(Exception):
    """The exchange could not give what was asked (after retries), or refused it."""


def binance_exchange(market: Market, rest_url: str) -> Any:
    """A ccxt client for one market; its URLs point at ``rest_url`` when that is not Binance's own."""
    import ccxt  # imported on first use: ccxt alone is ~66 MB of RSS a daemon without history never needs

    options = {"fetchMarkets": {"types": ["spot"] if market == "spot" else ["linear"]}}
    exchange = ccxt.binance({"enableRateLimit": True, "timeout": 10_000, "options": options})
    base = urlsplit(rest_url)
    if base.hostname != BINANCE_HOSTS[market]:
        api = exchange.urls["api"]
        for name, url in list(api.items()):
            if isinstance(url, str):  # keep each API's path (/api/v3, /fapi/v1 ...), swap the host
                api[name] = f"{base.scheme}://{base.netloc}{urlsplit(url).path}"
    return exchange


class CcxtSource:
    """Closed candles of any series from the exchange, page by page."""

    def __init__(
        self,
        spot_rest_url: str,
        futures_rest_url: str,
        *,
        make: Callable[[Market, str], Any] = binance_exchange,
        retry_first_s: float = RETRY_FIRST_S,
        jitter: Jitter = random.random,
    ) -> None:
        self._urls: dict[Market, str] = {"spot": spot_rest_url, "futures": futures_rest_url}
        self._make = make
        self._clients: dict[Market, Any] = {}
        self._retry_first_s = retry_first_s
        self._jitter = jitter
        self.calls = 0  # REST calls made (pages), for the benchmark and the progress view
        self._unreachable = trio.Event()  # set while the last request got no answer at all

    @property
    def unreachable(self) -> bool:
        """Whether the last request could not reach the exchange (a network error, a timeout, a 5xx); the
        next answer clears it. A rate limit is an answer: the exchange is there."""
        return self._unreachable.is_set()

    async def wait_unreachable(self) -> None:
        """Return once a request cannot reach the exchange (at once while that is so)."""
        await self._unreachable.wait()

    async def warm_up(self, markets: tuple[Market, ...] = ("spot", "futures")) -> None:
        """Import ccxt and build the clients in a worker thread, ahead of their first use: both take the
        interpreter for a second or more, which on the event loop would stall everything else (a cluster
        writer's lease renewals among it)."""
        for market in markets:
            await trio.to_thread.run_sync(self._client, market)

    def _client(self, market: Market) -> Any:
        client = self._clients.get(market)
        if client is None:
            client = self._clients[market] = self._make(market, self._urls[market])
        return client

    async def pages(
        self, series: SeriesId, first: int, last: int, *, patient: bool = True
    ) -> AsyncGenerator[list[Candle], None]:
        """Pages of closed candles with ``first <= candle_time <= last``, ascending. Not ``patient``: an
        exchange that cannot be reached is :class:`HistoryError` at once, not retried."""
        tf = series.timeframe
        symbol = series.symbol if series.market == "spot" else f"{series.symbol}:{series.symbol.split('/')[1]}"
        cursor = first
        while cursor <= last:
            rows = await self._fetch(series.market, symbol, tf.name, cursor, patient=patient)
            page: list[Candle] = []
            # A row is final only once the exchange has a later one: the last row of an answer may be the
            # period still forming there (our clock's "closed" can run ahead of the exchange's). It comes
            # again at the head of the next page. A full page ending well before ``last`` is history.
            settled = len(rows) >= PAGE and bool(rows) and tf.next_open(int(rows[-1][0]) // 1000) < last
            for row in rows if settled else rows[:-1]:
                t = int(row[0]) // 1000
                if t < cursor or t > last:
                    continue
                try:
                    page.append(make_candle(t, row[1], row[2], row[3], row[4], row[5], timeframe=tf))
                except (ProtocolError, TypeError, ValueError) as e:
                    log.warning("history_row_skipped", series_id=str(series), candle_time=t, error=str(e))
            if not page:
                return  # nothing (more) in the range: the exchange has no older data, or the range is empty
            yield page
            following = tf.next_open(page[-1].candle_time)
            if following <= cursor:
                return  # the cursor must advance: an exchange that repeats itself ends the walk
            cursor = following

    async def _fetch(
        self, market: Market, symbol: str, timeframe: str, since: int, *, patient: bool = True
    ) -> list[list[Any]]:
        import ccxt

        retryable = (ccxt.RateLimitExceeded, ccxt.DDoSProtection, ccxt.ExchangeNotAvailable, ccxt.NetworkError)
        answered = (ccxt.RateLimitExceeded, ccxt.DDoSProtection)  # the exchange is there, asking us to slow down
        backoff = Backoff(first_s=self._retry_first_s, cap_s=RETRY_MAX_S)
        for attempt in range(RETRIES):
            self.calls += 1
            client = self._client(market)
            try:
                rows: list[list[Any]] = await trio.to_thread.run_sync(
                    functools.partial(client.fetch_ohlcv, symbol, timeframe, since=since * 1000, limit=PAGE),
                    abandon_on_cancel=True,
                )
            except retryable as e:
                if isinstance(e, answered):
                    self._answered()
                else:
                    self._unreachable.set()
                if attempt == RETRIES - 1 or not (patient or isinstance(e, answered)):
                    raise HistoryError(f"{symbol} {timeframe}: {type(e).__name__}: {e}") from e
                delay = backoff.next_delay(self._jitter())
                log.warning("history_retry", symbol=symbol, error=type(e).__name__, retry_in_s=round(delay, 3))
                await trio.sleep(delay)
            except ccxt.BaseError as e:
                self._answered()
                raise HistoryError(f"{symbol} {timeframe}: {type(e).__name__}: {e}") from e
            else:
                self._answered()
                return rows
        raise AssertionError("unreachable")

    def _answered(self) -> None:
        if self._unreachable.is_set():
            self._unreachable = trio.Event()
