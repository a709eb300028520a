"""Exchange time and the minute tick that every series actor follows.

Exchange time is local wall time plus an offset measured against the exchange (``/api/v3/time``), the
way NTP estimates it: the server stamp against the midpoint of the request's round trip. The ticker fires
at each whole period of exchange time; a late tick is caught up (one tick per missed boundary, in order),
never skipped, and its drift is measured.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import attrs
import structlog
import trio

log = structlog.get_logger(__name__)

WallClock = Callable[[], int]
"""Milliseconds of wall time; injected so MockClock tests can drive it (MockClock does not move time.time)."""


def system_wall_ms() -> int:
    return time.time_ns() // 1_000_000


def trio_wall_ms(start_ms: int) -> WallClock:
    """A wall clock that follows trio's clock from ``start_ms``: with MockClock, minutes pass instantly."""
    return lambda: start_ms + int(trio.current_time() * 1000)


@attrs.frozen
class OffsetSample:
    offset_ms: int
    round_trip_ms: int


class ExchangeClock:
    """Exchange time in ms: ``wall() + offset``. The offset is re-measured periodically.

    ``speed`` (tests and demos only: a fake exchange whose clock runs N times as fast) makes exchange time
    run ``speed`` times as fast as the wall clock from the last measurement, and every wait for an exchange
    time shorter by as much: a scripted day of market passes in minutes with every period closing in turn.
    """

    def __init__(self, wall: WallClock = system_wall_ms, offset_ms: int = 0, *, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError(f"clock speed must be > 0, got {speed}")
        self._wall = wall
        self.speed = speed
        self.offset_ms = offset_ms
        self._anchor_wall = wall()  # at this wall time, exchange time was anchor_wall + offset_ms
        self.last_sample: OffsetSample | None = None
        self._stepped = trio.Event()  # set whenever the offset changes, so sleepers re-aim

    def now_ms(self) -> int:
        wall = self._wall()
        if self.speed == 1.0:
            return wall + self.offset_ms
        return self._anchor_wall + self.offset_ms + int((wall - self._anchor_wall) * self.speed)

    def now_s(self) -> int:
        return self.now_ms() // 1000

    def record(self, server_ms: int, sent_ms: int, received_ms: int) -> OffsetSample:
        """Adopt the offset of one exchange time stamp taken between ``sent_ms`` and ``received_ms`` (wall)."""
        middle = (sent_ms + received_ms) // 2
        sample = OffsetSample(server_ms - middle, received_ms - sent_ms)
        self.offset_ms, self.last_sample, self._anchor_wall = sample.offset_ms, sample, middle
        self._stepped.set()
        self._stepped = trio.Event()
        return sample

    async def measure(self, fetch_server_ms: Callable[[], Awaitable[int]], samples: int = 3) -> OffsetSample:
        """Take ``samples`` stamps and adopt the one with the shortest round trip (NTP's rule).

        A stamp taken while the host is busy (start-up, a burst) has a long round trip and its midpoint may be
        far from when the exchange really stamped it; the shortest round trip bounds the error best.
        """
        best: tuple[int, int, int] | None = None
        for _ in range(samples):
            sent = self._wall()
            server = await fetch_server_ms()
            received = self._wall()
            if best is None or received - sent < best[2] - best[1]:
                best = (server, sent, received)
        assert best is not None
        sample = self.record(*best)
        log.info("clock_offset_measured", offset_ms=sample.offset_ms, round_trip_ms=sample.round_trip_ms)
        return sample

    async def wait_measured(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) for the first offset measurement; whether the clock is measured."""
        with trio.move_on_after(timeout_s):
            while self.last_sample is None:
                await self._stepped.wait()
        return self.last_sample is not None

    async def sleep_until(self, exchange_ms: int) -> None:
        """Sleep until exchange time reaches ``exchange_ms``; a new offset re-aims the wait at once."""
        while not await self.sleep_until_or_step(exchange_ms):
            pass

    async def sleep_until_or_step(self, exchange_ms: int) -> bool:
        """Sleep until ``exchange_ms`` (True) or until the offset changes first (False)."""
        remaining = exchange_ms - self.now_ms()
        if remaining <= 0:
            return True
        with trio.move_on_after(remaining / 1000 / self.speed):
            await self._stepped.wait()
            return False
        return True


@attrs.frozen
class ClockTick:
    """A period boundary of exchange time: every period opening before ``boundary_ms`` has closed."""

    boundary_ms: int
    fired_ms: int
    lag_ms: int = 0  # the ticker aims at boundary + lag (a grace period after the close)

    @property
    def drift_ms(self) -> int:
        return self.fired_ms - self.boundary_ms - self.lag_ms

    @property
    def boundary_s(self) -> int:
        return self.boundary_ms // 1000


async def run_ticker(
    clock: ExchangeClock,
    on_tick: Callable[[ClockTick], Awaitable[None]],
    *,
    period_ms: int = 60_000,
    lag_ms: int = 0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``on_tick`` ``lag_ms`` after every period boundary of exchange time, forever, missing none.

    Aiming past the boundary (rather than waking at it and sleeping) keeps a thousand actors from waking
    at the very moment the exchange's minute-close burst arrives.
    """

    def following(now_ms: int) -> int:
        return ((now_ms - lag_ms) // period_ms + 1) * period_ms

    next_boundary = following(clock.now_ms())
    task_status.started()
    while True:
        if not await clock.sleep_until_or_step(next_boundary + lag_ms):
            # The offset changed: a clock now behind our aim re-aims at its next boundary; one ahead of
            # it falls through below and catches up every boundary it passed.
            next_boundary = min(next_boundary, following(clock.now_ms()))
            continue
        now = clock.now_ms()
        # A tick that fires late (a suspended VPS, a busy loop) catches up every boundary it passed.
        while next_boundary + lag_ms <= now:
            tick = ClockTick(next_boundary, now, lag_ms)
            if tick.drift_ms > period_ms // 10:
                log.warning("tick_late", boundary_ms=tick.boundary_ms, drift_ms=tick.drift_ms)
            await on_tick(tick)
            next_boundary += period_ms
