"""Sans-IO rules of the upstream (Binance) stream connections: what to send, when, and what was missed.

- :class:`TokenBucket`: Binance's limit on incoming control messages per connection (spot 5/s,
  futures 10/s); asks how long to wait, given the time.
- :class:`StreamPlan`: which stream lives on which connection (at most 1024 each) and the batched
  SUBSCRIBE / UNSUBSCRIBE messages that get there without reconnecting anybody.
- :class:`HoleTracker`: after a reconnect, the closed candles that never arrived.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal

import attrs

from protocol.timeframes import Timeframe

MAX_STREAMS_PER_CONNECTION: Final = 1024
MAX_PARAMS_PER_MESSAGE: Final = 200  # keeps one control frame far below any frame-size limit
CONTROL_RATE: Final = {"spot": 5.0, "futures": 10.0}  # Binance's limit: incoming messages/s/connection
# We send at 80% of it: frames sent exactly 1/rate apart can land in one server-side second after
# network jitter (or float drift) compresses the gaps, and exceeding the limit costs the connection.
CONTROL_SAFETY: Final = 0.8
# Binance cuts every connection at 24 h; reconnect on our terms a little before.
PROACTIVE_RECONNECT_S: Final = 23 * 3600 + 50 * 60
_EPSILON: Final = 1e-9  # waiting exactly delay() can leave 0.999... tokens in floating point


@attrs.define
class TokenBucket:
    """``rate`` messages per second with a burst of ``burst``; time is an argument."""

    rate: float
    burst: float = 1.0
    tokens: float = attrs.field(default=-1.0)
    updated: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def delay(self, now: float) -> float:
        """Seconds to wait before one message may go at ``now`` (0 if it may go now)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 - _EPSILON else (1 - self.tokens) / self.rate

    def take(self, now: float) -> None:
        """Spend one token (call once :meth:`delay` says 0)."""
        self._refill(now)
        if self.tokens < 1 - _EPSILON:
            raise ValueError("no token available: wait for delay() first")
        self.tokens = max(0.0, self.tokens - 1)

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now


def control_bucket(market: Literal["spot", "futures"]) -> TokenBucket:
    """The limiter a connection's control messages go through."""
    return TokenBucket(rate=CONTROL_RATE[market] * CONTROL_SAFETY, burst=1)


@attrs.frozen
class ControlMessage:
    """One SUBSCRIBE / UNSUBSCRIBE frame for one connection."""

    connection: int
    method: Literal["SUBSCRIBE", "UNSUBSCRIBE"]
    params: tuple[str, ...]

    def payload(self, message_id: int) -> dict[str, object]:
        return {"method": self.method, "params": list(self.params), "id": message_id}


class StreamPlan:
    """The wanted streams, spread over connections of at most ``limit`` streams each."""

    def __init__(self, limit: int = MAX_STREAMS_PER_CONNECTION) -> None:
        self.limit = limit
        self._where: dict[str, int] = {}
        self._connections: dict[int, set[str]] = {}
        self._next_connection = 0

    def connections(self) -> dict[int, frozenset[str]]:
        return {cid: frozenset(streams) for cid, streams in self._connections.items()}

    def connection_of(self, stream: str) -> int | None:
        return self._where.get(stream)

    def add(self, streams: Iterable[str]) -> list[ControlMessage]:
        """Place new streams (fill existing connections first) and say what to send where."""
        placed: dict[int, list[str]] = {}
        for stream in streams:
            if stream in self._where:
                continue
            cid = next((c for c, s in self._connections.items() if len(s) < self.limit), None)
            if cid is None:
                cid = self._next_connection
                self._next_connection += 1
                self._connections[cid] = set()
            self._connections[cid].add(stream)
            self._where[stream] = cid
            placed.setdefault(cid, []).append(stream)
        return _messages("SUBSCRIBE", placed)

    def remove(self, streams: Iterable[str]) -> list[ControlMessage]:
        removed: dict[int, list[str]] = {}
        for stream in streams:
            cid = self._where.pop(stream, None)
            if cid is None:
                continue
            self._connections[cid].discard(stream)
            removed.setdefault(cid, []).append(stream)
        for cid in [c for c, s in self._connections.items() if not s]:
            del self._connections[cid]  # an empty connection is closed, not kept
        return _messages("UNSUBSCRIBE", removed)

    def resubscribe(self, connection: int) -> list[ControlMessage]:
        """Everything a fresh connection ``connection`` must subscribe after a reconnect."""
        return _messages("SUBSCRIBE", {connection: sorted(self._connections.get(connection, ()))})


def _messages(method: Literal["SUBSCRIBE", "UNSUBSCRIBE"], by_connection: dict[int, list[str]]) -> list[ControlMessage]:
    return [
        ControlMessage(cid, method, tuple(streams[i : i + MAX_PARAMS_PER_MESSAGE]))
        for cid, streams in by_connection.items()
        for i in range(0, len(streams), MAX_PARAMS_PER_MESSAGE)
    ]


@attrs.frozen
class Hole:
    """Closed periods that never arrived: every candle from ``expected_next_time`` up to before ``actual_time``."""

    expected_next_time: int
    actual_time: int

    def missing(self, timeframe: Timeframe) -> int:
        return timeframe.count_between(self.expected_next_time, timeframe.prev_open(self.actual_time))


class HoleTracker:
    """Per series, the last closed candle seen; a later closed candle past the next period is a hole."""

    def __init__(self, timeframe: Timeframe, last_closed: int | None = None) -> None:
        self.timeframe = timeframe
        self.last_closed = last_closed

    def observe_closed(self, candle_time: int) -> Hole | None:
        """Record a closed candle; return the hole before it, if any. Older candles change nothing."""
        last = self.last_closed
        if last is not None and candle_time <= last:
            return None
        self.last_closed = candle_time
        if last is None:
            return None
        expected = self.timeframe.next_open(last)
        return Hole(expected, candle_time) if candle_time > expected else None


def coalesce(messages: list[ControlMessage]) -> list[ControlMessage]:
    """Merge runs of same-method messages for one connection (order kept, <= MAX_PARAMS_PER_MESSAGE).

    Subscribing a thousand series one by one would cost a thousand control messages, four minutes at
    Binance's pace; queued together they are five.
    """
    out: list[ControlMessage] = []
    for message in messages:
        last = out[-1] if out else None
        if (
            last is not None
            and last.connection == message.connection
            and last.method == message.method
            and len(last.params) + len(message.params) <= MAX_PARAMS_PER_MESSAGE
        ):
            out[-1] = ControlMessage(last.connection, last.method, last.params + message.params)
        else:
            out.append(message)
    return out
