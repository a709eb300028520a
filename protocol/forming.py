"""Forming-candle throttle: at most one broadcast per series per ``min_interval``, the latest wins
(docs/protocol.md, "Forming candles").

Sans-IO: the caller passes the time and sleeps until :attr:`FormingThrottle.deadline` itself. The fan-out
hub is its one user, where every source of forming candles meets; a held candle whose period has closed
meanwhile is stopped there by each subscriber's cursor.
"""

from __future__ import annotations

import attrs

from protocol.candle import Candle


@attrs.define
class FormingThrottle:
    min_interval_s: float
    last_sent_at: float | None = None
    pending: Candle | None = None

    @property
    def deadline(self) -> float | None:
        """When the held candle may go (None when nothing is held)."""
        if self.pending is None or self.last_sent_at is None:
            return None
        return self.last_sent_at + self.min_interval_s

    def offer(self, candle: Candle, now: float) -> Candle | None:
        """A new forming candle: returns it if it may go now, else holds it (replacing an older one)."""
        if self.last_sent_at is None or now - self.last_sent_at >= self.min_interval_s:
            self.last_sent_at, self.pending = now, None
            return candle
        self.pending = candle
        return None

    def due(self, now: float) -> Candle | None:
        """The held candle once its deadline has passed."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return None
        candle, self.pending, self.last_sent_at = self.pending, None, now
        return candle
