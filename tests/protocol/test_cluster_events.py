"""Log events through a stream message and back: exactly the same event, whatever the floats."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.candle import Candle
from protocol.cluster_events import ClusterEventError, decode_event, encode_event
from protocol.logrecords import EventKind, LogEvent

finite = st.floats(allow_nan=False, allow_infinity=False)
candles = st.builds(Candle, st.integers(0, 2**40), finite, finite, finite, finite, finite, st.booleans())


@given(st.sampled_from(list(EventKind)), st.text(min_size=1, max_size=40), candles, st.none() | candles, st.integers(1))
def test_an_event_round_trips_exactly(
    kind: EventKind, series_id: str, candle: Candle, previous: Candle | None, seq: int
) -> None:
    event = decode_event(seq, encode_event(kind, series_id, candle, previous))
    assert event == LogEvent(seq, kind, series_id, candle, previous)
    assert all(type(x) is type(y) for x, y in zip(event.candle, candle, strict=True))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"k":"candle_closed","s":"x"}',
        b'{"k":"candle_deleted","s":"x","c":[60,1,1,1,1,1,false]}',
        b'{"k":"candle_closed","s":1,"c":[60,1,1,1,1,1,false]}',
        b'{"k":"candle_closed","s":"x","c":[60.5,1,1,1,1,1,false]}',
        b'{"k":"candle_closed","s":"x","c":[60,1,1,1,1,1]}',
    ],
)
def test_anything_else_is_refused_with_its_sequence(data: bytes) -> None:
    with pytest.raises(ClusterEventError, match="stream message 7"):
        decode_event(7, data)
