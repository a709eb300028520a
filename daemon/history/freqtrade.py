"""freqtrade data files as a history source: ``<datadir>/<exchange>/BTC_USDT-1m.<ext>`` (spot) and
``<datadir>/<exchange>/futures/BTC_USDT_USDT-1m-futures.<ext>``, in the feather, parquet, json and jsongz
formats (``daemon.history.freqtrade_write`` writes the same files). Columns date/open/high/low/close/volume;
dates become UTC seconds.

Reading streams: a year of 1m candles (525,600) is read as Arrow columns (feather/parquet) or scanned row by
row from the raw JSON text, and handed out in batches of Python candles, never all at once. Rows that are not
valid candles are skipped and counted, never written.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Final

import attrs
import numpy as np
import structlog

from protocol.candle import Candle, check_candle
from protocol.errors import ProtocolError
from protocol.series import SeriesId

log = structlog.get_logger(__name__)

FORMATS: Final = (("feather", ".feather"), ("parquet", ".parquet"), ("jsongz", ".json.gz"), ("json", ".json"))
BATCH: Final = 50_000
_ROW: Final = re.compile(rb"\[([^\[\]]*)\]")  # one [ts, o, h, l, c, v] row of freqtrade's json formats


@attrs.define
class ReadStats:
    rows: int = 0
    skipped: int = 0


def file_path(datadir: Path, series: SeriesId, fmt: str, *, timeframe: str | None = None) -> Path:
    """Where freqtrade keeps ``series`` in format ``fmt``: what ``klinectl export`` writes and ``data_file``
    looks for. freqtrade names the monthly timeframe ``1Mo`` (``1M`` and ``1m`` collide on case-insensitive
    file systems); ``timeframe`` overrides the name, for its older files."""
    base, quote = series.symbol.split("/")
    name = timeframe or series.timeframe.name.replace("M", "Mo")
    ext = dict(FORMATS)[fmt]
    if series.market == "spot":
        return datadir / series.exchange / f"{base}_{quote}-{name}{ext}"
    return datadir / series.exchange / "futures" / f"{base}_{quote}_{quote}-{name}-futures{ext}"


def data_file(datadir: Path, series: SeriesId) -> Path | None:
    """The freqtrade file of ``series`` under ``datadir``, in the first format present."""
    names = dict.fromkeys((series.timeframe.name.replace("M", "Mo"), series.timeframe.name))
    for fmt, _ in FORMATS:
        for name in names:
            path = file_path(datadir, series, fmt, timeframe=name)
            if path.is_file():
                return path
    return None


def read_candles(
    path: Path, series: SeriesId, first: int, last: int, *, batch: int = BATCH, stats: ReadStats | None = None
) -> Generator[list[Candle], None, None]:
    """Batches of candles with ``first <= candle_time <= last``, ascending as the file is."""
    stats = stats or ReadStats()
    name = path.name
    if name.endswith((".feather", ".parquet")):
        columns = _arrow_columns(path, first, last)
    else:
        raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
        columns = _json_columns(raw, first, last)
    for times, o, h, low, c, v in columns:
        yield from _candles(series, times, o, h, low, c, v, batch, stats)


Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _arrow_columns(path: Path, first: int, last: int) -> Iterator[Columns]:
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.compute as pc  # type: ignore[import-untyped]
    import pyarrow.feather as feather  # type: ignore[import-untyped]
    import pyarrow.parquet as parquet  # type: ignore[import-untyped]

    table = feather.read_table(path) if path.name.endswith(".feather") else parquet.read_table(path)
    millis = pc.cast(pc.cast(table["date"], pa.timestamp("ms", tz="UTC"), safe=False), pa.int64())
    seconds = pc.divide(millis, 1000)  # integer division: whole seconds
    keep = pc.and_(pc.greater_equal(seconds, first), pc.less_equal(seconds, last))
    table = table.append_column("t", seconds).filter(keep)
    for chunk in table.to_batches(max_chunksize=BATCH):
        yield (
            chunk.column("t").to_numpy(),
            *(chunk.column(n).to_numpy().astype(np.float64) for n in ("open", "high", "low", "close", "volume")),
        )


def _json_columns(raw: bytes, first: int, last: int) -> Iterator[Columns]:
    rows: list[list[float]] = []
    for match in _ROW.finditer(raw):
        rows.append([float(x) for x in match.group(1).split(b",")])
        if len(rows) == BATCH:
            yield _json_batch(rows, first, last)
            rows = []
    if rows:
        yield _json_batch(rows, first, last)


def _json_batch(rows: list[list[float]], first: int, last: int) -> Columns:
    array = np.array([r[:6] for r in rows if len(r) >= 6], dtype=np.float64).reshape(-1, 6)
    times = (array[:, 0] // 1000).astype(np.int64)
    keep = (times >= first) & (times <= last)
    return times[keep], array[keep, 1], array[keep, 2], array[keep, 3], array[keep, 4], array[keep, 5]


def _candles(
    series: SeriesId,
    times: np.ndarray,
    o: np.ndarray,
    h: np.ndarray,
    low: np.ndarray,
    c: np.ndarray,
    v: np.ndarray,
    batch: int,
    stats: ReadStats,
) -> Iterator[list[Candle]]:
    tf = series.timeframe
    # The common case is checked for whole columns at once; only a batch with a bad row goes row by row.
    ok = np.isfinite(o) & np.isfinite(h) & np.isfinite(low) & np.isfinite(c) & np.isfinite(v)
    ok &= (low <= np.minimum(o, c)) & (np.maximum(o, c) <= h) & (v >= 0)
    if tf.name in ("1w", "1M"):  # calendar-aligned: checked row by row below
        ok &= False
    else:
        ok &= times % tf.seconds == 0
    for start in range(0, len(times), batch):
        sl = slice(start, start + batch)
        # Columns to Python candles in one C-level pass (tolist gives ints and floats already).
        out = list(
            map(
                Candle,
                times[sl].tolist(),
                o[sl].tolist(),
                h[sl].tolist(),
                low[sl].tolist(),
                c[sl].tolist(),
                v[sl].tolist(),
            )
        )
        stats.rows += len(out)
        if not ok[sl].all():
            good = []
            for candle in out:
                try:
                    good.append(check_candle(candle, tf))
                except ProtocolError as e:
                    stats.skipped += 1
                    log.warning("freqtrade_row_skipped", series_id=str(series), candle_time=candle[0], error=str(e))
            out = good
        if out:
            yield out
