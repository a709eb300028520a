"""One log event as a JetStream message body (sans-IO), so that every node rebuilds the same event.

The stream's sequence is the log's ``seq``: a message carries everything of its event but the seq. The body
is JSON (orjson writes floats exactly as ``repr``, which reads back to the same float), compact, and named
by field so that a node of the next version can read what this one wrote.
"""

from __future__ import annotations

from typing import Any

import orjson

from protocol.candle import Candle
from protocol.errors import ProtocolError
from protocol.logrecords import EventKind, LogEvent

_KINDS = {kind.wire_name: kind for kind in EventKind}


class ClusterEventError(ProtocolError):
    """A stream message that is not a klined log event."""


def encode_event(kind: EventKind, series_id: str, candle: Candle, previous: Candle | None = None) -> bytes:
    body: dict[str, Any] = {"k": kind.wire_name, "s": series_id, "c": list(candle)}
    if previous is not None:
        body["p"] = list(previous)
    return orjson.dumps(body)


def decode_event(seq: int, data: bytes) -> LogEvent:
    """The event a message at stream sequence ``seq`` carries."""
    try:
        body = orjson.loads(data)
        kind = _KINDS[body["k"]]
        series_id = body["s"]
        candle = _candle(body["c"])
        previous = _candle(body["p"]) if "p" in body else None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ClusterEventError(f"stream message {seq} is not a log event: {e!r}") from None
    if type(series_id) is not str:
        raise ClusterEventError(f"stream message {seq} has no series id")
    return LogEvent(seq, kind, series_id, candle, previous)


def _candle(fields: list[Any]) -> Candle:
    t, o, h, low, c, v, synthetic = fields
    if type(t) is not int or type(synthetic) is not bool:
        raise TypeError("candle time must be an integer and synthetic a boolean")
    return Candle(t, float(o), float(h), float(low), float(c), float(v), synthetic)


def encode_forming(series_id: str, candle: Candle) -> bytes:
    """A forming candle the writer relays to the replicas (core NATS, never stored)."""
    return orjson.dumps({"s": series_id, "c": list(candle)})


def decode_forming(data: bytes) -> tuple[str, Candle]:
    try:
        body = orjson.loads(data)
        series_id, candle = body["s"], _candle(body["c"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ClusterEventError(f"not a forming candle: {e!r}") from None
    if type(series_id) is not str:
        raise ClusterEventError("a forming candle without a series id")
    return series_id, candle
