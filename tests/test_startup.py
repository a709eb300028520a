"""Start-up restores every series from LMDB, with no exchange call: here the exchange is unreachable."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from daemon.app import Running, serve_daemon
from daemon.config import Settings, load_settings
from daemon.settings import DEFAULT_WHITELIST
from daemon.storage.eventlog import EventLog
from protocol.candle import Candle
from protocol.series import SeriesId
from tests.features_off import OFF_ENV
from tests.klined_process import free_port

N = 1000


def offline_settings(tmp_path: Path, whitelist: list[SeriesId], **env: str) -> Settings:
    """``whitelist`` ingested live from an exchange where nothing listens: every exchange call fails."""
    port = free_port()  # closed: nothing listens there
    return load_settings(
        env={
            **OFF_ENV,
            "KLINED_DATA_DIR": str(tmp_path),
            "KLINED_HTTP_PORT": "0",
            "KLINED_WHITELIST": ",".join(map(str, whitelist)),
            "KLINED_ENABLE_WHITELIST_INGEST": "1",
            "KLINED_BINANCE_SPOT_WS_URL": f"ws://127.0.0.1:{port}",
            "KLINED_BINANCE_SPOT_REST_URL": f"http://127.0.0.1:{port}",
            **env,
        }
    )


async def test_a_thousand_series_start_from_their_stored_heads_offline(tmp_path: Path) -> None:
    series = [SeriesId.parse(f"binance:spot:S{i:04d}/USDT:1m") for i in range(N)]
    with EventLog(tmp_path / "eventlog") as log:
        log.append({s: [Candle(60 * (1000 + i), 1.0, 2.0, 0.5, 1.5, 3.0)] for i, s in enumerate(series)})
    settings = offline_settings(tmp_path, series)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            running: Running = await nursery.start(serve_daemon, settings)
            live = running.live
            assert live is not None
            while len(live.actors) < N:
                await live.wait_actor_started()
            heads = {s: live.actors[s].state.head_time for s in series}
            assert heads == {s: 60 * (1000 + i) for i, s in enumerate(series)}
            jobs = live.supervisor.jobs()
            assert len(jobs) == N
            assert {j["refcount"] for j in jobs} == {-1}
            running.stop.set()


async def test_an_unreachable_exchange_is_said_in_health_and_stored_data_is_still_served(tmp_path: Path) -> None:
    s1 = SeriesId.parse("binance:spot:BTC/USDT:1m")
    with EventLog(tmp_path / "eventlog") as log:
        log.append({s1: [Candle(60 * 1000, 1.0, 2.0, 0.5, 1.5, 3.0)]})
    settings = offline_settings(tmp_path, [s1], KLINED_ENABLE_KLINE_HEALTH="1")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            running: Running = await nursery.start(serve_daemon, settings)
            assert running.live is not None
            await running.live.ingest["spot"].wait_failure()
            async with httpx.AsyncClient(base_url=running.http_url) as http:
                health = (await http.get("/api/market/health")).json()
                spot = health["upstream"]["spot"]
                assert (spot["reachable"], spot["connected"]) == (False, 0)
                assert "connect" in spot["last_error"]
                assert spot["retry_in_s"] is not None
                body = (await http.get("/api/market/candles", params={"series_id": str(s1)})).json()
                assert [c["candle_time"] for c in body["candles"]] == [60_000]  # still serving what is stored
            running.stop.set()


async def test_the_defaults_offline_are_ready_at_once_and_serve_what_is_stored(tmp_path: Path) -> None:
    """`klined run` with no configuration and no network: READY without waiting out the startup sync's
    retries (it goes on in the background), the whitelist's stored candles served, and a read that asks the
    exchange for its tail gives up on it at once instead of waiting."""
    btc = SeriesId.parse(DEFAULT_WHITELIST[0])
    with EventLog(tmp_path / "eventlog") as log:
        log.append({btc: [Candle(60 * 1000, 1.0, 2.0, 0.5, 1.5, 3.0)]})
    closed = free_port()
    urls = {
        f"KLINED_BINANCE_{market}_{api}_URL": f"{'ws' if api == 'WS' else 'http'}://127.0.0.1:{closed}"
        for market in ("SPOT", "FUTURES")
        for api in ("WS", "REST")
    }
    env = {"KLINED_DATA_DIR": str(tmp_path), "KLINED_HTTP_PORT": "0", "KLINED_STARTUP_KLINE_SYNC_WAIT_S": "3600"}
    settings = load_settings(env={**env, **urls})
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            running: Running = await nursery.start(serve_daemon, settings)
            services, live = running.services, running.live
            assert services is not None
            assert live is not None
            assert services.history.startup_wait == "exchange_unreachable"
            while len(live.actors) < len(DEFAULT_WHITELIST):
                await live.wait_actor_started()
            assert set(live.actors) == {SeriesId.parse(s) for s in DEFAULT_WHITELIST}
            async with httpx.AsyncClient(base_url=running.http_url, timeout=30) as http:
                body = (await http.get("/api/market/candles", params={"series_id": str(btc)})).json()
                assert [c["candle_time"] for c in body["candles"]] == [60_000]
                # It returned because the tail coverage gave up on the exchange, not at the end of its wait.
                assert services.history.progress.view(btc)["state"] == "failed"
                assert (await http.get("/api/market/health")).status_code == 200
            running.stop.set()


async def test_a_thousand_trade_built_symbols_start_from_their_heads_offline(tmp_path: Path) -> None:
    series = [SeriesId.parse(f"binance:spot:S{i:04d}/USDT:1m") for i in range(N)]
    with EventLog(tmp_path / "eventlog") as log:
        log.append({s: [Candle(60 * (1000 + i), 1.0, 2.0 + i, 0.5, 1.5 + i, 3.0)] for i, s in enumerate(series)})
    # The exchange is unreachable: the downtime repair waits, the books must not.
    settings = offline_settings(
        tmp_path, series, KLINED_TRADE_SOURCES=",".join(f"binance:spot:{s.symbol}" for s in series)
    )
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            running: Running = await nursery.start(serve_daemon, settings)
            live = running.live
            assert live is not None
            while len(live.trade_actors) < N:
                await live.wait_actor_started()
            for i, s in enumerate(series):
                actor = live.trade_actors[s]
                await actor.ready.wait()
                assert actor.book is not None
                ((_, forming),) = actor.book.forming()
                assert forming.close == 1.5 + i  # opened at the stored close, no exchange call needed
            running.stop.set()
