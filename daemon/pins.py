"""Run-time whitelist changes (``klinectl pin`` / ``unpin``), persisted in ``<data_dir>/pins.json`` so they
survive a restart. The effective whitelist is the config's, plus pinned, minus unpinned."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import orjson

from protocol.series import SeriesId


class RuntimePins:
    """The operator's whitelist: the configured series (re-read on SIGHUP) and the run-time pins and unpins."""

    def __init__(self, path: Path, configured: Iterable[SeriesId] = ()) -> None:
        self.path = path
        self.configured: list[SeriesId] = list(configured)
        self.pinned: list[str] = []
        self.unpinned: list[str] = []
        self.trade_symbols: list[str] = []  # discovered listings built from trades ("binance:spot:NEW/USDT")
        if path.is_file():
            data = orjson.loads(path.read_bytes())
            self.pinned = [str(SeriesId.parse(s)) for s in data.get("pinned", [])]
            self.unpinned = [str(SeriesId.parse(s)) for s in data.get("unpinned", [])]
            self.trade_symbols = [str(s) for s in data.get("trade_symbols", [])]

    def reload(self, configured: Iterable[SeriesId]) -> None:
        """The config's whitelist changed (SIGHUP); the pins stand."""
        self.configured = list(configured)

    def effective(self, configured: Iterable[SeriesId] | None = None) -> list[SeriesId]:
        out = dict.fromkeys(str(s) for s in (self.configured if configured is None else configured))
        out.update(dict.fromkeys(self.pinned))
        for s in self.unpinned:
            out.pop(s, None)
        return [SeriesId.parse(s) for s in out]

    def pin(self, series: SeriesId) -> None:
        text = str(series)
        if text in self.unpinned:
            self.unpinned.remove(text)
        if text not in self.pinned:
            self.pinned.append(text)
        self._save()

    def unpin(self, series: SeriesId) -> None:
        text = str(series)
        if text in self.pinned:
            self.pinned.remove(text)
        if text not in self.unpinned:
            self.unpinned.append(text)
        self._save()

    def listed(self, series: SeriesId) -> None:
        """A discovered listing: pinned, and built from its trades."""
        key = f"{series.exchange}:{series.market}:{series.symbol}"
        if key not in self.trade_symbols:
            self.trade_symbols.append(key)
        self.pin(series)

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        data = {"pinned": self.pinned, "unpinned": self.unpinned, "trade_symbols": self.trade_symbols}
        tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.replace(self.path)  # atomic: a crash leaves the old or the new file, never half of one
