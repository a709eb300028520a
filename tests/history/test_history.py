"""History repairs against the fake exchange's REST (through real ccxt) and generated freqtrade files."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import orjson
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as parquet
import pytest
import trio

from actors.store import Store
from daemon.config import load_settings
from daemon.fakex.server import FakeExchange
from daemon.history.exchange import CcxtSource
from daemon.history.freqtrade import data_file, read_candles
from daemon.history.service import History
from daemon.live import Deriver
from daemon.storage.eventlog import EventLog
from protocol.candle import Candle
from protocol.series import SeriesId
from protocol.timeframes import TIMEFRAMES
from tests.features_off import OFF_ENV

M1, M5 = TIMEFRAMES["1m"], TIMEFRAMES["5m"]
BTC = SeriesId.parse("binance:spot:BTC/USDT:1m")
BTC5 = SeriesId.parse("binance:spot:BTC/USDT:5m")
PERP = SeriesId.parse("binance:futures:ETH/USDT:1m")


def write_freqtrade(path: Path, candles: list[Candle], fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [[c.candle_time * 1000, c.open, c.high, c.low, c.close, c.volume] for c in candles]
    if fmt in ("feather", "parquet"):
        table = pa.table(
            {
                "date": pa.array([r[0] for r in rows], type=pa.timestamp("ms", tz="UTC")),
                **{
                    n: pa.array([r[i] for r in rows], type=pa.float64())
                    for i, n in enumerate(("open", "high", "low", "close", "volume"), 1)
                },
            }
        )
        (feather.write_feather if fmt == "feather" else parquet.write_table)(table, str(path))
    elif fmt == "json":
        path.write_bytes(orjson.dumps(rows))
    else:
        path.write_bytes(gzip.compress(orjson.dumps(rows)))


EXT = {"feather": ".feather", "parquet": ".parquet", "json": ".json", "jsongz": ".json.gz"}


@pytest.mark.parametrize("fmt", ["feather", "parquet", "json", "jsongz"])
def test_freqtrade_files_in_every_format_are_read_in_range(tmp_path: Path, fmt: str) -> None:
    fake = FakeExchange()
    sym = fake.market.spot["BTCUSDT"]
    candles = [sym.candle_1m(1_700_000_040 + 60 * i) for i in range(300)]
    path = tmp_path / "binance" / f"BTC_USDT-1m{EXT[fmt]}"
    write_freqtrade(path, candles, fmt)
    assert data_file(tmp_path, BTC) == path
    got = [
        c
        for batch in read_candles(path, BTC, candles[10].candle_time, candles[249].candle_time, batch=64)
        for c in batch
    ]
    assert got == [(*c[:6], False) for c in candles[10:250]]


def test_futures_file_name_and_bad_rows_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "binance" / "futures" / "ETH_USDT_USDT-1m-futures.json"
    good = Candle(1_700_000_040, 1.0, 2.0, 0.5, 1.5, 3.0)
    rows = [good, Candle(1_700_000_100, 1.0, 0.5, 2.0, 1.5, 3.0), Candle(1_700_000_130, 1.0, 2.0, 0.5, 1.5, 3.0)]
    write_freqtrade(path, rows, "json")
    assert data_file(tmp_path, PERP) == path
    assert [c for b in read_candles(path, PERP, 0, 2_000_000_000) for c in b] == [good]  # high<low, misaligned


@attrs.define
class Env:
    history: History
    store: Store
    fake: FakeExchange
    source: CcxtSource


@asynccontextmanager
async def history_env(tmp_path: Path, **flags: str) -> AsyncIterator[Env]:
    fake = FakeExchange()
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(fake.serve)
        settings = load_settings(
            env={
                **OFF_ENV,
                "KLINED_DATA_DIR": str(tmp_path),
                "KLINED_BINANCE_SPOT_REST_URL": urls.rest_url,
                "KLINED_BINANCE_FUTURES_REST_URL": urls.rest_url,
                "KLINED_FREQTRADE_DATA_DIR": str(tmp_path / "freqtrade"),
                **flags,
            }
        )
        with EventLog(tmp_path / "eventlog") as log:
            store = Store(log)
            source = CcxtSource(urls.rest_url, urls.rest_url, retry_first_s=0.05)
            history = History(
                settings,
                store,
                source=source,
                derive_stage=Deriver(store, M1, [M5], set()),
                base=M1,
                derived=[M5],
                now_s=lambda: fake.now_ms() // 1000,
            )
            await nursery.start(history.run)
            yield Env(history, store, fake, source)
        nursery.cancel_scope.cancel()


async def test_the_full_walk_freqtrade_then_derivation_then_the_exchange(tmp_path: Path) -> None:
    async with history_env(tmp_path, KLINED_ENABLE_CCXT_BACKFILL="1") as env:
        sym = env.fake.market.spot["BTCUSDT"]
        last = M5.last_closed_open(env.fake.now_ms() // 1000)
        window = [last - 300 * (499 - i) for i in range(500)]  # 500 5m periods, oldest first
        await env.store.append({BTC5: [sym.candle(M5, t) for t in window[300:]]})  # 200 stored
        write_freqtrade(
            tmp_path / "freqtrade" / "binance" / "BTC_USDT-5m.feather",
            [sym.candle(M5, t) for t in window[200:300]],
            "feather",
        )  # freqtrade has the 100 before them
        await env.store.append(
            {BTC: [sym.candle_1m(t + 60 * k) for t in window[50:200] for k in range(5)]}
        )  # 150 buckets
        result = await env.history.ensure_tail_coverage(BTC5, 500, last)
        assert result.filled == {"freqtrade": 100, "derived": 150, "exchange": 50}
        assert (result.still_missing, result.note) == (0, "tail_coverage_done")
        assert [c.candle_time for c in env.store.log.range(BTC5)] == window
        stored = env.store.log.range(BTC5)
        assert [c[:5] for c in stored] == [sym.candle(M5, t)[:5] for t in window]
        assert [c.volume for c in stored] == pytest.approx([sym.candle(M5, t).volume for t in window])
        view = env.history.progress.view(BTC5)
        assert (view["state"], view["progress_pct"], view["note"]) == ("succeeded", 100.0, "tail_coverage_done")


async def test_exchange_pages_5000_candles_1000_a_call(tmp_path: Path) -> None:
    async with history_env(tmp_path) as env:
        sym = env.fake.market.spot["BTCUSDT"]
        last = M1.last_closed_open(env.fake.now_ms() // 1000)
        first = last - 60 * 4999
        filled = await env.history.from_exchange(BTC, [(first, last)])
        assert filled == 5000
        # Five pages of 1000, and one that shows the exchange has moved past the last: only then is it final.
        assert env.source.calls == 6
        assert env.fake.rest_stats.klines_requests == 6
        assert env.store.log.range(BTC, limit=None)[::997] == [
            sym.candle_1m(first + 60 * i) for i in range(0, 5000, 997)
        ]


async def test_an_exchange_that_repeats_its_page_cannot_loop_us(tmp_path: Path) -> None:
    async with history_env(tmp_path) as env:
        env.fake.rest_faults.repeat_pages = True  # startTime ignored: always the latest page
        last = M1.last_closed_open(env.fake.now_ms() // 1000)
        with trio.fail_after(20):
            await env.history.from_exchange(BTC, [(last - 60 * 5000, last)])
        assert env.source.calls <= 2


async def test_a_429_storm_backs_off_and_completes(tmp_path: Path) -> None:
    async with history_env(tmp_path) as env:
        env.fake.rest_faults.status, env.fake.rest_faults.count = 429, 3
        env.fake.rest_faults.path_prefix = "/api/v3/klines"
        last = M1.last_closed_open(env.fake.now_ms() // 1000)
        filled = await env.history.from_exchange(BTC, [(last - 60 * 99, last)])
        assert filled == 100
        assert env.fake.rest_faults.count == 0


async def test_flags_off_fetch_nothing(tmp_path: Path) -> None:
    async with history_env(tmp_path, KLINED_ENABLE_CCXT_BACKFILL="1") as env:
        last = M1.last_closed_open(env.fake.now_ms() // 1000)
        result = await env.history.ensure_tail_coverage(BTC, 100, last, on_read=True)  # on_read flag is off
        assert (result.still_missing, env.source.calls, result.filled) == (100, 0, {"freqtrade": 0, "derived": 0})
        assert await env.history.gap_backfill(BTC, last - 600, last) == 0  # gap backfill flag off
        assert env.fake.rest_stats.klines_requests == 0


async def test_a_short_exchange_gives_a_partial_result(tmp_path: Path) -> None:
    async with history_env(tmp_path, KLINED_ENABLE_CCXT_BACKFILL="1") as env:
        sym = env.fake.market.spot["BTCUSDT"]
        last = M1.last_closed_open(env.fake.now_ms() // 1000)
        sym.listed_at = last - 60 * 39  # listed 40 minutes ago
        result = await env.history.ensure_tail_coverage(BTC, 100, last)
        assert (result.note, result.still_missing, result.filled["exchange"]) == ("tail_coverage_partial", 60, 40)
        assert env.history.progress.view(BTC)["note"] == "tail_coverage_partial"


async def test_gap_backfill_fills_a_known_hole(tmp_path: Path) -> None:
    async with history_env(tmp_path, KLINED_ENABLE_MARKET_GAP_BACKFILL="1") as env:
        sym = env.fake.market.spot["BTCUSDT"]
        last = M1.last_closed_open(env.fake.now_ms() // 1000)
        await env.store.append({BTC: [sym.candle_1m(last - 600), sym.candle_1m(last)]})
        assert await env.history.gap_backfill(BTC, last - 540, last) == 9
        assert env.store.log.count_between(BTC, last - 600, last) == 11


async def test_a_hole_repair_says_whether_the_exchange_answered(tmp_path: Path) -> None:
    """A series actor asks again for a hole only when the exchange could not be asked."""
    async with history_env(tmp_path, KLINED_ENABLE_MARKET_GAP_BACKFILL="1") as env:
        sym = env.fake.market.spot["BTCUSDT"]
        last = M1.last_closed_open(env.fake.now_ms() // 1000)
        await env.store.append({BTC: [sym.candle_1m(last - 600), sym.candle_1m(last)]})
        env.fake.rest_faults.unavailable_until_ms = env.fake.now_ms() + 3_600_000
        assert await env.history.repair_hole(BTC, last - 540, last) == (0, False)
        assert env.history.progress.view(BTC)["state"] == "failed"
        env.fake.rest_faults.unavailable_until_ms = 0
        assert await env.history.repair_hole(BTC, last - 540, last) == (9, True)
        assert env.history.progress.view(BTC)["state"] == "succeeded"


async def test_each_level_alone(tmp_path: Path) -> None:
    async with history_env(tmp_path) as env:
        sym = env.fake.market.spot["BTCUSDT"]
        last = M1.last_closed_open(env.fake.now_ms() // 1000)
        # freqtrade alone (the exchange is off): the file has the whole window
        write_freqtrade(
            tmp_path / "freqtrade" / "binance" / "BTC_USDT-1m.parquet",
            [sym.candle_1m(last - 60 * i) for i in range(199, -1, -1)],
            "parquet",
        )
        result = await env.history.ensure_tail_coverage(BTC, 200, last)
        assert (result.filled, result.still_missing) == ({"freqtrade": 200}, 0)
        # derived alone: 5m from the 1m now stored (the 5m file does not exist)
        last5 = M5.last_closed_open(last + 60)
        result = await env.history.ensure_tail_coverage(BTC5, 30, last5)
        assert result.filled == {"freqtrade": 0, "derived": 30}
        assert result.still_missing == 0
        assert env.source.calls == 0  # no exchange call for either
