"""Black box: klined follows the fake exchange over real loopback sockets.

The fake's clock is shifted so that a five-minute boundary is a few seconds away; klined measures that
offset from ``/api/v3/time`` like it would Binance's, so its ticks land on the fake's minutes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from actors.supervisor import CapacityError
from daemon.app import Running, serve_daemon
from daemon.config import load_settings
from daemon.fakex.server import FakeExchange, exchange_clock
from daemon.storage.eventlog import EventLog
from protocol.series import SeriesId
from tests.features_off import OFF_ENV

BTC = SeriesId.parse("binance:spot:BTC/USDT:1m")
BTC5 = SeriesId.parse("binance:spot:BTC/USDT:5m")
LEAD_MS = 4_000


def fake_before_boundary() -> tuple[FakeExchange, int]:
    """A fake exchange whose clock is LEAD_MS before a 5m boundary; returns it and that boundary (s)."""
    wall = time.time_ns() // 1_000_000
    boundary_ms = (wall // 300_000 + 1) * 300_000 + 300_000
    fake = FakeExchange(now_ms=exchange_clock(offset_ms=boundary_ms - LEAD_MS - wall))
    return fake, boundary_ms // 1000


@asynccontextmanager
async def daemon_against(fake: FakeExchange, tmp_path: Path, **env: str) -> AsyncIterator[Running]:
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(fake.serve)
        settings = load_settings(
            env={
                **OFF_ENV,
                "KLINED_DATA_DIR": str(tmp_path),
                "KLINED_HTTP_PORT": "0",
                "KLINED_WHITELIST": str(BTC),
                "KLINED_ENABLE_WHITELIST_INGEST": "1",
                "KLINED_ENABLE_DERIVED_TIMEFRAMES": "1",
                "KLINED_ENABLE_DEBUG_API": "1",
                "KLINED_BINANCE_SPOT_WS_URL": urls.spot_ws,
                "KLINED_BINANCE_SPOT_REST_URL": urls.rest_url,
                "KLINED_BINANCE_FUTURES_WS_URL": urls.futures_ws,
                "KLINED_BINANCE_FUTURES_REST_URL": urls.rest_url,
                **env,
            }
        )
        running: Running = await nursery.start(serve_daemon, settings)
        yield running
        running.stop.set()
        nursery.cancel_scope.cancel()


def seed_bucket(tmp_path: Path, fake: FakeExchange, boundary: int) -> None:
    """The first four minutes of the 5m bucket closing at ``boundary`` are already stored."""
    sym = fake.market.spot["BTCUSDT"]
    with EventLog(tmp_path / "eventlog") as log:
        log.append({BTC: [sym.candle_1m(boundary - 300 + 60 * i) for i in range(4)]})


async def wait_for(running: Running, series: SeriesId, candle_time: int) -> None:
    while running.store.log.get(series, candle_time) is None:
        await running.store.wait_appended()


async def test_live_close_is_stored_and_derives_5m(tmp_path: Path) -> None:
    fake, boundary = fake_before_boundary()
    seed_bucket(tmp_path, fake, boundary)
    sym = fake.market.spot["BTCUSDT"]
    with trio.fail_after(45):
        async with daemon_against(fake, tmp_path) as running:
            await wait_for(running, BTC, boundary - 60)
            await wait_for(running, BTC5, boundary - 300)
            assert running.store.log.get(BTC, boundary - 60) == sym.candle_1m(boundary - 60)
            assert running.store.log.get(BTC5, boundary - 300) == sym.candle(BTC5.timeframe, boundary - 300)
            async with httpx.AsyncClient(base_url=running.http_url) as client:
                state = (await client.get("/api/market/debug/ingest_state")).json()
                (job,) = state["jobs"]
                assert (job["series_id"], job["source"], job["refcount"], job["running"]) == (
                    str(BTC),
                    "whitelist",
                    -1,
                    True,
                )
                assert state["stats"]["ingest"]["spot"]["connections"][0]["connected"] is True
                body = (await client.get("/api/market/candles", params={"series_id": str(BTC5)})).json()
                assert [c["candle_time"] for c in body["candles"]] == [boundary - 300]


async def test_silent_stream_is_filled_over_rest_after_the_tick(tmp_path: Path) -> None:
    fake, boundary = fake_before_boundary()
    fake.streams.faults.silent_until_ms = (boundary + 60) * 1000  # no final kline for this minute
    sym = fake.market.spot["BTCUSDT"]
    with trio.fail_after(45):
        async with daemon_against(fake, tmp_path) as running:
            await wait_for(running, BTC, boundary - 60)
            assert running.store.log.get(BTC, boundary - 60) == sym.candle_1m(boundary - 60)
            assert running.live is not None
            actor = running.live.actors[BTC]
            assert actor.state.fills_appended >= 1


async def test_reconnect_after_a_drop_records_the_hole_and_fills_it(tmp_path: Path) -> None:
    fake, boundary = fake_before_boundary()
    seed_bucket(tmp_path, fake, boundary)  # head: boundary - 120
    sym = fake.market.spot["BTCUSDT"]
    with trio.fail_after(45):
        # A long grace keeps the clock's own REST fill out of the way: the reconnect must find the hole.
        async with daemon_against(fake, tmp_path, KLINED_MARKET_CLOSE_GRACE_S="30") as running:
            assert running.live is not None
            ingest = running.live.ingest["spot"]
            if not any(c.connected for c in ingest.connections.values()):
                await ingest.wait_connected()
            # The exchange drops us and refuses us until after the minute closing at `boundary` is sent.
            fake.streams.faults.refuse_until_ms = (boundary + 1) * 1000
            fake.streams.faults.drop_generation += 1
            await ingest.wait_connected()
            await wait_for(running, BTC, boundary - 60)
            assert running.store.log.get(BTC, boundary - 60) == sym.candle_1m(boundary - 60)
            await wait_for(running, BTC5, boundary - 300)  # the 5m bucket completes from the fill
            assert running.store.log.get(BTC5, boundary - 300) == sym.candle(BTC5.timeframe, boundary - 300)
            async with httpx.AsyncClient(base_url=running.http_url) as client:
                stats = (await client.get("/api/market/debug/ingest_state")).json()["stats"]
            assert stats["holes"] == {str(BTC): [{"expected_next_time": boundary - 60, "actual_time": boundary}]}
            (conn,) = stats["ingest"]["spot"]["connections"]
            assert (conn["connects"], conn["connected"]) == (2, True)
            assert conn["failures"] >= 1
            assert fake.streams.refused >= 1


async def test_duplicate_late_and_malformed_finals_are_stored_once_in_order(tmp_path: Path) -> None:
    fake, boundary = fake_before_boundary()
    sym = fake.market.spot["BTCUSDT"]
    faults = fake.streams.faults
    faults.malformed = 3
    faults.resend_closed = 1  # the close at `boundary` comes twice
    faults.replay_after_close = (boundary - 120, boundary - 180, boundary - 60)  # then older ones, reversed
    with trio.fail_after(45):
        async with daemon_against(fake, tmp_path) as running:
            await wait_for(running, BTC, boundary - 60)
            await wait_for(running, BTC, boundary - 180)
            log = running.store.log
            assert log.range(BTC)[-3:] == [sym.candle_1m(boundary - t) for t in (180, 120, 60)]
            assert running.live is not None
            assert running.live.ingest["spot"].stats.malformed == 3
            assert running.live.actors[BTC].state.holes == []  # late candles are not holes
    with EventLog(tmp_path / "eventlog") as log:  # every candle once, nothing corrected
        events = [e for e in log.events_since(0) if e.series_id == str(BTC)]
        times = [e.candle.candle_time for e in events]
        assert len(times) == len(set(times))
        assert {boundary - t for t in (180, 120, 60)} <= set(times)
        assert all(e.previous is None for e in events)


ETH = SeriesId.parse("binance:spot:ETH/USDT:1m")
BTC_PERP = SeriesId.parse("binance:futures:BTC/USDT:1m")


async def test_capacity_evicts_the_idle_or_refuses_and_a_crash_restarts_alone(tmp_path: Path) -> None:
    fake, _ = fake_before_boundary()
    with trio.fail_after(45):
        async with daemon_against(fake, tmp_path, KLINED_ONDEMAND_MAX_JOBS="1") as running:
            live = running.live
            assert live is not None
            supervisor = live.supervisor
            supervisor.acquire(ETH)  # on demand, subscribed live on the open spot connection
            while ETH not in live.actors:
                await live.wait_actor_started()
            assert live.ingest["spot"].statistics()["streams"] == 2
            with pytest.raises(CapacityError) as refused:
                supervisor.acquire(BTC_PERP)  # ETH has a subscriber: nothing to evict
            assert refused.value.code == "ondemand_ingest_capacity"
            assert BTC_PERP not in live.actors  # nothing partial
            assert supervisor.job(BTC_PERP) is None

            supervisor.release(ETH)  # idle now: the next on-demand series evicts it
            supervisor.acquire(BTC_PERP)
            while BTC_PERP not in live.actors:
                await live.wait_actor_started()
            assert supervisor.job(ETH) is None
            assert ETH not in live.actors
            assert live.ingest["spot"].statistics()["streams"] == 1  # ETH unsubscribed upstream
            assert live.ingest["futures"].statistics()["streams"] == 1
            await live.ingest["futures"].wait_connected()

            # A poisoned actor crashes; the supervisor restarts it after a backoff, the others never notice.
            live.actors[BTC].deliver(None)  # type: ignore[arg-type]
            old = live.actors[BTC]
            while live.actors.get(BTC) in (None, old):
                await live.wait_actor_started()
            job, other = supervisor.job(BTC), supervisor.job(BTC_PERP)
            assert job is not None
            assert other is not None
            assert (job.crashes, job.running) == (1, True)
            assert "AttributeError" in (job.last_error or "")
            assert (other.crashes, other.running) == (0, True)
            assert live.ingest["spot"].statistics()["streams"] == 1  # resubscribed after the restart


async def test_with_gap_backfill_on_a_reconnect_hole_is_filled_from_freqtrade_first(tmp_path: Path) -> None:
    from tests.history.test_history import write_freqtrade

    fake, boundary = fake_before_boundary()
    seed_bucket(tmp_path, fake, boundary)
    sym = fake.market.spot["BTCUSDT"]
    write_freqtrade(tmp_path / "ft" / "binance" / "BTC_USDT-1m.feather", [sym.candle_1m(boundary - 60)], "feather")
    env = {
        "KLINED_MARKET_CLOSE_GRACE_S": "30",
        "KLINED_ENABLE_MARKET_GAP_BACKFILL": "1",
        "KLINED_FREQTRADE_DATA_DIR": str(tmp_path / "ft"),
    }
    with trio.fail_after(45):
        async with daemon_against(fake, tmp_path, **env) as running:
            assert running.live is not None
            ingest = running.live.ingest["spot"]
            if not any(c.connected for c in ingest.connections.values()):
                await ingest.wait_connected()
            fake.rest_faults.status, fake.rest_faults.count = 503, 1000  # the exchange's REST is down too
            fake.rest_faults.path_prefix = "/api/v3/klines"
            fake.streams.faults.refuse_until_ms = (boundary + 1) * 1000
            fake.streams.faults.drop_generation += 1
            await ingest.wait_connected()
            await wait_for(running, BTC, boundary - 60)
            assert running.store.log.get(BTC, boundary - 60) == sym.candle_1m(boundary - 60)
            assert running.services is not None
            assert running.services.history.progress.view(BTC)["reason"] == "gap_backfill"
            assert fake.rest_faults.count == 1000  # not one klines request: the file had it


async def test_a_trade_built_symbol_equals_the_exchanges_klines(tmp_path: Path) -> None:
    """``trade_sources``: BTC's candles come from its aggTrade stream (no kline stream), 1m and 5m from one
    book, written per tick in one batch; they equal the fake exchange's own klines."""
    fake, boundary = fake_before_boundary()
    seed_bucket(tmp_path, fake, boundary)  # 4 minutes of the 5m bucket, so it completes at `boundary`
    sym = fake.market.spot["BTCUSDT"]
    env = {"KLINED_TRADE_SOURCES": "binance:spot:BTC/USDT", "KLINED_WHITELIST": f"{BTC},{BTC5}"}
    with trio.fail_after(45):
        async with daemon_against(fake, tmp_path, **env) as running:
            live = running.live
            assert live is not None
            while BTC not in live.trade_actors:
                await live.wait_actor_started()
            assert live.ingest["spot"]._series_streams == {BTC: "btcusdt@aggTrade"}  # no kline stream
            await wait_for(running, BTC, boundary - 60)
            await wait_for(running, BTC5, boundary - 300)
            got1, got5 = running.store.log.get(BTC, boundary - 60), running.store.log.get(BTC5, boundary - 300)
            assert got1 is not None
            assert got5 is not None
            want1, want5 = sym.candle_1m(boundary - 60), sym.candle(BTC5.timeframe, boundary - 300)
            assert got1[:5] == want1[:5]
            assert got1.volume == pytest.approx(want1.volume)
            assert got5[:5] == want5[:5]
            assert got5.volume == pytest.approx(want5.volume)
            actor = live.trade_actors[BTC]
            # Both periods were already running when klined started: taken from the exchange's klines (its
            # trades before the start were never seen); later periods are built from trades alone.
            assert actor.state.repaired_from_exchange >= 2
            assert actor.book is not None


