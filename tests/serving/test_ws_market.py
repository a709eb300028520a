"""Black box: docs/protocol.md over a real WebSocket on loopback against the running daemon.

Candles are seeded through ``POST /api/market/ingest/candle_closed`` (the live pipeline) or the debug batch
ingest (stored, not published); the series is 1m and times are in seconds.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import orjson
import trio
import trio.lowlevel

from daemon.ws_endpoint import DirectSend
from protocol.wsframe import text_frame
from tests.serving.harness import S1, SENTINEL_REPLY, batch, closed, daemon, gap

S2 = "binance:spot:ETH/USDT:1m"


async def test_1_catchup_after_since_then_live(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d, d.client() as c:
        for t in (120, 180, 240):
            await d.ingest(t)
        await c.subscribe(since=120)
        assert await c.frames_until_quiet() == [closed(180), closed(240)]
        await d.ingest(300)
        assert await c.frames_until_quiet() == [closed(300)]


async def test_2_batch_catchup_single_live_is_closed(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d, d.client() as c:
        for t in (120, 180, 240):
            await d.ingest(t)
        await c.subscribe(since=120, batch=True)
        assert await c.frames_until_quiet() == [batch(180, 240)]
        await d.ingest(300)
        assert await c.frames_until_quiet() == [closed(300)]


async def test_3_hole_before_the_catchup_is_a_gap_first(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d, d.client() as c:
        for t in (120, 240):
            await d.ingest(t)
        await c.subscribe(since=120, batch=True)
        assert await c.frames_until_quiet() == [gap(180, 240), batch(240)]


async def test_4_live_hole_is_a_gap_and_old_or_repeated_candles_are_dropped(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d, d.client() as c:
        await d.ingest(120)
        await c.subscribe(since=120)
        assert await c.frames_until_quiet() == []
        await d.ingest(240)
        assert await c.frames_until_quiet() == [gap(180, 240), closed(240)]
        await d.ingest(240)
        await d.ingest(180)
        assert await c.frames_until_quiet() == []


async def test_5_holes_inside_a_catchup_split_the_batch(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d, d.client() as c:
        await d.ingest_many([120, 180, 300, 360])
        await c.subscribe(since=0, batch=True)
        assert await c.frames_until_quiet() == [batch(120, 180), gap(240, 300), batch(300, 360)]


async def test_6_empty_series_sends_nothing(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d, d.client() as c:
        await c.subscribe(since=None)
        assert await c.frames_until_quiet() == []


async def test_8_forming_after_the_cursor_only_and_never_moves_it(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d, d.client() as c:
        await d.ingest_many([180, 240])
        await c.subscribe(since=120)
        assert await c.frames_until_quiet() == [closed(180), closed(240)]
        await d.forming(300)
        frames = await c.frames_until_quiet()
        assert [(f["type"], f["candle"]["candle_time"]) for f in frames] == [("candle_forming", 300)]
        await d.ingest(300)
        assert await c.frames_until_quiet() == [closed(300)]
        d.hub._throttles.clear()  # a fresh throttle window: the next forming is not held back
        await d.forming(240)
        assert await c.frames_until_quiet() == []


async def test_9_unsubscribe_stops_frames_and_disconnect_releases_refcounts(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d:
        async with d.client() as c:
            await c.subscribe(since=None)
            await c.subscribe(since=None, series=S2)
            await c.frames_until_quiet()
            await c.send({"type": "unsubscribe", "series_id": S1})
            await c.send({"type": "unsubscribe", "series_id": "binance:spot:XRP/USDT:1m"})  # never subscribed
            await d.ingest(120)
            await d.ingest(120, series=S2)
            assert await c.frames_until_quiet() == [closed(120, series=S2)]
            assert d.hub.stats.subscriptions == 1
        await d.hub.wait_all_closed()
        assert d.hub.stats.subscriptions == 0
        assert d.hub.connection_count == 0


async def test_repeated_subscribe_keeps_the_cursor(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d, d.client() as c:
        await d.ingest_many([120, 180, 240])
        await c.subscribe(since=None)
        assert await c.frames_until_quiet() == [closed(120), closed(180), closed(240)]
        await c.subscribe(since=60)  # max(since, last_sent) = 240: nothing again
        assert await c.frames_until_quiet() == []


async def test_catchup_cut_by_the_limit_is_reported(tmp_path: Path) -> None:
    async with daemon(tmp_path, KLINED_MARKET_WS_CATCHUP_LIMIT="3") as d, d.client() as c:
        await d.ingest_many([60 * i for i in range(1, 11)])
        await c.subscribe(since=60, batch=True)
        assert await c.frames_until_quiet() == [gap(120, 480), batch(480, 540, 600)]


async def test_live_hole_is_healed_from_the_log_before_any_gap(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d, d.client() as c:
        await d.ingest(120)
        await c.subscribe(since=None)
        assert await c.frames_until_quiet() == [closed(120)]
        await d.ingest_many([180])  # stored without a publish (a backfill)
        await d.ingest(240)
        assert await c.frames_until_quiet() == [closed(180), closed(240)]


async def test_multi_candle_publish_is_one_batch_for_batch_clients_only(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d, d.client() as plain, d.client() as batched:
        await plain.subscribe(since=None)
        await batched.subscribe(since=None, batch=True)
        await plain.frames_until_quiet()
        r = await d.http.post(
            "/api/dev/market/ingest/candles_closed_batch",
            json={"series_id": S1, "candles": [closed(t)["candle"] for t in (60, 120, 180)], "publish_ws": True},
        )
        assert r.status_code == 200
        assert await plain.frames_until_quiet() == [closed(60), closed(120), closed(180)]
        assert await batched.frames_until_quiet() == [batch(60, 120, 180)]


async def test_ahead_clamp_never_sends_an_unclosed_period(tmp_path: Path) -> None:
    now = int(time.time())
    current = now // 60 * 60  # the period still forming on the exchange clock
    async with daemon(tmp_path) as d, d.client() as c:
        await d.ingest_many([current - 120, current - 60, current + 60])
        await c.subscribe(since=None)
        frames = await c.frames_until_quiet()
        assert [f["candle"]["candle_time"] for f in frames] == [current - 120, current - 60]


async def test_10_catchup_live_race_is_duplicate_free_and_ordered(tmp_path: Path) -> None:
    rng = random.Random(7)
    async with daemon(tmp_path) as d:
        await d.ingest_many([60 * i for i in range(1, 31)])
        results: dict[int, list[int]] = {}

        async def reader(k: int, since: int | None, batch_mode: bool, started: trio.Event) -> None:
            async with d.client() as c:
                await c.subscribe(since=since, batch=batch_mode)
                started.set()
                seen: list[int] = []
                while not seen or seen[-1] < 60 * 80:
                    frame = await c.recv()
                    if frame["type"] == "candle_closed":
                        seen.append(frame["candle"]["candle_time"])
                    elif frame["type"] == "candles_batch":
                        seen.extend(x["candle_time"] for x in frame["candles"])
                    else:
                        assert frame["type"] == "gap", frame
                results[k] = seen

        async def writer() -> None:
            for i in range(31, 81):
                await d.ingest(60 * i)
                await trio.lowlevel.checkpoint()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                for k in range(50):
                    started = trio.Event()
                    since = rng.choice([None, 0, rng.randrange(0, 60 * 40, 60)])
                    nursery.start_soon(reader, k, since, rng.random() < 0.5, started)
                    await started.wait()
        for k, seen in results.items():
            assert seen == sorted(set(seen)), f"client {k}: duplicate or out of order"
            assert seen[-1] == 60 * 80
            assert seen == list(range(seen[0], 60 * 81, 60)), f"client {k}: a candle is missing"


async def test_frames_under_hypercorn_take_the_direct_path(tmp_path: Path) -> None:
    """Live frames are framed once and written to hypercorn's socket directly: if a hypercorn upgrade moves
    the objects this relies on, every send falls back to plain ASGI and this test says so."""
    async with daemon(tmp_path) as d, d.client() as c:
        await d.ingest(120)
        await c.subscribe(since=60)
        assert await c.frames_until_quiet() == [closed(120)]
        text, frame = DirectSend._last  # the quiet check's marker reply, the last frame sent
        assert orjson.loads(text) == SENTINEL_REPLY
        assert frame == text_frame(text.encode())
