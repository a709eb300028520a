"""``klined demo``: the daemon on the project's simulated exchange, in one process, with no internet.

One trio run holds both: the fake Binance of :mod:`daemon.fakex` on ephemeral loopback ports, and the real
daemon (:func:`daemon.app.serve_daemon`, exactly what ``klined run`` serves) pointed at it, with a few
whitelisted series. The startup sync brings in their history before the page can open, so factors show at
once; derived timeframes follow. Every few exchange minutes the exchange goes away (streams and REST), so
the viewer sees a gap open and then heal.

The demo builds its settings itself: ``KLINED_*`` variables and config files are ignored (a user's
environment for ``klined run`` must not turn the demo into something else, nor break it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import attrs
import trio

from actors.store import Store
from daemon.app import Running, serve_daemon, start_stop_deadline
from daemon.config import Settings
from daemon.fakex.market import Market
from daemon.fakex.server import FakeExchange, FakeExchangeUrls, exchange_clock
from daemon.history.service import HEAL_WAIT_S
from protocol.coverage import count_missing, missing_ranges
from protocol.series import SeriesId

DEMO_SERIES: Final = ("binance:spot:BTC/USDT:1m", "binance:spot:ETH/USDT:1m", "binance:spot:SOL/USDT:1m")
DERIVED: Final = ("5m", "15m", "1h", "4h", "1d")
HISTORY_CANDLES: Final = 5000  # 1m candles a series at start (3.5 days): factors from 1m to 15m at once
# Outages, in exchange seconds (the fake's clock; --speed makes them pass faster).
FIRST_OUTAGE_AFTER_S: Final = 120.0
OUTAGE_S: Final = 150.0
# REST stays down after the stream is back, so the first live close reaches subscribers over a hole that
# cannot be fetched: a `gap` frame. At least one exchange minute (the next close) and, in wall time, longer
# than a subscriber's bounded wait for a gap backfill (HEAL_WAIT_S), whatever the speed.
REST_HELD_S: Final = 75.0
REST_HELD_WALL_S: Final = HEAL_WAIT_S + 3.0
RECONNECT_WAIT_WALL_S: Final = 120.0  # the daemon's reconnect backoff is wall time, capped at 60 s
HEAL_WATCH_MIN_WALL_S: Final = 30.0
POLL_WALL_S: Final = 0.2

Say = Callable[[str], None]


def say(message: str) -> None:
    """One line for the person watching, between the daemon's own log lines."""
    print(f"klined demo: {message}", flush=True)


@attrs.frozen(kw_only=True)
class DemoOptions:
    host: str = "127.0.0.1"
    port: int = 8710
    speed: float = 1.0  # the exchange clock's speed; the daemon follows it (dev_clock_speed)
    data_dir: str | None = None  # None: a fresh temporary directory, removed at exit
    gap_every_min: float = 10.0  # exchange minutes from one outage to the next
    gaps: bool = True
    verbose: bool = False

    def wall_s(self, exchange_s: float) -> float:
        """Wall seconds for ``exchange_s`` seconds of exchange time."""
        return exchange_s / self.speed


class DemoError(Exception):
    """The demo cannot start (the port is taken, the data directory cannot be made); one line."""


def demo_market() -> Market:
    spot = [SeriesId.parse(s).symbol_id for s in DEMO_SERIES]
    return Market.default(spot, ["BTCUSDT", "ETHUSDT"])


def demo_settings(options: DemoOptions, data_dir: Path, urls: FakeExchangeUrls) -> Settings:
    """The daemon's settings: the fake's URLs, the demo whitelist, every repair on, history at start."""
    return Settings(
        data_dir=str(data_dir),
        http_host=options.host,
        http_port=options.port,
        whitelist=DEMO_SERIES,
        binance_spot_rest_url=urls.rest_url,
        binance_spot_ws_url=urls.spot_ws,
        binance_futures_rest_url=urls.rest_url,
        binance_futures_ws_url=urls.futures_ws,
        enable_whitelist_ingest=True,
        enable_market_gap_backfill=True,
        enable_market_auto_tail_backfill=True,
        enable_ccxt_backfill=True,
        enable_startup_kline_sync=True,
        startup_kline_sync_target_candles=HISTORY_CANDLES,
        enable_derived_timeframes=True,
        derived_timeframes=DERIVED,
        enable_kline_health=True,
        dev_clock_speed=options.speed,
    )


