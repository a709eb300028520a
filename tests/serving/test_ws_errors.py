"""Black box: bad input, limits, slow consumers and shutdown on ``/ws/market`` (docs/protocol.md)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import trio
import trio.lowlevel
from trio_websocket import ConnectionClosed

from protocol.series import SeriesId
from tests.serving.harness import S1, closed, daemon

BAD_REQUESTS = [
    ("not json at all", "invalid json"),
    ("[1, 2]", "invalid message envelope"),
    ('"subscribe"', "invalid message envelope"),
    ("{}", "missing message type"),
    ('{"type": 5}', "missing message type"),
    ('{"type": "hello"}', "unknown message type: hello"),
    ('{"type": "subscribe"}', "missing series_id"),
    ('{"type": "unsubscribe"}', "missing series_id"),
    ('{"type": "subscribe", "series_id": "BTCUSDT"}', "invalid series_id: "),
    ('{"type": "subscribe", "series_id": "binance:spot:BTC/USDT:7m"}', "invalid series_id: "),
    ('{"type": "subscribe", "series_id": 12}', "invalid series_id: "),
    (f'{{"type": "subscribe", "series_id": "{S1}", "since": "120"}}', "invalid since"),
    (f'{{"type": "subscribe", "series_id": "{S1}", "since": -60}}', "invalid since"),
    (f'{{"type": "subscribe", "series_id": "{S1}", "since": 1.5}}', "invalid since"),
    (f'{{"type": "subscribe", "series_id": "{S1}", "supports_batch": "yes"}}', "invalid supports_batch"),
    ('{"type": "subscribe", "series_id": "' + "x" * 70_000 + '"}', "message too large"),
]


async def test_7_every_bad_request_is_answered_and_the_connection_keeps_working(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d, d.client() as c:
        await d.ingest(120)
        await c.subscribe(since=None)
        assert await c.frames_until_quiet() == [closed(120)]
        for text, message in BAD_REQUESTS:
            await c.ws.send_message(text)
            reply = await c.recv()
            assert reply["type"] == "error"
            assert reply["code"] == "bad_request"
            assert "series_id" not in reply
            assert reply["message"].startswith(message), (text[:80], reply)
        await d.ingest(180)  # the subscription made before all that still works
        assert await c.frames_until_quiet() == [closed(180)]


async def test_7_capacity_refuses_the_second_series_and_never_sends_it(tmp_path: Path) -> None:
    env = {"KLINED_ENABLE_ONDEMAND_INGEST": "1", "KLINED_ONDEMAND_MAX_JOBS": "1"}
    s2 = "binance:spot:ETH/USDT:1m"
    async with daemon(tmp_path, **env) as d, d.client() as c:
        await c.subscribe(since=None)
        await c.subscribe(since=None, series=s2)
        frames = await c.frames_until_quiet()
        assert frames == [
            {
                "type": "error",
                "code": "ondemand_ingest_capacity",
                "message": frames[0]["message"],
                "series_id": s2,
            }
        ]
        await d.ingest(120, series=s2)
        await d.ingest(120)
        assert await c.frames_until_quiet() == [closed(120)]  # nothing of the refused series, ever
        live = d.running.live
        assert live is not None
        job = live.supervisor.job(SeriesId.parse(S1))
        assert job is not None
        assert job.refcount == 1
    await trio.lowlevel.checkpoint()


async def test_on_demand_refcount_follows_subscribe_unsubscribe_and_disconnect(tmp_path: Path) -> None:
    env = {"KLINED_ENABLE_ONDEMAND_INGEST": "1"}
    async with daemon(tmp_path, **env) as d:
        live = d.running.live
        assert live is not None
        series = SeriesId.parse(S1)
        async with d.client() as a, d.client() as b:
            await a.subscribe(since=None)
            await b.subscribe(since=None)
            await a.frames_until_quiet()
            await b.frames_until_quiet()
            job = live.supervisor.job(series)
            assert job is not None
            assert job.refcount == 2
            await a.send({"type": "unsubscribe", "series_id": S1})
            await a.frames_until_quiet()
            assert job.refcount == 1
        await d.hub.wait_all_closed()
        assert job.refcount == 0  # the disconnect released b's
        assert job.last_zero_at is not None


async def test_subscription_and_connection_limits_are_explicit_refusals(tmp_path: Path) -> None:
    env = {"KLINED_MARKET_WS_MAX_SUBSCRIPTIONS": "2", "KLINED_MARKET_WS_MAX_CONNECTIONS": "2"}
    async with daemon(tmp_path, **env) as d, d.client() as c, d.client():
        for symbol in ("BTC", "ETH", "SOL"):
            await c.subscribe(since=None, series=f"binance:spot:{symbol}/USDT:1m")
        (refusal,) = await c.frames_until_quiet()
        assert (refusal["code"], refusal["series_id"]) == ("capacity", "binance:spot:SOL/USDT:1m")
        async with d.client() as third:
            reply = await third.recv()
            assert (reply["type"], reply["code"]) == ("error", "capacity")
            with pytest.raises(ConnectionClosed) as closed_info:
                await third.ws.get_message()
            assert closed_info.value.reason.code == 1013


async def test_a_burst_of_10k_subscribes_is_served_in_order(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d, d.client() as c:
        await d.ingest(120)
        message = orjson.dumps({"type": "subscribe", "series_id": S1, "since": None}).decode()
        for _ in range(10_000):
            await c.ws.send_message(message)
        assert await c.frames_until_quiet() == [closed(120)]  # the first caught up, the rest kept the cursor
        await d.ingest(180)
        assert await c.frames_until_quiet() == [closed(180)]


async def test_one_stalled_client_among_200_readers_is_cut_off_alone(tmp_path: Path) -> None:
    env = {"KLINED_MARKET_WS_QUEUE_FRAMES": "32"}
    n_candles = 400
    async with daemon(tmp_path, **env) as d:
        received: dict[int, int] = {}
        all_subscribed = trio.Event()
        subscribed = 0

        async def reader(k: int) -> None:
            nonlocal subscribed
            async with d.client() as c:
                await c.subscribe(since=None)
                await c.frames_until_quiet()
                subscribed += 1
                if subscribed == 201:
                    all_subscribed.set()
                count = 0
                while count < n_candles:
                    frame = await c.recv()
                    assert frame["type"] == "candle_closed"
                    count += 1
                received[k] = count

        async def stalled() -> tuple[str, int]:
            nonlocal subscribed
            async with d.client(receive_buffer=4096) as c:
                await c.subscribe(since=None)
                await c.frames_until_quiet()
                subscribed += 1
                if subscribed == 201:
                    all_subscribed.set()
                await stop_stalling.wait()  # reads nothing while the candles flow
                last: dict[str, object] = {}
                try:
                    while True:
                        last = await c.recv()
                except ConnectionClosed as e:
                    return str(last.get("code")), e.reason.code if e.reason else -1

        stop_stalling = trio.Event()
        outcome: list[tuple[str, int]] = []

        async def run_stalled() -> None:
            outcome.append(await stalled())

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for k in range(200):
                    nursery.start_soon(reader, k)
                nursery.start_soon(run_stalled)
                await all_subscribed.wait()
                for i in range(n_candles):
                    await d.ingest(60 * (i + 1))
                    if i == n_candles // 2:
                        assert d.hub.stats.slow_consumers == 1  # cut off while the others still read
                        stop_stalling.set()  # it reads again: what it gets last is the reason and 1008
        assert len(received) == 200
        assert set(received.values()) == {n_candles}
        assert outcome == [("slow_consumer", 1008)]


async def test_shutdown_says_goodbye_then_closes_every_socket_with_1001(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d, d.client() as c:
        await d.ingest(120)
        await c.subscribe(since=None)
        await c.frames_until_quiet()
        d.running.stop.set()
        goodbye = await c.recv()
        assert (goodbye["type"], goodbye["series_id"], goodbye["event"]) == ("system", S1, "server_shutdown")
        with pytest.raises(ConnectionClosed) as info:
            await c.ws.get_message()
        assert info.value.reason is not None
        assert (info.value.reason.code, info.value.reason.reason) == (1001, "server_shutdown")
