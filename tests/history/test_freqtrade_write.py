"""freqtrade files as ``klinectl export`` writes them: freqtrade's names, columns and dtypes, chunk by chunk,
read back by klined's own freqtrade reader."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as parquet
import pytest

from daemon.history.freqtrade import data_file, file_path, read_candles
from daemon.history.freqtrade_write import FreqtradeWriter
from protocol.candle import Candle
from protocol.series import SeriesId

BTC = SeriesId.parse("binance:spot:BTC/USDT:1m")
PERP = SeriesId.parse("binance:futures:BTC/USDT:1m")
FORMATS = ["feather", "parquet", "json", "jsongz"]


def candles(n: int, start: int = 1_700_000_040, seed: int = 7) -> list[Candle]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        o, c = rng.uniform(20_000, 40_000), rng.uniform(20_000, 40_000)
        high, low = max(o, c) + rng.random() * 50, min(o, c) - rng.random() * 50
        out.append(Candle(start + 60 * i, o, high, low, c, rng.random() * 1e3))
    return out


def write(path: Path, fmt: str, rows: list[Candle], chunk: int) -> None:
    with FreqtradeWriter(path, fmt) as writer:
        for i in range(0, len(rows), chunk):
            writer.write([c[:6] for c in rows[i : i + chunk]])
        writer.commit()


def test_freqtrades_names_spot_futures_and_the_month() -> None:
    root = Path("/data")
    assert file_path(root, BTC, "feather") == root / "binance" / "BTC_USDT-1m.feather"
    assert file_path(root, PERP, "jsongz") == root / "binance" / "futures" / "BTC_USDT_USDT-1m-futures.json.gz"
    month = SeriesId.parse("binance:spot:ETH/USDT:1M")
    assert file_path(root, month, "parquet") == root / "binance" / "ETH_USDT-1Mo.parquet"  # never 1M next to 1m


def test_the_reader_finds_the_month_under_either_name(tmp_path: Path) -> None:
    month = SeriesId.parse("binance:spot:ETH/USDT:1M")
    old = file_path(tmp_path, month, "json", timeframe="1M")  # freqtrade's files before it said 1Mo
    old.parent.mkdir(parents=True)
    old.write_bytes(b"[]")
    assert data_file(tmp_path, month) == old
    new = file_path(tmp_path, month, "json")
    new.write_bytes(b"[]")
    assert data_file(tmp_path, month) == new


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("series", [BTC, PERP], ids=["spot", "futures"])
def test_written_chunk_by_chunk_and_read_back_exactly(tmp_path: Path, fmt: str, series: SeriesId) -> None:
    rows = candles(2_345)
    path = file_path(tmp_path, series, fmt)
    write(path, fmt, rows, chunk=500)
    assert data_file(tmp_path, series) == path
    assert not path.with_name(path.name + ".partial").exists()
    got = [c for batch in read_candles(path, series, 0, 2**40) for c in batch]
    assert got == rows  # every float exact, every time, in order


@pytest.mark.parametrize("fmt", ["feather", "parquet"])
def test_arrow_files_have_freqtrades_columns_and_dtypes(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"x.{fmt}"
    write(path, fmt, candles(10), chunk=4)
    table = feather.read_table(path) if fmt == "feather" else parquet.read_table(path)
    assert table.column_names == ["date", "open", "high", "low", "close", "volume"]
    assert table.schema.field("date").type == pa.timestamp("ms", tz="UTC")
    assert all(table.schema.field(n).type == pa.float64() for n in table.column_names[1:])
    assert table["date"][0].value == 1_700_000_040_000


@pytest.mark.parametrize("fmt", ["json", "jsongz"])
def test_json_is_one_array_of_rows_with_dates_in_milliseconds(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "x.json"
    rows = candles(5)
    write(path, fmt, rows, chunk=2)
    raw = path.read_bytes()
    text = gzip.decompress(raw) if fmt == "jsongz" else raw
    assert orjson.loads(text) == [[c.candle_time * 1000, *c[1:6]] for c in rows]


def test_an_aborted_export_leaves_the_old_file_and_no_partial(tmp_path: Path) -> None:
    path = file_path(tmp_path, BTC, "feather")
    write(path, "feather", candles(3), chunk=3)
    before = path.read_bytes()

    def hang_up() -> None:
        with FreqtradeWriter(path, "feather") as writer:
            writer.write([c[:6] for c in candles(100, seed=1)])
            raise RuntimeError("the daemon hung up")

    with pytest.raises(RuntimeError):
        hang_up()
    assert path.read_bytes() == before
    assert list(path.parent.iterdir()) == [path]