@contextmanager
def data_directory(requested: str | None) -> Iterator[tuple[Path, bool]]:
    """The directory and whether it is temporary (then removed on the way out)."""
    try:
        if requested is not None:
            path = Path(requested).expanduser()
            path.mkdir(parents=True, exist_ok=True)
        else:
            path = Path(tempfile.mkdtemp(prefix="klined-demo-"))
    except OSError as e:
        raise DemoError(f"cannot create the data directory: {e}") from None
    try:
        yield path, requested is None
    finally:
        if requested is None:
            shutil.rmtree(path, ignore_errors=True)


def _hhmm(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M")


def _ranges_text(ranges: Sequence[tuple[int, int]]) -> str:
    return ", ".join(_hhmm(a) if a == b else f"{_hhmm(a)}-{_hhmm(b)}" for a, b in ranges) + " UTC"


# -- outages ----------------------------------------------------------------------------------------


@attrs.define
class Cut:
    """What one outage cut out of a series: its 1m periods from ``first`` to ``last``."""

    series: SeriesId
    first: int
    last: int

    async def missing(self, store: Store) -> list[tuple[int, int]]:
        stored = await store.range(self.series, self.first - 1, self.last, None)
        return missing_ranges(self.series.timeframe, (c.candle_time for c in stored), self.first, self.last)


class Outages:
    """Cuts the fake exchange now and then: streams dropped and refused, REST answering 503 a while longer."""

    def __init__(self, fake: FakeExchange, store: Store, options: DemoOptions, out: Say = say) -> None:
        self.fake = fake
        self.store = store
        self.options = options
        self.out = out
        self.series = [SeriesId.parse(s) for s in DEMO_SERIES]

    def say(self, message: str) -> None:
        """Stamped with the exchange's time: the chart's axis, whatever the speed."""
        stamp = datetime.fromtimestamp(self.fake.now_ms() / 1000, UTC).strftime("%H:%M:%S")
        self.out(f"{stamp} {message}")

    async def run(self) -> None:
        await trio.sleep(self.options.wall_s(FIRST_OUTAGE_AFTER_S))
        while True:
            next_due = trio.current_time() + self.options.wall_s(self.options.gap_every_min * 60)
            await self.one(next_due)
            await trio.sleep_until(next_due)

    async def one(self, next_due: float) -> None:
        heads = {s: await self._head(s) for s in self.series}
        streams, rest = self.fake.streams, self.fake.rest_faults
        now = self.fake.now_ms()
        accepted = streams.accepted
        streams.faults.refuse_until_ms = now + int(OUTAGE_S * 1000)
        # Lifted below once subscribers have had their gap; the bound (the longest the waits below take) only
        # ends it should the demo stop caring.
        waits_s = OUTAGE_S + self.options.speed * (RECONNECT_WAIT_WALL_S + REST_HELD_WALL_S) + REST_HELD_S
        rest.unavailable_until_ms = now + int(waits_s * 1000)
        streams.faults.drop_generation += 1
        self.say(f"exchange outage for {OUTAGE_S:.0f} s (streams and REST) - a gap will show, then heal")
        await self._reconnected(accepted)
        missing = [(c, await c.missing(self.store)) for c in self._cuts(heads)]
        missing = [(c, m) for c, m in missing if m]
        where = f"{_ranges_text(missing[0][1])} missing" if missing else "nothing missing"
        self.say(f"streams back, REST still down: {where}, subscribers get a gap")
        await trio.sleep(max(self.options.wall_s(REST_HELD_S), REST_HELD_WALL_S))
        rest.unavailable_until_ms = 0
        self.say("exchange REST back - the daemon fills the gap")
        await self._watch_heal([c for c, _ in missing], max(next_due, trio.current_time() + HEAL_WATCH_MIN_WALL_S))

    async def _head(self, series: SeriesId) -> int | None:
        head = await self.store.head(series)
        return head.head_time if head else None

    async def _reconnected(self, accepted: int) -> None:
        """Until the daemon's streams are back (a handshake accepted after the refusals end), bounded."""
        streams = self.fake.streams
        with trio.move_on_after(self.options.wall_s(OUTAGE_S) + RECONNECT_WAIT_WALL_S):
            await trio.sleep(self.options.wall_s(max(0, streams.faults.refuse_until_ms - self.fake.now_ms()) / 1000))
            if streams.accepted == accepted:  # no checkpoint between this test and the wait: none is missed
                await streams.wait_accepted()

    def _cuts(self, heads: dict[SeriesId, int | None]) -> list[Cut]:
        """Each series' periods that closed while its stream was away: after its head, through the last
        period closed now (the stream resumes with the one running)."""
        now_s = self.fake.now_ms() // 1000
        out = []
        for series, head in heads.items():
            tf = series.timeframe
            if head is not None and tf.next_open(head) <= tf.last_closed_open(now_s):
                out.append(Cut(series, tf.next_open(head), tf.last_closed_open(now_s)))
        return out

    async def _watch_heal(self, cuts: list[Cut], until: float) -> None:
        if not cuts:
            return
        with trio.move_on_after(max(0.0, until - trio.current_time())):
            while True:
                if not any([await c.missing(self.store) for c in cuts]):
                    self.say(f"gap healed: {', '.join(c.series.symbol for c in cuts)} complete again")
                    return
                await trio.sleep(POLL_WALL_S)
        still = sum([count_missing(c.series.timeframe, await c.missing(self.store)) for c in cuts])
        self.say(f"gap still open: {still} candles not filled yet")


# -- the run ----------------------------------------------------------------------------------------


def banner(options: DemoOptions, running: Running, urls: FakeExchangeUrls, data_dir: Path, temporary: bool) -> str:
    page = running.http_url.rstrip("/") + "/"
    keep = "temporary, removed at exit; --data-dir keeps one" if temporary else "kept"
    gaps = (
        f"every {options.gap_every_min:g} exchange minutes, the first in {FIRST_OUTAGE_AFTER_S / 60:g}"
        if options.gaps
        else "none (--no-gaps)"
    )
    lines = [
        f"ready - open {page}",
        f"  series    {', '.join(DEMO_SERIES)} (+ {' '.join(DERIVED)} derived)",
        f"  history   {HISTORY_CANDLES} 1m candles a series, factors and overlays included",
        f"  exchange  simulated Binance at {options.speed:g}x: REST {urls.rest_url}, streams {urls.spot_ws}"
        f" (spot), {urls.futures_ws} (futures)",
        f"  outages   {gaps}",
        f"  data      {data_dir} ({keep})",
        "  stop      Ctrl-C",
    ]
    return "\n".join(lines)


class Demo:
    """The fake exchange, the daemon and the outages in one nursery; stops on SIGINT / SIGTERM / SIGHUP."""

    def __init__(self, options: DemoOptions, data_dir: Path, temporary: bool) -> None:
        self.options = options
        self.data_dir = data_dir
        self.temporary = temporary
        self.fake = FakeExchange(demo_market(), exchange_clock(speed=options.speed))
        self.running: Running | None = None
        self.daemon_done = trio.Event()
        self.deadline: threading.Timer | None = None

    async def run(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stop_on_signal, signals, nursery.cancel_scope)
                urls: FakeExchangeUrls = await nursery.start(self.fake.serve)
                settings = demo_settings(self.options, self.data_dir, urls)
                say(f"starting: the daemon on a simulated exchange, {HISTORY_CANDLES} candles of history a series")
                self.running = await nursery.start(self._daemon, settings)
                say(banner(self.options, self.running, urls, self.data_dir, self.temporary))
                if self.options.gaps:
                    nursery.start_soon(Outages(self.fake, self.running.store, self.options).run)
                await self.daemon_done.wait()
                nursery.cancel_scope.cancel()  # the daemon stopped (a signal): the exchange and outages go too
        if self.deadline is not None:
            self.deadline.cancel()

    async def _daemon(self, settings: Settings, task_status: trio.TaskStatus[Running]) -> None:
        try:
            await serve_daemon(settings, task_status=task_status)
        finally:
            self.daemon_done.set()

    async def _stop_on_signal(self, signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
        async for signum in signals:
            say(f"{signal.Signals(signum).name}: stopping")
            # As ``klined run`` does; a temporary data directory is removed first should the deadline pass.
            self.deadline = start_stop_deadline(self._remove_temporary)
            if self.running is None:
                scope.cancel()  # still starting: nothing acknowledged to drain, the log closes on the way out
            else:
                self.running.stop.set()  # the daemon's own ordered stop; the nursery follows when it is done
            return

    def _remove_temporary(self) -> None:
        if self.temporary:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _leaf(error: BaseException) -> BaseException:
    """The first exception at the bottom of nested groups (trio nests one per nursery)."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def check_port(host: str, port: int) -> None:
    """Fail at once on a taken port, not after the startup sync (the daemon binds last)."""
    if port == 0:
        return
    try:
        socket.create_server((host, port)).close()
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise DemoError(f"cannot listen on {host}:{port}: {reason} (another --port?)") from None


async def run_demo(options: DemoOptions) -> None:
    check_port(options.host, options.port)
    with data_directory(options.data_dir) as (data_dir, temporary):
        started = time.monotonic()
        try:
            await Demo(options, data_dir, temporary).run()
        except* OSError as group:  # a taken port, mostly: one line, not a traceback
            raise DemoError(f"cannot start: {_leaf(group)}") from None
        say(f"stopped after {time.monotonic() - started:.0f} s" + (f"; removed {data_dir}" if temporary else ""))
