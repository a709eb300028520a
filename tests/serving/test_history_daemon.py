"""Black box: history through the running daemon (startup sync, tail coverage on read, healed gaps,
klinectl over the control socket), against the fake exchange."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from daemon import klinectl
from daemon.fakex.server import FakeExchange
from daemon.storage.eventlog import EventLog
from protocol.series import SeriesId
from protocol.timeframes import TIMEFRAMES
from tests.serving.harness import S1, Daemon, daemon

M1 = TIMEFRAMES["1m"]


@asynccontextmanager
async def with_fake(tmp_path: Path, **env: str) -> AsyncIterator[tuple[Daemon, FakeExchange]]:
    fake = FakeExchange()
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(fake.serve)
        urls_env = {
            "KLINED_BINANCE_SPOT_REST_URL": urls.rest_url,
            "KLINED_BINANCE_FUTURES_REST_URL": urls.rest_url,
            "KLINED_BINANCE_SPOT_WS_URL": urls.spot_ws,
            "KLINED_BINANCE_FUTURES_WS_URL": urls.futures_ws,
        }
        async with daemon(tmp_path, **urls_env, **env) as d:
            yield d, fake
        nursery.cancel_scope.cancel()


async def test_startup_sync_fills_the_whitelist_before_ready(tmp_path: Path) -> None:
    env = {
        "KLINED_WHITELIST": S1,
        "KLINED_ENABLE_STARTUP_KLINE_SYNC": "1",
        "KLINED_STARTUP_KLINE_SYNC_TARGET_CANDLES": "300",
    }
    async with with_fake(tmp_path, **env) as (d, fake):
        log = d.running.store.log
        last = M1.last_closed_open(fake.now_ms() // 1000)
        assert log.count_between(S1, last - 60 * 299, last) == 300  # already there when ready
        assert d.running.services is not None
        assert d.running.services.history.progress.view(S1)["note"] == "tail_coverage_done"
        assert d.running.services.history.startup_wait == "done"


async def test_a_startup_sync_that_outlasts_its_wait_goes_on_after_ready(tmp_path: Path) -> None:
    """The exchange answers, but slowly (three 429s, each retried after at least 0.1 s): READY comes once
    the wait is over, and the sync completes in the background."""
    fake = FakeExchange()
    fake.rest_faults.status, fake.rest_faults.count, fake.rest_faults.path_prefix = 429, 3, "/api/v3/klines"
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(fake.serve)
        env = {
            "KLINED_BINANCE_SPOT_REST_URL": urls.rest_url,
            "KLINED_WHITELIST": S1,
            "KLINED_ENABLE_STARTUP_KLINE_SYNC": "1",
            "KLINED_STARTUP_KLINE_SYNC_TARGET_CANDLES": "300",
            "KLINED_STARTUP_KLINE_SYNC_WAIT_S": "0.2",
        }
        async with daemon(tmp_path, **env) as d:
            history = d.running.services.history if d.running.services else None
            assert history is not None
            assert history.startup_wait == "deadline"  # a rate limit is an answer: the exchange is there
            with trio.fail_after(60):
                await history.startup_synced.wait()
            last = M1.last_closed_open(fake.now_ms() // 1000)
            assert d.running.store.log.count_between(S1, last - 60 * 299, last) == 300
        nursery.cancel_scope.cancel()


async def test_get_candles_covers_a_short_tail_within_a_bounded_wait(tmp_path: Path) -> None:
    env = {
        "KLINED_ENABLE_MARKET_AUTO_TAIL_BACKFILL": "1",
        "KLINED_ENABLE_CCXT_BACKFILL": "1",
        "KLINED_ENABLE_CCXT_BACKFILL_ON_READ": "1",
    }
    async with with_fake(tmp_path, **env) as (d, fake):
        body = (await d.http.get("/api/market/candles", params={"series_id": S1, "limit": 120})).json()
        times = [c["candle_time"] for c in body["candles"]]
        last = M1.last_closed_open(fake.now_ms() // 1000)
        assert times == list(range(last - 60 * 119, last + 60, 60))  # the peer system answered [] here


async def test_get_candles_without_the_flags_fetches_nothing(tmp_path: Path) -> None:
    async with with_fake(tmp_path) as (d, fake):
        body = (await d.http.get("/api/market/candles", params={"series_id": S1, "limit": 120})).json()
        assert body["candles"] == []
        assert fake.rest_stats.klines_requests == 0


async def test_a_live_hole_is_healed_from_the_exchange_and_the_rest_is_a_gap(tmp_path: Path) -> None:
    async with with_fake(tmp_path, KLINED_ENABLE_MARKET_GAP_BACKFILL="1") as (d, fake):
        sym = fake.market.spot["BTCUSDT"]
        last = M1.last_closed_open(fake.now_ms() // 1000)
        sym.listed_at = last - 60 * 5  # the exchange has nothing before that
        async with d.client() as c:
            await d.ingest(last - 60 * 8)
            await c.subscribe(since=None)
            assert [f["type"] for f in await c.frames_until_quiet()] == ["candle_closed"]
            candle = sym.candle_1m(last)
            await d.http.post(
                "/api/market/ingest/candle_closed",
                json={
                    "series_id": S1,
                    "candle": dict(
                        zip(("candle_time", "open", "high", "low", "close", "volume"), candle[:6], strict=True)
                    ),
                },
            )
            frames = await c.frames_until_quiet()
        # last-7 and last-6 predate the listing: a gap; last-5 .. last-1 came from the exchange, then the live one.
        assert frames[0] == {
            "type": "gap",
            "series_id": S1,
            "expected_next_time": last - 420,
            "actual_time": last - 300,
        }
        assert [f["candle"]["candle_time"] for f in frames[1:]] == [last - 60 * k for k in (5, 4, 3, 2, 1, 0)]
        assert {f["type"] for f in frames[1:]} == {"candle_closed"}


async def test_klinectl_health_and_backfill_over_the_control_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with with_fake(tmp_path, KLINED_WHITELIST=S1) as (d, fake):
        sock = tmp_path / "klined.sock"
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        last = M1.last_closed_open(fake.now_ms() // 1000)
        code = await trio.to_thread.run_sync(klinectl.main, ["--socket", str(sock), "health"])
        assert code == 3  # red: nothing stored yet
        assert "missing_head" in capsys.readouterr().out
        args = ["--socket", str(sock), "backfill", S1, "--since", str(last - 60 * 2999)]
        code = await trio.to_thread.run_sync(klinectl.main, args)
        out = capsys.readouterr()
        assert code == 0, out
        assert "still missing 0" in out.out
        assert out.err == ""  # no progress bar when stderr is not a terminal (test_klinectl.py has the bar)
        assert d.running.store.log.count_between(S1, last - 60 * 2999, last) == 3000
        code = await trio.to_thread.run_sync(klinectl.main, ["--socket", str(sock), "health"])
        assert code == 0
        assert "up_to_date" in capsys.readouterr().out
        code = await trio.to_thread.run_sync(klinectl.main, ["--socket", str(sock), "backfill", "nope", "--since", "0"])
        assert code == 1
        assert "invalid series_id" in capsys.readouterr().err


def test_klinectl_without_a_daemon_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert klinectl.main(["--socket", str(tmp_path / "none.sock"), "health"]) == 2
    assert "no daemon listening" in capsys.readouterr().err


async def test_startup_sync_derives_a_bucket_a_crash_left_underived(tmp_path: Path) -> None:
    """Killed after its 1m candles were appended and before their 5m was derived: the next start's sync
    builds the missing 5m from the stored 1m (the exchange is not needed)."""
    env = {
        "KLINED_WHITELIST": S1,
        "KLINED_ENABLE_STARTUP_KLINE_SYNC": "1",
        "KLINED_STARTUP_KLINE_SYNC_TARGET_CANDLES": "60",
        "KLINED_ENABLE_DERIVED_TIMEFRAMES": "1",
        "KLINED_DERIVED_TIMEFRAMES": "5m",
    }
    s5 = S1.replace(":1m", ":5m")
    async with with_fake(tmp_path, **env) as (d, fake):
        log = d.running.store.log
        last5 = TIMEFRAMES["5m"].last_closed_open(fake.now_ms() // 1000)
        # Derived at the start over the span the 1m sync covers (its first 5m bucket may begin before it).
        assert log.count_between(s5, last5 - 300 * 10, last5) == 11
        hole = last5 - 300 * 5
    # The crash's trace: the 5m bucket gone, its 1m candles still there (rewritten without it).
    with EventLog(tmp_path / "eventlog") as old, EventLog(tmp_path / "rewritten") as new:
        for event in old.iter_events():
            if not (event.series_id == s5 and event.candle.candle_time == hole):
                new.append({SeriesId.parse(event.series_id): [event.candle]})
    (tmp_path / "eventlog").rename(tmp_path / "eventlog.old")
    (tmp_path / "rewritten").rename(tmp_path / "eventlog")
    async with with_fake(tmp_path, **env, KLINED_ENABLE_CCXT_BACKFILL="0") as (d, fake):
        assert d.running.store.log.get(s5, hole) is not None
