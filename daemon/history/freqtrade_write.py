"""freqtrade data files written the way freqtrade writes them, one chunk of candles at a time, so a year of 1m
candles never has to be held whole.

- feather: Arrow IPC with lz4 (freqtrade's ``to_feather(compression="lz4")``); parquet: pyarrow's default
  snappy (pandas' ``to_parquet``). Columns date (timestamp, ms, UTC), open, high, low, close, volume (float64):
  the dtypes of freqtrade's own dataframes, which its loaders expect (``date`` must be a timestamp).
- json / jsongz: ``[[date_ms, open, high, low, close, volume], ...]`` (pandas' ``orient="values"``), the date
  as integer milliseconds; jsongz is that text gzipped. Floats keep their shortest exact form (pandas would
  round them to 10 digits).

A file is written under a ``.partial`` name and renamed once whole: a failed export never leaves a truncated
file where freqtrade, or klined's own import, would read it.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

Row = Sequence[float]  # time in UTC seconds, open, high, low, close, volume
COLUMNS = ("open", "high", "low", "close", "volume")


class FreqtradeWriter:
    """``write`` chunks in ascending time, then ``commit`` (or ``abort``, which leaves nothing behind)."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt = path, fmt
        self.partial = path.with_name(path.name + ".partial")
        path.parent.mkdir(parents=True, exist_ok=True)
        sink: type[_ArrowSink | _JsonSink] = _JsonSink if fmt.startswith("json") else _ArrowSink
        self._sink = sink(self.partial, fmt)
        self.rows = 0

    def write(self, rows: Sequence[Row]) -> None:
        if rows:
            self._sink.write(rows)
            self.rows += len(rows)

    def commit(self) -> None:
        self._sink.close()
        os.replace(self.partial, self.path)  # an older export of the series is replaced whole, never mixed

    def abort(self) -> None:
        try:
            self._sink.close()
        finally:
            self.partial.unlink(missing_ok=True)

    def __enter__(self) -> FreqtradeWriter:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if kind is not None:
            self.abort()


class _ArrowSink:
    def __init__(self, path: Path, fmt: str) -> None:
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.parquet as parquet  # type: ignore[import-untyped]

        self._pa = pa
        fields = [pa.field("date", pa.timestamp("ms", tz="UTC")), *(pa.field(n, pa.float64()) for n in COLUMNS)]
        self._schema = pa.schema(fields)
        self._writer: Any
        if fmt == "feather":  # feather v2 is the Arrow IPC file format: record batches appended as they come
            options = pa.ipc.IpcWriteOptions(compression="lz4")
            self._writer = pa.ipc.new_file(str(path), self._schema, options=options)
        else:  # each chunk becomes a row group
            self._writer = parquet.ParquetWriter(str(path), self._schema)
        self._closed = False

    def write(self, rows: Sequence[Row]) -> None:
        pa = self._pa
        block = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
        millis = block[:, 0].astype(np.int64) * 1000
        arrays = [pa.array(millis, pa.timestamp("ms", tz="UTC")), *(pa.array(block[:, i]) for i in range(1, 6))]
        self._writer.write_batch(pa.record_batch(arrays, schema=self._schema))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.close()


class _JsonSink:
    def __init__(self, path: Path, fmt: str) -> None:
        # Open across many writes, closed by close() (the writer's commit or abort).
        self._file: gzip.GzipFile | BinaryIO = gzip.open(path, "wb") if fmt == "jsongz" else path.open("wb")  # noqa: SIM115
        self._file.write(b"[")
        self._first = True

    def write(self, rows: Sequence[Row]) -> None:
        text = orjson.dumps([[int(r[0]) * 1000, *r[1:6]] for r in rows])
        if not self._first:
            self._file.write(b",")
        self._file.write(text[1:-1])  # the chunk's rows without its own brackets: one array for the file
        self._first = False

    def close(self) -> None:
        if not self._file.closed:
            self._file.write(b"]")
            self._file.close()
