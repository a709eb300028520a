"""Which candles a series lacks in a window (pure): the tail window of N candles and its missing ranges."""

from __future__ import annotations

from collections.abc import Iterable

from protocol.timeframes import Timeframe


def tail_window_start(tf: Timeframe, to_time: int, target: int) -> int:
    """The open time of the first of ``target`` candles ending with the period opening at ``to_time``."""
    end = tf.floor(to_time)
    if tf.name != "1M":
        return end - (max(target, 1) - 1) * tf.seconds
    for _ in range(max(target, 1) - 1):
        end = tf.prev_open(end)
    return end


def missing_ranges(tf: Timeframe, stored: Iterable[int], first: int, last: int) -> list[tuple[int, int]]:
    """Inclusive ``(first_open, last_open)`` ranges of periods in ``[first, last]`` not in ``stored`` (ascending)."""
    out: list[tuple[int, int]] = []
    expected = first
    for t in stored:
        if t < expected:
            continue
        if t > last:
            break
        if t > expected:
            out.append((expected, tf.prev_open(t)))
        expected = tf.next_open(t)
    if expected <= last:
        out.append((expected, last))
    return out


def count_missing(tf: Timeframe, ranges: Iterable[tuple[int, int]]) -> int:
    return sum(tf.count_between(a, b) for a, b in ranges)