async def test_a_new_listing_is_discovered_and_followed_from_its_trades_at_once(tmp_path: Path) -> None:
    from daemon.fakex.market import Symbol
    from daemon.pins import RuntimePins

    fake, _ = fake_before_boundary()
    new = SeriesId.parse("binance:spot:NEW/USDT:1m")
    env = {"KLINED_TRADE_DISCOVER": "binance:spot:USDT", "KLINED_TRADE_DISCOVER_INTERVAL_S": "0.2"}
    with trio.fail_after(45):
        async with daemon_against(fake, tmp_path, **env) as running:
            live = running.live
            assert live is not None
            while BTC not in live.actors:  # the whitelisted BTC runs from klines as before
                await live.wait_actor_started()
            await live.wait_discovery_poll()  # the baseline: what trades already is not "new"
            now = fake.now_ms() // 1000
            fake.market.spot["NEWUSDT"] = Symbol("NEWUSDT", "NEW", "USDT", 2.5, listed_at=now // 60 * 60 - 120)
            while new not in live.trade_actors:
                await live.wait_actor_started()
            actor = live.trade_actors[new]
            await actor.ready.wait()  # its seed price comes from the exchange's latest kline
            assert actor.book is not None
            assert actor.state.seeded
            assert live.ingest["spot"]._series_streams[new] == "newusdt@aggTrade"
    pins = RuntimePins(tmp_path / "pins.json")
    assert pins.trade_symbols == ["binance:spot:NEW/USDT"]
    assert str(new) in pins.pinned
