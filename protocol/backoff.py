"""Retry delays, one rule for every retry loop: exponential growth to a cap, full jitter, a healthy run
starts over, and a server's ``Retry-After`` is a floor.

Sans-IO: the random draw is an argument (``random.random()`` in production, :func:`no_jitter` in tests
that assert exact delays) and the caller does the sleeping.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs

Jitter = Callable[[], float]
"""A source of draws in [0, 1] that scale each delay: ``random.random`` in production."""


def no_jitter() -> float:
    """The draw that gives the un-jittered delays (tests that assert exact times)."""
    return 1.0


@attrs.define
class Backoff:
    """Delays ``min(cap, first * factor**n)`` for the n-th retry since the last reset, scaled by a draw in
    [0, 1] (full jitter).

    Full jitter spreads the retries of clients that failed together (every series when REST comes back)
    over the whole window instead of sending them in synchronised waves.
    """

    first_s: float = 1.0
    cap_s: float = 60.0
    factor: float = 2.0
    healthy_s: float = math.inf  # a run at least this long before it failed starts the delays over
    attempt: int = 0

    def delay(self, attempt: int, draw: float) -> float:
        """The delay of retry number ``attempt`` (from 0), without touching the state."""
        if not 0.0 <= draw <= 1.0:
            raise ValueError(f"a jitter draw is in [0, 1], got {draw}")
        try:
            grown = self.first_s * self.factor**attempt
        except OverflowError:  # days of failures: the cap has long been reached
            grown = math.inf
        # Never 0: a drawn 0 would retry in a hot loop.
        return max(self.first_s / 10, min(self.cap_s, grown) * draw)

    def next_delay(self, draw: float, *, retry_after_s: float | None = None) -> float:
        """The wait before the next retry; the server's ``Retry-After`` (seconds), when it sent one, is a floor."""
        delay = self.delay(self.attempt, draw)
        self.attempt += 1
        return delay if retry_after_s is None else max(delay, retry_after_s)

    def ran(self, seconds: float) -> None:
        """The attempt that just failed had run ``seconds``: a healthy run starts the delays over."""
        if seconds >= self.healthy_s:
            self.reset()

    def reset(self) -> None:
        self.attempt = 0


def parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header's delay in seconds; None when absent or not a number of seconds.

    Binance sends seconds. The HTTP-date form would need the wall clock, so it is ignored like any other
    unreadable value: the backoff's own delay applies.
    """
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
