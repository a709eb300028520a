"""The forming throttle: one broadcast per interval per series, the latest candle wins."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from protocol.candle import Candle
from protocol.forming import FormingThrottle


def f(t: int, close: float) -> Candle:
    return Candle(t, 1.0, max(1.0, close), min(1.0, close), close, 1.0)


def test_first_goes_at_once_then_latest_wins_at_the_deadline() -> None:
    th = FormingThrottle(0.25)
    assert th.offer(f(60, 1.0), now=10.0) == f(60, 1.0)
    assert th.offer(f(60, 2.0), now=10.1) is None
    assert th.offer(f(60, 3.0), now=10.2) is None
    assert th.deadline == 10.25
    assert th.due(10.24) is None
    assert th.due(10.25) == f(60, 3.0)
    assert th.due(10.5) is None
    assert th.offer(f(60, 4.0), now=10.6) == f(60, 4.0)


@given(st.lists(st.floats(0, 1), min_size=1, max_size=100))
def test_never_more_than_one_per_interval(gaps: list[float]) -> None:
    th = FormingThrottle(0.25)
    now, sent, last = 0.0, [], None
    for i, gap in enumerate(gaps):
        now += gap
        deadline = th.deadline
        if deadline is not None and deadline <= now:
            out = th.due(deadline)
            if out is not None:
                sent.append((deadline, out))
        candle = f(60, float(i + 1))
        last = candle
        out = th.offer(candle, now)
        if out is not None:
            sent.append((now, out))
    deadline = th.deadline
    if deadline is not None:
        out = th.due(deadline)
        assert out is not None
        sent.append((deadline, out))
    times = [t for t, _ in sent]
    assert all(b - a >= 0.25 - 1e-9 for a, b in itertools.pairwise(times))
    assert sent[-1][1] == last  # the latest is never swallowed
