"""The trade_canvas world reads (docs/http.md) through the running daemon: ``/api/frame/live``, ``/api/frame/at_time``,
``/api/delta/poll`` and ``/api/factor/health``, as compositions of the factor slices and draw deltas."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from actors.projector import Projector
from protocol.candle import Candle
from protocol.series import SeriesId
from tests.serving.harness import S1, Daemon, daemon
from tests.serving.test_factors import PRICES, SMALL, get, ingest_price, seed_example

FRAME_KEYS = {"schema_version", "series_id", "time", "factor_slices", "draw_state"}
HEALTH_KEYS = {
    "series_id",
    "timeframe_seconds",
    "store_head_time",
    "factor_head_time",
    "overlay_head_time",
    "factor_delay_seconds",
    "factor_delay_candles",
    "overlay_delay_seconds",
    "overlay_delay_candles",
    "max_delay_seconds",
    "max_delay_candles",
    "status",
    "status_reason",
}


def projector(d: Daemon) -> Projector:
    services = d.running.services
    assert services is not None
    return services.projector


@asynccontextmanager
async def unprojected(d: Daemon, t: int, price: float = 1.0) -> AsyncIterator[None]:
    """A candle at ``t`` stored while the projector is held (as by a long rebuild): the log's head is ahead of
    the projections until the block ends and the projector catches up."""
    p = projector(d)
    async with p._lock:
        d.running.store.log.append({SeriesId.parse(S1): [Candle(t, price, price, price, price, 1.0)]})
        yield
    await p.sync()


async def test_live_frame_is_the_slices_and_the_draw_state_at_the_head(tmp_path: Path) -> None:
    async with daemon(tmp_path, **SMALL) as d:
        await seed_example(d)
        status, frame = await get(d, "/api/frame/live", series_id=S1)
        assert status == 200
        assert set(frame) == FRAME_KEYS
        assert (frame["schema_version"], frame["series_id"]) == (1, S1)
        assert frame["time"] == {"at_time": 780, "aligned_time": 780, "candle_id": f"{S1}:780"}
        _, slices = await get(d, "/api/factor/slices", series_id=S1, at_time=780)
        _, draw = await get(d, "/api/draw/delta", series_id=S1, cursor_version_id=0, at_time=780)
        assert frame["factor_slices"] == slices
        assert frame["draw_state"] == draw
        pens = frame["factor_slices"]["snapshots"]["pen"]["history"]["confirmed"]
        assert [(p["start_time"], p["end_time"]) for p in pens] == [(180, 300), (300, 420), (420, 540)]
        assert "pen.confirmed" in frame["draw_state"]["active_ids"]

        # window_candles reaches back that many candles from the aligned one: 3 -> events visible at 660..780.
        _, narrow = await get(d, "/api/frame/live", series_id=S1, window_candles=3)
        pens = narrow["factor_slices"]["snapshots"]["pen"]["history"]["confirmed"]
        assert [p["visible_time"] for p in pens] == [660, 780]
        _, narrow_slices = await get(d, "/api/factor/slices", series_id=S1, at_time=780, window_candles=3)
        assert narrow["factor_slices"] == narrow_slices
        for window in (1, 5000):
            status, body = await get(d, "/api/frame/live", series_id=S1, window_candles=window)
            assert (status, body["time"]["aligned_time"]) == (200, 780)


async def test_live_frame_stays_on_the_newest_projected_candle_while_the_head_is_projected(tmp_path: Path) -> None:
    async with daemon(tmp_path, **SMALL) as d:
        for i, price in enumerate(PRICES[:-1]):
            await ingest_price(d, 60 * (i + 1), float(price))
        async with unprojected(d, 780, float(PRICES[-1])):
            status, frame = await get(d, "/api/frame/live", series_id=S1)
            assert status == 200
            assert frame["time"] == {"at_time": 780, "aligned_time": 720, "candle_id": f"{S1}:720"}
            assert (frame["factor_slices"]["at_time"], frame["draw_state"]["to_candle_time"]) == (720, 720)
            # The same candle asked for by time is not projected yet: 409, as the factor reads answer.
            status, body = await get(d, "/api/frame/at_time", series_id=S1, at_time=780)
            assert (status, body) == (409, {"code": "ledger_out_of_sync", "detail": "ledger_out_of_sync:factor"})
            status, _ = await get(d, "/api/factor/slices", series_id=S1)
            assert status == 409  # a read at the head, for contrast
            status, polled = await get(d, "/api/delta/poll", series_id=S1, after_id=0)
            assert (status, polled["records"][0]["to_candle_time"]) == (200, 720)
            status, health = await get(d, "/api/factor/health", series_id=S1)
            assert status == 200
            assert {k: health[k] for k in ("store_head_time", "factor_head_time", "overlay_head_time")} == {
                "store_head_time": 780,
                "factor_head_time": 720,
                "overlay_head_time": 720,
            }
            assert (health["max_delay_seconds"], health["max_delay_candles"]) == (60, 1)
            assert (health["status"], health["status_reason"]) == ("yellow", "lagging_one_candle")
        status, frame = await get(d, "/api/frame/live", series_id=S1)
        assert (status, frame["time"]["aligned_time"]) == (200, 780)
        _, health = await get(d, "/api/factor/health", series_id=S1)
        assert (health["status"], health["status_reason"], health["max_delay_candles"]) == ("green", "up_to_date", 0)


async def test_frame_at_time_picks_the_newest_stored_candle_at_or_before_it(tmp_path: Path) -> None:
    async with daemon(tmp_path, **SMALL) as d:
        await seed_example(d)
        await ingest_price(d, 960, 1.0)  # a hole at 840 and 900
        expected = {629: 600, 600: 600, 930: 780, 960: 960, 10**9: 960}
        for at_time, aligned in expected.items():
            status, frame = await get(d, "/api/frame/at_time", series_id=S1, at_time=at_time)
            assert status == 200, (at_time, frame)
            assert set(frame) == FRAME_KEYS
            assert frame["time"] == {"at_time": at_time, "aligned_time": aligned, "candle_id": f"{S1}:{aligned}"}
            _, slices = await get(d, "/api/factor/slices", series_id=S1, at_time=aligned)
            _, draw = await get(d, "/api/draw/delta", series_id=S1, cursor_version_id=0, at_time=aligned)
            assert (frame["factor_slices"], frame["draw_state"]) == (slices, draw)
        # docs/factors.md's example: a slice at 600 sees only the pen confirmed by then.
        _, frame = await get(d, "/api/frame/at_time", series_id=S1, at_time=629)
        pens = frame["factor_slices"]["snapshots"]["pen"]["history"]["confirmed"]
        assert [p["end_time"] for p in pens] == [300]
        for series, at_time in ((S1, 59), ("binance:spot:ETH/USDT:1m", 600)):
            status, body = await get(d, "/api/frame/at_time", series_id=series, at_time=at_time)
            assert (status, body["code"]) == (404, "no_data")


async def test_nothing_stored_is_404_no_data_except_for_a_poll(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d:
        for path in ("/api/frame/live", "/api/factor/health"):
            status, body = await get(d, path, series_id=S1)
            assert (status, body["code"]) == (404, "no_data")
            assert S1 in body["detail"]
        status, body = await get(d, "/api/delta/poll", series_id=S1, after_id=7)
        assert (status, body) == (200, {"schema_version": 1, "series_id": S1, "records": [], "next_cursor": {"id": 7}})


async def test_delta_poll_gives_one_record_when_the_draw_cursor_moves_and_none_when_it_does_not(
    tmp_path: Path,
) -> None:
    async with daemon(tmp_path, **SMALL) as d:
        for i, price in enumerate(PRICES[:9]):  # up to 540: the first pen is confirmed
            await ingest_price(d, 60 * (i + 1), float(price))
        status, first = await get(d, "/api/delta/poll", series_id=S1, after_id=0, limit=2000)
        assert status == 200
        assert (first["schema_version"], first["series_id"]) == (1, S1)
        [record] = first["records"]
        assert set(record) == {"id", "series_id", "to_candle_id", "to_candle_time", "draw_delta", "factor_slices"}
        _, draw = await get(d, "/api/draw/delta", series_id=S1, cursor_version_id=0, at_time=540)
        _, slices = await get(d, "/api/factor/slices", series_id=S1, at_time=540)
        assert record["id"] == draw["next_cursor"]["version_id"] > 0
        assert first["next_cursor"] == {"id": record["id"]}
        assert (record["series_id"], record["to_candle_id"], record["to_candle_time"]) == (S1, f"{S1}:540", 540)
        assert (record["draw_delta"], record["factor_slices"]) == (draw, slices)

        # Nothing new: no record, the cursor stays (also for a cursor from the future).
        cursor = record["id"]
        for after in (cursor, 10**12):
            status, again = await get(d, "/api/delta/poll", series_id=S1, after_id=after)
            assert (status, again["records"], again["next_cursor"]) == (200, [], {"id": after})

        for i, price in enumerate(PRICES[9:], start=10):  # up to 780: two more pens
            await ingest_price(d, 60 * i, float(price))
        _, second = await get(d, "/api/delta/poll", series_id=S1, after_id=cursor, window_candles=2000)
        [record] = second["records"]
        assert record["id"] > cursor
        assert record["to_candle_time"] == 780
        assert record["factor_slices"]["at_time"] == 780
        assert all(v["version_id"] > cursor for v in record["draw_delta"]["instruction_catalog_patch"])
        _, draw = await get(d, "/api/draw/delta", series_id=S1, cursor_version_id=cursor)
        assert record["draw_delta"] == draw
        assert second["next_cursor"] == {"id": record["id"]}


async def test_factor_health_of_an_up_to_date_series(tmp_path: Path) -> None:
    async with daemon(tmp_path, **SMALL) as d:
        await seed_example(d)
        status, health = await get(d, "/api/factor/health", series_id=S1)
    assert status == 200
    assert set(health) == HEALTH_KEYS
    assert health == {
        "series_id": S1,
        "timeframe_seconds": 60,
        "store_head_time": 780,
        "factor_head_time": 780,
        "overlay_head_time": 780,
        "factor_delay_seconds": 0,
        "factor_delay_candles": 0,
        "overlay_delay_seconds": 0,
        "overlay_delay_candles": 0,
        "max_delay_seconds": 0,
        "max_delay_candles": 0,
        "status": "green",
        "status_reason": "up_to_date",
    }


@pytest.mark.parametrize(
    ("path", "params", "detail"),
    [
        ("/api/frame/live", {}, "missing series_id"),
        ("/api/frame/live", {"series_id": "nope"}, "invalid series_id"),
        ("/api/frame/live", {"series_id": S1, "window_candles": 0}, "invalid window_candles"),
        ("/api/frame/live", {"series_id": S1, "window_candles": 5001}, "invalid window_candles"),
        ("/api/frame/at_time", {"series_id": S1}, "missing at_time"),
        ("/api/frame/at_time", {"series_id": S1, "at_time": "x"}, "invalid at_time"),
        ("/api/frame/at_time", {"series_id": S1, "at_time": -1}, "invalid at_time"),
        ("/api/frame/at_time", {"series_id": S1, "at_time": 60, "window_candles": 0}, "invalid window_candles"),
        ("/api/delta/poll", {"after_id": 0}, "missing series_id"),
        ("/api/delta/poll", {"series_id": S1, "after_id": -1}, "invalid after_id"),
        ("/api/delta/poll", {"series_id": S1, "after_id": "x"}, "invalid after_id"),
        ("/api/delta/poll", {"series_id": S1, "limit": 0}, "invalid limit"),
        ("/api/delta/poll", {"series_id": S1, "limit": 5001}, "invalid limit"),
        ("/api/delta/poll", {"series_id": S1, "window_candles": 5001}, "invalid window_candles"),
        ("/api/frame/at_time", {"series_id": S1, "at_time": 2**63}, f"invalid at_time: expected 0..{2**63 - 1}"),
        ("/api/delta/poll", {"series_id": S1, "after_id": 2**70}, f"invalid after_id: expected 0..{2**63 - 1}"),
        ("/api/draw/delta", {"series_id": S1, "cursor_version_id": 2**64}, "invalid cursor_version_id"),
        ("/api/factor/health", {}, "missing series_id"),
        ("/api/factor/health", {"series_id": "binance:spot:BTC/USDT:7m"}, "invalid series_id"),
    ],
)
async def test_bad_parameters_are_422_with_the_spec_body(
    tmp_path: Path, path: str, params: dict[str, Any], detail: str
) -> None:
    async with daemon(tmp_path) as d:
        status, body = await get(d, path, **params)
    assert status == 422
    assert set(body) == {"code", "detail"}
    assert body["code"] == "bad_request"
    assert body["detail"].startswith(detail)
