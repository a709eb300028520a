"""Sans-IO upstream rules: the control-message bucket, the stream plan, holes after reconnects."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.timeframes import TIMEFRAMES
from protocol.upstream import (
    CONTROL_RATE,
    MAX_PARAMS_PER_MESSAGE,
    MAX_STREAMS_PER_CONNECTION,
    ControlMessage,
    Hole,
    HoleTracker,
    StreamPlan,
    TokenBucket,
    coalesce,
    control_bucket,
)

M1 = TIMEFRAMES["1m"]


def test_token_bucket_paces_control_messages() -> None:
    bucket = control_bucket("spot")
    now, sent = 0.0, []
    while now < 10.0:
        wait = bucket.delay(now)
        now += wait
        if now >= 10.0:
            break
        bucket.take(now)
        sent.append(now)
    assert len(sent) == 40  # 4 a second: 80% of Binance's 5
    assert all(b - a >= 0.25 - 1e-9 for a, b in itertools.pairwise(sent))
    with pytest.raises(ValueError, match="no token"):
        bucket.take(sent[-1])  # a second message at the same instant
    with pytest.raises(ValueError, match="no token"):
        TokenBucket(rate=1.0, burst=1, tokens=0.0).take(0.0)


@given(st.lists(st.floats(0, 0.5), min_size=1, max_size=200), st.sampled_from(["spot", "futures"]))
def test_token_bucket_never_exceeds_rate_in_any_second(gaps: list[float], market: str) -> None:
    rate = CONTROL_RATE[market]
    bucket = control_bucket(market)  # type: ignore[arg-type]
    now, sent = 0.0, []
    for gap in gaps:
        now += gap
        now += bucket.delay(now)
        bucket.take(now)
        sent.append(now)
    for i, t in enumerate(sent):
        in_window = [s for s in sent[i:] if s < t + 1.0]
        assert len(in_window) <= rate  # never over Binance's limit in any one-second window


def streams(n: int, start: int = 0) -> list[str]:
    return [f"s{i:05d}usdt@kline_1m" for i in range(start, start + n)]


def test_plan_fills_connections_up_to_the_limit_and_batches_subscribes() -> None:
    plan = StreamPlan()
    messages = plan.add(streams(2500))
    conns = plan.connections()
    assert sorted(len(s) for s in conns.values()) == [452, MAX_STREAMS_PER_CONNECTION, MAX_STREAMS_PER_CONNECTION]
    assert all(len(m.params) <= MAX_PARAMS_PER_MESSAGE for m in messages)
    assert sum(len(m.params) for m in messages) == 2500
    assert {m.method for m in messages} == {"SUBSCRIBE"}
    assert messages[0].payload(7) == {"method": "SUBSCRIBE", "params": list(messages[0].params), "id": 7}


def test_adding_a_stream_touches_one_open_connection_only() -> None:
    plan = StreamPlan()
    plan.add(streams(10))
    (message,) = plan.add(["newusdt@kline_1m"])
    assert message.params == ("newusdt@kline_1m",)
    assert message.connection == plan.connection_of(streams(1)[0])  # joins the open connection
    assert plan.add(["newusdt@kline_1m"]) == []  # already there


def test_remove_unsubscribes_and_frees_room() -> None:
    plan = StreamPlan(limit=3)
    plan.add(streams(5))
    (message,) = plan.remove([streams(1)[0], "never@kline_1m"])
    assert (message.method, message.params) == ("UNSUBSCRIBE", (streams(1)[0],))
    (refill,) = plan.add(["fresh@kline_1m"])
    assert refill.connection == message.connection  # the freed slot is reused
    plan.remove(streams(2, start=3))
    assert len(plan.connections()) == 1  # an empty connection is dropped


def test_resubscribe_after_reconnect_lists_that_connection() -> None:
    plan = StreamPlan(limit=2)
    plan.add(streams(3))
    (msg,) = plan.resubscribe(0)
    assert set(msg.params) == set(plan.connections()[0])
    assert plan.resubscribe(99) == []


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 60)), max_size=200))
def test_plan_invariants(ops: list[tuple[bool, int]]) -> None:
    plan = StreamPlan(limit=7)
    wanted: set[str] = set()
    for add, i in ops:
        name = f"x{i}@kline_1m"
        if add:
            plan.add([name])
            wanted.add(name)
        else:
            plan.remove([name])
            wanted.discard(name)
        conns = plan.connections()
        assert set().union(*conns.values()) == wanted if conns else wanted == set()
        assert all(0 < len(s) <= 7 for s in conns.values())
        assert sum(len(s) for s in conns.values()) == len(wanted)  # no stream on two connections


def test_hole_after_reconnect() -> None:
    tracker = HoleTracker(M1, last_closed=600)
    assert tracker.observe_closed(660) is None
    hole = tracker.observe_closed(900)
    assert hole == Hole(expected_next_time=720, actual_time=900)
    assert hole.missing(M1) == 3  # 720, 780, 840
    assert tracker.observe_closed(840) is None  # an older candle (backfill) changes nothing
    assert tracker.last_closed == 900


def test_first_candle_of_a_new_series_is_no_hole() -> None:
    assert HoleTracker(M1).observe_closed(600) is None
    month = HoleTracker(TIMEFRAMES["1M"], last_closed=1704067200)  # 2024-01-01
    hole = month.observe_closed(1711929600)  # 2024-04-01
    assert hole == Hole(1706745600, 1711929600)
    assert hole.missing(TIMEFRAMES["1M"]) == 2  # February, March


def test_coalesce_merges_runs_in_order_and_respects_the_param_cap() -> None:
    sub = [ControlMessage(0, "SUBSCRIBE", (f"s{i}@kline_1m",)) for i in range(450)]
    unsub = ControlMessage(0, "UNSUBSCRIBE", ("s1@kline_1m",))
    other = ControlMessage(1, "SUBSCRIBE", ("x@kline_1m",))
    merged = coalesce([*sub[:3], unsub, *sub[3:], other])
    assert [(m.connection, m.method, len(m.params)) for m in merged] == [
        (0, "SUBSCRIBE", 3),
        (0, "UNSUBSCRIBE", 1),  # order across methods kept: never subscribe after a later unsubscribe
        (0, "SUBSCRIBE", MAX_PARAMS_PER_MESSAGE),
        (0, "SUBSCRIBE", MAX_PARAMS_PER_MESSAGE),
        (0, "SUBSCRIBE", 47),
        (1, "SUBSCRIBE", 1),
    ]
    assert [p for m in merged if m.method == "SUBSCRIBE" and m.connection == 0 for p in m.params] == [
        p for m in sub for p in m.params
    ]
