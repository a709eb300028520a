"""The WebSocket message codec: the exact wire forms of docs/protocol.md, round trips, and clear decode errors."""

from __future__ import annotations

import contextlib
import math

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.candle import Candle
from protocol.codec import (
    CandleClosed,
    CandleForming,
    CandlesBatch,
    CodecError,
    ErrorMessage,
    Gap,
    OutMessage,
    SystemEvent,
    candle_from_wire,
    candle_to_wire,
    decode,
    encode,
)

S = "binance:spot:BTC/USDT:1m"
C = Candle(1700000040, 1.5, 2.0, 1.0, 1.75, 12.25)
C_WIRE = {"candle_time": 1700000040, "open": 1.5, "high": 2.0, "low": 1.0, "close": 1.75, "volume": 12.25}


@pytest.mark.parametrize(
    ("msg", "wire"),
    [
        (CandleClosed(S, C), {"type": "candle_closed", "series_id": S, "candle": C_WIRE}),
        (CandleForming(S, C), {"type": "candle_forming", "series_id": S, "candle": C_WIRE}),
        (
            CandlesBatch(S, (C, C._replace(candle_time=1700000100))),
            {
                "type": "candles_batch",
                "series_id": S,
                "candles": [C_WIRE, {**C_WIRE, "candle_time": 1700000100}],
            },
        ),
        (
            Gap(S, 1700000100, 1700000280),
            {
                "type": "gap",
                "series_id": S,
                "expected_next_time": 1700000100,
                "actual_time": 1700000280,
            },
        ),
        (
            SystemEvent(S, "factor.rebuild", "rebuilt", {"series_id": S}),
            {
                "type": "system",
                "series_id": S,
                "event": "factor.rebuild",
                "message": "rebuilt",
                "data": {"series_id": S},
            },
        ),
        (
            ErrorMessage("bad_request", "invalid json"),
            {"type": "error", "code": "bad_request", "message": "invalid json"},
        ),
        (
            ErrorMessage("capacity", "no room", S),
            {
                "type": "error",
                "code": "capacity",
                "message": "no room",
                "series_id": S,
            },
        ),
    ],
)
def test_exact_wire_form_and_round_trip(msg: OutMessage, wire: dict[str, object]) -> None:
    data = encode(msg)
    assert orjson.loads(data) == wire
    assert next(iter(orjson.loads(data))) == "type"
    assert decode(data) == msg
    assert decode(data.decode()) == msg


def test_synthetic_appears_only_when_true() -> None:
    assert "synthetic" not in candle_to_wire(C)
    assert candle_to_wire(C._replace(synthetic=True))["synthetic"] is True
    assert candle_from_wire({**C_WIRE, "synthetic": True}).synthetic is True
    assert candle_from_wire(C_WIRE).synthetic is False


def test_integer_prices_become_floats() -> None:
    c = candle_from_wire({"candle_time": 60, "open": 1, "high": 2, "low": 1, "close": 2, "volume": 0})
    assert c == Candle(60, 1.0, 2.0, 1.0, 2.0, 0.0)
    assert all(type(x) is float for x in c[1:6])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "invalid json"),
        (b"[1]", "message must be a JSON object"),
        (b'{"series_id": "s"}', "missing message type"),
        (b'{"type": "candle_closd"}', "unknown message type: candle_closd"),
        (b'{"type": "gap", "series_id": "s"}', r"required field missing @ \$.expected_next_time"),
        (
            b'{"type": "gap", "series_id": "s", "expected_next_time": "5", "actual_time": 1}',
            "expected an integer, got '5'",
        ),
        (b'{"type": "error", "code": 5, "message": "m"}', r"expected a string, got 5 @ \$.code"),
        (b'{"type": "candles_batch", "series_id": "s", "candles": {}}', "candles must be a list"),
    ],
)
def test_decode_errors_name_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode(data)


@pytest.mark.parametrize(
    ("candle", "message"),
    [
        ([], "candle must be an object"),
        ({k: v for k, v in C_WIRE.items() if k != "low"}, "candle is missing 'low'"),
        ({**C_WIRE, "candle_time": 60.0}, "candle_time must be an integer"),
        ({**C_WIRE, "candle_time": True}, "candle_time must be an integer"),
        ({**C_WIRE, "open": "1.5"}, "candle open must be a number"),
        ({**C_WIRE, "volume": False}, "candle volume must be a number"),
        ({**C_WIRE, "synthetic": 1}, "synthetic must be a boolean"),
        ({**C_WIRE, "high": 0.5}, "invalid candle: high 0.5"),
        ({**C_WIRE, "volume": -1}, "invalid candle: volume must be >= 0"),
    ],
)
def test_candle_from_wire_errors(candle: object, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        candle_from_wire(candle)
    with pytest.raises(CodecError, match=message):
        decode(orjson.dumps({"type": "candle_closed", "series_id": S, "candle": candle}))


finite = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)


@st.composite
def candles(draw: st.DrawFn) -> Candle:
    o, c, extra_h, extra_l = draw(finite), draw(finite), draw(finite), draw(finite)
    high = max(o, c) + extra_h
    low = min(o, c) - extra_l
    if not math.isfinite(high) or not math.isfinite(low):
        high, low = max(o, c), min(o, c)
    return Candle(draw(st.integers(0, 2**40)) * 60, o, high, low, c, draw(finite), draw(st.booleans()))


@given(st.lists(candles(), max_size=30), st.sampled_from([S, "binance:futures:ETH/USDT:5m"]))
def test_batches_round_trip_bit_for_bit(batch: list[Candle], series_id: str) -> None:
    msg = CandlesBatch(series_id, tuple(batch))
    back = decode(encode(msg))
    assert back == msg
    assert isinstance(back, CandlesBatch)
    for a, b in zip(back.candles, batch, strict=True):
        assert [x.hex() for x in a[1:6]] == [float(x).hex() for x in b[1:6]]


@given(candles())
def test_single_messages_round_trip(c: Candle) -> None:
    for msg in (CandleClosed(S, c), CandleForming(S, c)):
        assert decode(encode(msg)) == msg


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_decode_never_raises_anything_but_codec_error(data: bytes | str) -> None:
    with contextlib.suppress(CodecError):
        decode(data)
