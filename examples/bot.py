"""A trading bot's candle feed from klined: every closed candle once, in order, across reconnects.

Copy this file into your bot and pass your own ``on_candle``; it needs aiohttp (which ccxt's async API
uses already). As it is, it prints candles:

    python examples/bot.py ws://127.0.0.1:8710 binance:spot:BTC/USDT:1m binance:spot:ETH/USDT:5m

What it relies on in klined's protocol (docs/protocol.md, docs/http.md):
- ``/ws/market`` takes ``{"type": "subscribe", "series_id", "since", "supports_batch"}`` (no reply) and then
  sends, ascending, only candles newer than ``max(since, what it sent on this connection)``: the catchup as
  ``candles_batch``, live ones as ``candle_closed``. So the bot keeps ``last_sent`` (its newest closed candle
  per series) and subscribes with ``since=last_sent`` on every connect: nothing missed, nothing twice.
  ``since`` null asks for the latest candles (5000 by default).
- A hole the daemon could not fill (an exchange outage) comes as ``gap`` before the candle after it. The daemon
  repairs its log later but never sends those candles on the socket, so the bot reads them over HTTP
  (``GET /api/market/candles?series_id=&since=&limit=``, ``since`` exclusive, at most 5000) and holds newer
  candles back until it has them, or ``gap_wait_s`` gives up (a hole the exchange itself lacks stays one).
  One reader keeps the order simple: other series wait meanwhile.
- ``candle_forming`` is the open period, for display: it never moves ``last_sent``.
- An ``error`` naming a series refuses it for good; ``bad_request`` names none, so each series id is checked
  once over HTTP first (a 422 says what is wrong). Refused series are dropped, not retried.
- A restart closes the socket (1001, after a ``system`` goodbye): the bot reconnects with capped exponential
  backoff and jitter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp

log = logging.getLogger("klined_bot")

Candle = dict[str, Any]  # {"candle_time", "open", "high", "low", "close", "volume"}
OnCandle = Callable[[str, Candle], Awaitable[None]]
PAGE = 5000  # the most candles one HTTP read returns
UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class KlinedBot:
    """Streams closed candles of ``series`` from the daemon at ``url`` (``ws://host:port``) to ``on_candle``.

    ``since`` maps a series to the newest candle the bot already has (from its own storage, say);
    ``last_sent`` is that state as it moves; ``stats`` counts connects, gaps, their HTTP reads and the
    duplicates dropped. An exception from ``on_candle`` ends :meth:`run`; run it again to go on from
    ``last_sent`` (the candle that raised comes again).
    """

    def __init__(
        self,
        url: str,
        series: list[str],
        on_candle: OnCandle,
        *,
        on_forming: OnCandle | None = None,
        since: Mapping[str, int] | None = None,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        gap_wait_s: float = 120.0,
    ) -> None:
        self.ws_url = url.rstrip("/") + "/ws/market"
        self.http_url = url.rstrip("/").replace("ws", "http", 1)  # ws:// -> http://, wss:// -> https://
        self.on_candle, self.on_forming = on_candle, on_forming
        self.last_sent: dict[str, int | None] = {s: (since or {}).get(s) for s in series}
        self.checked: set[str] = set()
        self.refused: dict[str, str] = {}  # series -> the daemon's reason
        self.backoff_s, self.gap_wait_s = backoff_s, gap_wait_s
        self.stats: Counter[str] = Counter()

    async def run(self) -> None:
        """Stream until cancelled, or until the daemon has refused every series."""
        failures = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as self.http:
            while True:
                try:
                    # heartbeat: a silent peer (a half-open TCP connection) is found within 30 s
                    async with self.http.ws_connect(self.ws_url, heartbeat=20) as ws:
                        self.stats["connects"] += 1
                        await self._subscribe(ws)
                        while self.last_sent:
                            message = await ws.receive()
                            if message.type is not aiohttp.WSMsgType.TEXT:
                                break  # closed, or an error (a missed heartbeat): the daemon sends text only
                            failures = 0  # the daemon is serving: the next drop starts the backoff afresh
                            await self._handle(json.loads(message.data))
                    if self.last_sent:
                        log.warning("disconnected: close code %s", ws.close_code)
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    log.warning("connection failed: %s", e)
                if not self.last_sent:
                    return
                first, cap = self.backoff_s
                delay = min(cap, first * 2**failures)
                failures += 1
                await asyncio.sleep(random.uniform(delay / 2, delay))  # jitter: clients do not come back in step

    async def _subscribe(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        for series in list(self.last_sent):
            if series not in self.checked and not await self._check(series):
                continue
            frame = {"type": "subscribe", "series_id": series, "since": self.last_sent[series], "supports_batch": True}
            await ws.send_json(frame)

    async def _check(self, series: str) -> bool:
        """Whether the daemon takes ``series`` as a series id: asked once, where a refusal names it."""
        params: dict[str, str | int] = {"series_id": series, "since": 0, "limit": 1}
        async with self.http.get(f"{self.http_url}/api/market/candles", params=params) as r:
            if r.status == 422:
                self._refuse(series, (await r.json())["detail"])
                return False
            r.raise_for_status()
        self.checked.add(series)
        return True

    def _refuse(self, series: str, reason: str) -> None:
        log.error("%s refused: %s", series, reason)
        self.refused[series] = reason
        self.last_sent.pop(series, None)

    async def _handle(self, frame: dict[str, Any]) -> None:
        kind, series = frame.get("type"), frame.get("series_id")
        if kind == "error":
            if series in self.last_sent:
                self._refuse(series, f"{frame['code']}: {frame['message']}")
            else:
                log.error("daemon error %s: %s", frame["code"], frame["message"])
        elif kind == "system":
            log.info("%s: %s (%s)", series, frame["event"], frame["message"])
        elif series not in self.last_sent:
            return  # a series refused meanwhile
        elif kind == "candles_batch":
            for candle in frame["candles"]:
                await self._deliver(series, candle)
        elif kind == "candle_closed":
            await self._deliver(series, frame["candle"])
        elif kind == "gap":
            await self._fill(series, frame["expected_next_time"], frame["actual_time"])
        elif kind == "candle_forming" and self.on_forming is not None:
            last = self.last_sent[series]
            if last is None or frame["candle"]["candle_time"] > last:
                await self.on_forming(series, frame["candle"])

    async def _deliver(self, series: str, candle: Candle) -> None:
        """The one way a candle reaches the bot: newer than ``last_sent`` or dropped (never twice)."""
        last = self.last_sent[series]
        if last is not None and candle["candle_time"] <= last:
            self.stats["duplicates"] += 1
            return
        await self.on_candle(series, candle)
        self.last_sent[series] = candle["candle_time"]

    async def _fill(self, series: str, expected: int, actual: int) -> None:
        """The periods ``[expected, actual)`` the daemon lacked: read from its log as soon as it has repaired
        them (polled, up to ``gap_wait_s``), then handed over in order; the candle at ``actual`` follows."""
        self.stats["gaps"] += 1
        missing = periods(series.rsplit(":", 1)[1], expected, actual)
        log.warning("%s: gap of %d candles before %d, reading it over HTTP", series, len(missing), actual)
        loop, delay = asyncio.get_running_loop(), 1.0
        deadline = loop.time() + self.gap_wait_s
        while True:
            last = self.last_sent[series]
            candles = await self._read(series, expected - 1 if last is None else last, actual)
            if set(missing) <= {c["candle_time"] for c in candles}:
                break
            if loop.time() >= deadline:
                self.stats["holes_left"] += 1
                log.error("%s: %d candles before %d still missing; going on", series, len(missing), actual)
                break
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(2 * delay, 15.0)
        for candle in candles:
            await self._deliver(series, candle)

    async def _read(self, series: str, after: int, before: int) -> list[Candle]:
        """Closed candles with ``after < candle_time < before`` from the daemon's log, page by page."""
        self.stats["gap_reads"] += 1
        candles: list[Candle] = []
        while True:
            params: dict[str, str | int] = {"series_id": series, "since": after, "limit": PAGE}
            async with self.http.get(f"{self.http_url}/api/market/candles", params=params) as r:
                r.raise_for_status()
                page = [c for c in (await r.json())["candles"] if c["candle_time"] < before]
            candles += page
            if len(page) < PAGE:
                return candles
            after = page[-1]["candle_time"]


def periods(timeframe: str, first: int, end: int) -> list[int]:
    """Open times of the periods from ``first`` up to ``end`` (months vary in length; the rest are fixed)."""
    times, t = [], first
    while t < end:
        times.append(t)
        if timeframe == "1M":
            d = datetime.fromtimestamp(t, UTC)
            t = int(d.replace(year=d.year + d.month // 12, month=d.month % 12 + 1).timestamp())
        else:
            t += int(timeframe[:-1]) * UNIT_S[timeframe[-1]]
    return times


async def print_candle(series: str, candle: Candle) -> None:
    print(series, json.dumps(candle), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Print klined's closed candles, every one once, in order.")
    parser.add_argument("url", help="the daemon, e.g. ws://127.0.0.1:8710")
    parser.add_argument("series", nargs="+", help="series ids, e.g. binance:spot:BTC/USDT:1m")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    bot = KlinedBot(args.url, args.series, print_candle)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(bot.run())
    raise SystemExit(1 if bot.refused else 0)


if __name__ == "__main__":
    main()
