"""Repair progress per series, kept in memory: what health and ``klinectl`` show."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Literal

import attrs

from protocol.series import SeriesId

State = Literal["idle", "running", "succeeded", "failed"]
RECENT_MS: Final = 10 * 60 * 1000  # a repair that ended this recently still explains a lag (yellow)


@attrs.define
class Progress:
    series_id: str
    state: State
    reason: str
    started_at_ms: int
    missing_at_start: int
    timeframe_seconds: int
    filled: int = 0
    still_missing: int | None = None
    finished_at_ms: int | None = None
    note: str | None = None
    error: str | None = None

    @property
    def progress_pct(self) -> float | None:
        if self.missing_at_start <= 0:
            return 100.0 if self.state != "running" else None
        return round(min(100.0, 100.0 * self.filled / self.missing_at_start), 1)


class ProgressTracker:
    def __init__(self, now_ms: Callable[[], int]) -> None:
        self._now_ms = now_ms
        self._by_series: dict[str, Progress] = {}

    def begin(self, series: SeriesId, reason: str, missing: int) -> Progress:
        p = Progress(str(series), "running", reason, self._now_ms(), missing, series.timeframe.seconds)
        self._by_series[str(series)] = p
        return p

    def advance(self, p: Progress, filled: int) -> None:
        p.filled += filled

    def succeed(self, p: Progress, still_missing: int, note: str) -> None:
        p.state, p.still_missing, p.note, p.finished_at_ms = "succeeded", still_missing, note, self._now_ms()

    def fail(self, p: Progress, error: str) -> None:
        p.state, p.error, p.finished_at_ms = "failed", error, self._now_ms()

    def get(self, series: SeriesId | str) -> Progress | None:
        return self._by_series.get(str(series))

    def view(self, series: SeriesId | str) -> dict[str, Any]:
        """The ``backfill`` object of the health view."""
        p = self.get(series)
        if p is None:
            return {"state": "idle", "progress_pct": None}
        recent = p.finished_at_ms is not None and self._now_ms() - p.finished_at_ms <= RECENT_MS
        return {
            "state": p.state,
            "progress_pct": p.progress_pct,
            "reason": p.reason,
            "missing_candles": p.missing_at_start,
            "missing_seconds": p.missing_at_start * p.timeframe_seconds,
            "filled_candles": p.filled,
            "still_missing": p.still_missing,
            "note": p.note,
            "error": p.error,
            "started_at_ms": p.started_at_ms,
            "finished_at_ms": p.finished_at_ms,
            "recent": recent,
        }

    def all(self) -> list[dict[str, Any]]:
        return [{"series_id": s, **self.view(s)} for s in self._by_series]
