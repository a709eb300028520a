"""The sans-IO /ws/market protocol: client message parsing and the one gate."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.candle import Candle
from protocol.series import SeriesId
from protocol.timeframes import TIMEFRAMES
from protocol.ws_market import (
    BadRequest,
    CandlesPiece,
    GapPiece,
    Subscribe,
    Unsubscribe,
    gate,
    parse_client_message,
    render,
)

M1 = TIMEFRAMES["1m"]
S = "binance:spot:BTC/USDT:1m"


def c(t: int) -> Candle:
    return Candle(t, 1.0, 2.0, 0.5, 1.5, 3.0)


def test_subscribe_and_unsubscribe_parse() -> None:
    assert parse_client_message(f'{{"type":"subscribe","series_id":"{S}","since":120,"supports_batch":true}}') == (
        Subscribe(SeriesId.parse(S), 120, True)
    )
    assert parse_client_message(f'{{"type":"subscribe","series_id":"{S}"}}') == Subscribe(
        SeriesId.parse(S), None, False
    )
    assert parse_client_message(f'{{"type":"subscribe","series_id":"{S}","since":0}}') == Subscribe(
        SeriesId.parse(S), None, False
    )
    assert parse_client_message(f'{{"type":"unsubscribe","series_id":"{S}"}}'.encode()) == Unsubscribe(
        SeriesId.parse(S)
    )


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("{", "invalid json"),
        ("null", "invalid message envelope"),
        ('{"series_id": "x"}', "missing message type"),
        ('{"type": ""}', "missing message type"),
        ('{"type": "SUBSCRIBE"}', "unknown message type: SUBSCRIBE"),
        ('{"type": "subscribe", "series_id": null}', "missing series_id"),
        ('{"type": "subscribe", "series_id": "binance:spot:btc/usdt:1m"}', "invalid series_id"),
        (f'{{"type": "subscribe", "series_id": "{S}", "since": true}}', "invalid since"),
        (f'{{"type": "subscribe", "series_id": "{S}", "supports_batch": 1}}', "invalid supports_batch"),
        ("x" * 70_000, "message too large"),
        ("é" * 40_000, "message too large"),  # 40k characters, 80 KB on the wire
    ],
)
def test_bad_requests_get_spec_messages(frame: str, message: str) -> None:
    result = parse_client_message(frame)
    assert isinstance(result, BadRequest)
    assert result.message.startswith(message)


def test_gate_drops_old_clamps_ahead_and_reports_holes() -> None:
    candles = [c(t) for t in (60, 120, 180, 300, 360, 420)]
    pieces, last = gate(M1, 60, candles, closed_through=360)
    assert pieces == [CandlesPiece((c(120), c(180))), GapPiece(240, 300), CandlesPiece((c(300), c(360)))]
    assert last == 360
    assert gate(M1, None, [c(600)], closed_through=600) == ([CandlesPiece((c(600),))], 600)  # no cursor: no gap before


def test_render_batches_catchup_but_sends_a_single_live_candle_as_closed() -> None:
    pieces = [CandlesPiece((c(60),))]
    (catchup,) = render(S, pieces, batch=True, live=False)
    (live,) = render(S, pieces, batch=True, live=True)
    assert orjson.loads(catchup)["type"] == "candles_batch"
    assert orjson.loads(live)["type"] == "candle_closed"
    assert [orjson.loads(f)["type"] for f in render(S, [CandlesPiece((c(60), c(120)))], batch=False, live=True)] == [
        "candle_closed",
        "candle_closed",
    ]


@st.composite
def scenario(draw: st.DrawFn) -> tuple[list[int], list[list[int]], int | None, int]:
    """A log (minute indexes, some missing), the order it is published in, a since, and when catchup reads."""
    present = sorted(draw(st.sets(st.integers(1, 40), min_size=1, max_size=30)))
    chunks: list[list[int]] = []
    rest = list(present)
    while rest:
        k = draw(st.integers(1, 4))
        chunks.append(rest[:k])
        rest = rest[k:]
    since = draw(st.one_of(st.none(), st.integers(0, 45)))
    read_after = draw(st.integers(0, len(chunks)))
    return present, chunks, since, read_after


@settings(max_examples=300, deadline=None)
@given(scenario())
def test_any_interleaving_of_catchup_and_live_sends_each_candle_once_in_order_with_gaps_at_holes(
    case: tuple[list[int], list[list[int]], int | None, int],
) -> None:
    """The hub's algorithm on the pure gate: register, publishes pend until the catchup read (at any point
    in the publish sequence) has been sent, then drain them through the same gate."""
    present, chunks, since, read_after = case
    cursor = since * 60 if since else None
    sent: list[int] = []
    gaps: list[tuple[int, int]] = []
    pending: list[list[int]] = []

    def send(times: list[int]) -> None:
        nonlocal cursor
        pieces, cursor = gate(M1, cursor, [c(t) for t in times], closed_through=10**9)
        for p in pieces:
            if isinstance(p, GapPiece):
                gaps.append((p.expected_next_time, p.actual_time))
            else:
                sent.extend(x.candle_time for x in p.candles)

    log: list[int] = []
    for i, chunk in enumerate(chunks):
        if i == read_after:  # the catchup reads the log as it is now; what was published already pends
            send(sorted(log))
            for p in pending:
                send(p)
            pending.clear()
            read_after = -1
        log.extend(60 * m for m in chunk)
        if read_after != -1:
            pending.append([60 * m for m in chunk])
        else:
            send([60 * m for m in chunk])
    if read_after != -1:
        send(sorted(log))
        for p in pending:
            send(p)
    expected = [t for t in (60 * m for m in present) if not since or t > since * 60]
    assert sent == expected  # each once, ascending
    # A gap exactly where the times jump, including from the client's since to the first candle.
    previous = since * 60 if since else None
    want_gaps = []
    for t in expected:
        if previous is not None and t != previous + 60:
            want_gaps.append((previous + 60, t))
        previous = t
    assert gaps == want_gaps
