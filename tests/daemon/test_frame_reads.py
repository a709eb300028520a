"""The pure compositions of the world reads (:mod:`daemon.frame_reads`): frames and delta polls."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.factor_reads import OutOfSyncError
from daemon.frame_reads import compose_frame, compose_poll

SID = "binance:spot:BTC/USDT:1m"


def slices_at(t: int) -> dict[str, Any]:
    return {"schema_version": 1, "series_id": SID, "at_time": t, "candle_id": f"{SID}:{t}", "factors": []}


def draw_at(t: int, cursor: int) -> dict[str, Any]:
    cursor_at = {"version_id": cursor, "point_time": None}
    return {"to_candle_id": f"{SID}:{t}", "to_candle_time": t, "next_cursor": cursor_at}


def test_a_frame_names_its_request_time_and_its_candle() -> None:
    frame = compose_frame(SID, 125, 120, slices_at(120), draw_at(120, 4))
    assert frame == {
        "schema_version": 1,
        "series_id": SID,
        "time": {"at_time": 125, "aligned_time": 120, "candle_id": f"{SID}:120"},
        "factor_slices": slices_at(120),
        "draw_state": draw_at(120, 4),
    }


@pytest.mark.parametrize(("slices_t", "draw_t"), [(60, 120), (120, 60)])
def test_slices_and_draw_state_of_different_candles_are_out_of_sync(slices_t: int, draw_t: int) -> None:
    with pytest.raises(OutOfSyncError, match="ledger_out_of_sync:factor"):
        compose_frame(SID, 120, 120, slices_at(slices_t), draw_at(draw_t, 4))


def test_a_poll_has_one_record_only_when_the_cursor_moved_past_after_id() -> None:
    empty = {"schema_version": 1, "series_id": SID, "records": [], "next_cursor": {"id": 4}}
    assert compose_poll(SID, 4, None, None) == empty
    assert compose_poll(SID, 4, draw_at(120, 4), slices_at(120)) == empty
    moved = compose_poll(SID, 4, draw_at(120, 9), slices_at(120))
    assert moved["next_cursor"] == {"id": 9}
    assert moved["records"] == [
        {
            "id": 9,
            "series_id": SID,
            "to_candle_id": f"{SID}:120",
            "to_candle_time": 120,
            "draw_delta": draw_at(120, 9),
            "factor_slices": slices_at(120),
        }
    ]
