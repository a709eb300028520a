"""``examples/bot.py``, the asyncio client bots copy, against the real ``klined`` and the fake exchange.

One run: the bot catches up and follows live candles; an upstream outage (the stream and REST down together)
leaves a hole the daemon reports as a ``gap`` and repairs later, which the bot reads over HTTP; the daemon
restarts on the same port and the bot reconnects by itself; a bad series id is refused once. At the end the
bot has seen every closed candle of the daemon's log once, in order, and equal to it.

The bot runs in its own asyncio loop on a thread; the test and the daemon's harness are trio.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import httpx
import trio

from daemon.fakex.server import FakeExchange, exchange_clock
from examples.bot import KlinedBot
from tests.klined_process import BTC, free_port, klined

SPEED: Final = 60.0  # exchange seconds per wall second: a closed 1m candle every second
MINUTE_MS: Final = 60_000
SYNC_CANDLES: Final = 30
BAD: Final = "binance:spot:btc/usdt:1m"  # a lower-case symbol: not a series id
DAEMON_ENV: Final = {
    "KLINED_DEV_CLOCK_SPEED": str(SPEED),
    "KLINED_BINANCE_WS_RECONNECT_MAX_S": "1",  # at 60x, the default cap would outlast the outage
    "KLINED_ENABLE_MARKET_GAP_BACKFILL": "1",
    "KLINED_ENABLE_CCXT_BACKFILL": "1",
    "KLINED_MARKET_HISTORY_SOURCE": "ccxt",
    "KLINED_ENABLE_STARTUP_KLINE_SYNC": "1",  # done before the daemon is ready, so before the bot starts
    "KLINED_STARTUP_KLINE_SYNC_TARGET_CANDLES": str(SYNC_CANDLES),
}


class BotThread:
    """A :class:`KlinedBot` in an asyncio loop on a thread of its own."""

    def __init__(self, bot: KlinedBot) -> None:
        self.bot = bot
        self.error: BaseException | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bot", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._started.wait()  # the loop and the task exist: stop() can reach them

    async def stop(self) -> None:
        """Cancel the bot (it closes its connections) and wait for its thread; a no-op if it never started."""
        if self._started.is_set():
            self._loop.call_soon_threadsafe(self._task.cancel)
            await self.join()

    async def join(self) -> None:
        await trio.to_thread.run_sync(self._thread.join, abandon_on_cancel=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except asyncio.CancelledError:
            pass  # stopped
        except BaseException as e:  # a bot that crashed fails the wait it was in
            self.error = e

    async def _main(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._loop, self._task = asyncio.get_running_loop(), task
        self._started.set()
        await self.bot.run()

    async def wait(self, what: str, ok: Callable[[], bool]) -> None:
        """Poll ``ok`` (the bot's state, read across threads) until it holds; the test's deadline bounds it."""
        while not ok():
            assert self._thread.is_alive(), f"the bot stopped before {what}: {self.error!r}"
            await trio.sleep(0.05)


async def test_bot_sees_every_candle_once_through_an_outage_and_a_restart(tmp_path: Path) -> None:
    fake = FakeExchange(now_ms=exchange_clock(speed=SPEED))
    data = tmp_path / "data"
    port = free_port()  # pinned: the restarted daemon is found at the same address
    env = {**DAEMON_ENV, "KLINED_HTTP_PORT": str(port)}
    seen: list[dict[str, Any]] = []

    async def on_candle(series_id: str, candle: dict[str, Any]) -> None:
        assert series_id == BTC
        seen.append(candle)

    bot = KlinedBot(f"ws://127.0.0.1:{port}", [BTC, BAD], on_candle, backoff_s=(0.2, 1.0))
    runner = BotThread(bot)

    def last() -> int:
        return bot.last_sent.get(BTC) or 0

    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                urls = await nursery.start(fake.serve)
                async with klined(data, urls, tmp_path / "klined-1.log", **env):
                    runner.start()
                    # 1. the catchup, live candles, and the bad series refused (once, not retried)
                    await runner.wait("catchup and two live candles", lambda: len(seen) >= SYNC_CANDLES + 2)
                    assert list(bot.refused) == [BAD]
                    assert bot.refused[BAD].startswith("invalid series_id"), bot.refused
                    lonely = BotThread(KlinedBot(f"ws://127.0.0.1:{port}", [BAD], on_candle))
                    lonely.start()
                    await lonely.join()  # every series refused: run() returns
                    assert list(lonely.bot.refused) == [BAD]

                    # 2. an upstream outage: the stream and REST down together leave the daemon a hole to report
                    now = fake.now_ms()
                    fake.streams.faults.refuse_until_ms = now + 3 * MINUTE_MS
                    fake.rest_faults.unavailable_until_ms = now + 7 * MINUTE_MS
                    fake.streams.faults.drop_generation += 1
                    await runner.wait("a gap", lambda: bot.stats["gaps"] >= 1)
                    await runner.wait("past the outage", lambda: last() >= (now + 8 * MINUTE_MS) // 1000)
                    assert bot.stats["gap_reads"] >= 2  # the hole was not in the log yet: the bot waited for it

                # 3. the daemon restarts on the same port: the bot reconnects from its last candle
                before = last()
                async with klined(data, urls, tmp_path / "klined-2.log", **env) as (_proc, url):
                    await runner.wait("reconnected", lambda: bot.stats["connects"] >= 2 and last() >= before + 180)
                    async with httpx.AsyncClient(base_url=url) as http:
                        r = await http.get("/api/market/candles", params={"series_id": BTC, "since": 0, "limit": 5000})
                    log = r.json()["candles"]
                    await runner.wait("the log's head", lambda: last() >= log[-1]["candle_time"])
                nursery.cancel_scope.cancel()
    finally:
        await runner.stop()
    assert runner.error is None, runner.error

    times = [c["candle_time"] for c in log]
    assert times == list(range(times[0], times[-1] + 60, 60)), "the daemon's log kept a hole"
    assert seen[: len(log)] == log  # every candle once, in order, as the log holds it
    assert [c["candle_time"] for c in seen] == sorted({c["candle_time"] for c in seen})
    assert bot.stats["holes_left"] == 0
    assert bot.stats["duplicates"] == 0  # the daemon honoured since=last_sent: the bot had nothing to drop
    print(f"bot: {len(seen)} candles, stats {dict(bot.stats)}")
