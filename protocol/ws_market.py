"""The ``/ws/market`` protocol (docs/protocol.md), sans-IO: client commands in, the one gate, frames out.

Every closed candle a subscriber receives, from catchup or live, passes :func:`gate`: only candles after
the subscription's ``last_sent`` cursor, ascending, none twice, none of a period not yet closed (the
ahead clamp), and a :class:`GapPiece` wherever the times jump past the next period.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import attrs
import orjson

from protocol.candle import Candle
from protocol.codec import CandleClosed, CandleForming, CandlesBatch, ErrorMessage, Gap, SystemEvent, encode
from protocol.errors import ProtocolError
from protocol.series import SeriesId
from protocol.timeframes import Timeframe

MAX_MESSAGE_BYTES: Final = 64 * 1024


@attrs.frozen
class Subscribe:
    series: SeriesId
    since: int | None  # None (or 0): no cursor, the latest candles
    supports_batch: bool


@attrs.frozen
class Unsubscribe:
    series: SeriesId


@attrs.frozen
class BadRequest:
    """A frame refused with ``bad_request`` and its exact message (docs/protocol.md, "Errors"); the connection stays."""

    message: str


ClientMessage = Subscribe | Unsubscribe | BadRequest


def parse_client_message(data: str | bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> ClientMessage:
    """One client frame -> a command, or the :class:`BadRequest` that answers it."""
    # A str is measured in UTF-8 bytes, as it came over the wire (no encoding needed below a quarter).
    size = len(data) if isinstance(data, bytes) or len(data) * 4 <= max_bytes else len(data.encode())
    if size > max_bytes:
        return BadRequest("message too large")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return BadRequest("invalid json")
    if not isinstance(obj, dict):
        return BadRequest("invalid message envelope")
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind:
        return BadRequest("missing message type")
    if kind not in ("subscribe", "unsubscribe"):
        return BadRequest(f"unknown message type: {kind[:100]}")
    raw_series = obj.get("series_id")
    if raw_series is None:
        return BadRequest("missing series_id")
    try:
        series = SeriesId.parse(raw_series)
    except ProtocolError as e:
        return BadRequest(f"invalid series_id: {e}")
    if kind == "unsubscribe":
        return Unsubscribe(series)
    since = obj.get("since")
    if since is not None and (type(since) is not int or since < 0):
        return BadRequest("invalid since")
    batch = obj.get("supports_batch")
    if batch is not None and type(batch) is not bool:
        return BadRequest("invalid supports_batch")
    return Subscribe(series, since or None, bool(batch))


# -- the gate --------------------------------------------------------------------------------------


@attrs.frozen
class CandlesPiece:
    """Consecutive candles to send (no hole between them)."""

    candles: tuple[Candle, ...]


@attrs.frozen
class GapPiece:
    expected_next_time: int
    actual_time: int


Piece = CandlesPiece | GapPiece


def gate(
    timeframe: Timeframe, last_sent: int | None, candles: Iterable[Candle], *, closed_through: int
) -> tuple[list[Piece], int | None]:
    """What of ``candles`` (ascending) a subscriber at ``last_sent`` gets, and its cursor afterwards.

    ``closed_through`` is the open time of the latest closed period by the exchange clock: later candles
    are held back (the ahead clamp). A jump past ``last_sent``'s next period is a :class:`GapPiece`.
    """
    pieces: list[Piece] = []
    run: list[Candle] = []
    for c in candles:
        t = c[0]
        if last_sent is not None and t <= last_sent:
            continue  # sent already (or older than what the subscriber has): never twice, never backwards
        if t > closed_through:
            break  # ascending: everything after is ahead too
        if last_sent is not None:
            expected = timeframe.next_open(last_sent)
            if t != expected:
                if run:
                    pieces.append(CandlesPiece(tuple(run)))
                    run = []
                pieces.append(GapPiece(expected, t))
        run.append(c)
        last_sent = t
    if run:
        pieces.append(CandlesPiece(tuple(run)))
    return pieces, last_sent


def render(series_id: str, pieces: Sequence[Piece], *, batch: bool, live: bool) -> list[bytes]:
    """Frames for gate pieces. Catchup goes as batches to batch subscribers; live, a single candle goes
    as ``candle_closed`` even to them and several as one ``candles_batch``."""
    frames: list[bytes] = []
    for piece in pieces:
        if isinstance(piece, GapPiece):
            frames.append(encode(Gap(series_id, piece.expected_next_time, piece.actual_time)))
        elif batch and (not live or len(piece.candles) > 1):
            frames.append(encode(CandlesBatch(series_id, piece.candles)))
        else:
            frames.extend(encode(CandleClosed(series_id, c)) for c in piece.candles)
    return frames


def forming_frame(series_id: str, candle: Candle) -> bytes:
    return encode(CandleForming(series_id, candle))


def system_frame(series_id: str, event: str, message: str, data: dict[str, Any] | None = None) -> str:
    return encode(SystemEvent(series_id, event, message, data or {})).decode()


def error_frame(code: str, message: str, series_id: str | None = None) -> bytes:
    return encode(ErrorMessage(code, message, series_id))
