"""A durable publish's frames, encoded once and shared: a thousand subscribers must not mean a thousand encodings."""

from __future__ import annotations

from collections.abc import Sequence

from protocol.candle import Candle
from protocol.series import SeriesId
from protocol.ws_market import CandlesPiece, Piece, render


class PublishedCandles:
    """One durable publish of one series: encoded at most once per form, shared by every subscriber."""

    __slots__ = ("_batch", "_closed", "candles", "series")

    def __init__(self, series: SeriesId, candles: tuple[Candle, ...]) -> None:
        self.series, self.candles = series, candles
        self._closed: list[str] | None = None
        self._batch: list[str] | None = None

    def first_after(self, last_sent: int | None) -> int | None:
        """The time of the first candle a subscriber at ``last_sent`` has not had (None: nothing new)."""
        return next((c[0] for c in self.candles if last_sent is None or c[0] > last_sent), None)

    def frames(self, *, batch: bool) -> list[str]:
        if batch and len(self.candles) > 1:
            if self._batch is None:
                self._batch = _text(render(str(self.series), [CandlesPiece(self.candles)], batch=True, live=True))
            return self._batch
        if self._closed is None:
            self._closed = _text(render(str(self.series), [CandlesPiece(self.candles)], batch=False, live=True))
        return self._closed


def render_text(series: SeriesId, pieces: Sequence[Piece], *, batch: bool, live: bool) -> list[str]:
    """Frames for one subscriber alone (a catchup, a heal, a publish the gate cut), as text."""
    return _text(render(str(series), pieces, batch=batch, live=live))


def _text(frames: list[bytes]) -> list[str]:
    return [f.decode() for f in frames]
