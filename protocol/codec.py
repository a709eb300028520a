"""The JSON codec of every candle-bearing WebSocket message (docs/protocol.md, "What you receive").

One cattrs converter unstructures the message classes; one function encodes (``encode``) and one decodes
(``decode``). The candle hook builds the wire dict directly: a 5000-candle batch is the common catchup
frame and generic attrs unstructuring would triple its cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs
import cattrs
import orjson

from protocol.candle import Candle, check_candle
from protocol.errors import ProtocolError


class CodecError(ProtocolError):
    """A frame that is not a valid message; the text names the problem."""


@attrs.frozen
class CandleClosed:
    series_id: str
    candle: Candle


@attrs.frozen
class CandlesBatch:
    series_id: str
    candles: tuple[Candle, ...]


@attrs.frozen
class CandleForming:
    series_id: str
    candle: Candle


@attrs.frozen
class Gap:
    series_id: str
    expected_next_time: int
    actual_time: int


@attrs.frozen
class SystemEvent:
    series_id: str
    event: str
    message: str
    data: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class ErrorMessage:
    code: str
    message: str
    series_id: str | None = None


OutMessage = CandleClosed | CandlesBatch | CandleForming | Gap | SystemEvent | ErrorMessage

MESSAGE_TYPES: Final[dict[str, type[Any]]] = {
    "candle_closed": CandleClosed,
    "candles_batch": CandlesBatch,
    "candle_forming": CandleForming,
    "gap": Gap,
    "system": SystemEvent,
    "error": ErrorMessage,
}
_TYPE_NAMES: Final = {cls: name for name, cls in MESSAGE_TYPES.items()}
_CANDLE_FIELDS: Final = ("candle_time", "open", "high", "low", "close", "volume")


def candle_to_wire(c: Candle) -> dict[str, Any]:
    """A candle as its wire object; ``synthetic`` appears only when true."""
    wire: dict[str, Any] = {
        "candle_time": c[0],
        "open": c[1],
        "high": c[2],
        "low": c[3],
        "close": c[4],
        "volume": c[5],
    }
    if c[6]:
        wire["synthetic"] = True
    return wire


def candle_from_wire(obj: object) -> Candle:
    """Parse and validate a wire candle; a bad one raises :class:`CodecError` naming the field."""
    if not isinstance(obj, Mapping):
        raise CodecError(f"candle must be an object, got {type(obj).__name__}")
    values: list[Any] = []
    for name in _CANDLE_FIELDS:
        if name not in obj:
            raise CodecError(f"candle is missing {name!r}")
        value = obj[name]
        if name == "candle_time":
            if type(value) is not int:
                raise CodecError(f"candle_time must be an integer, got {value!r}")
        elif type(value) not in (int, float):
            raise CodecError(f"candle {name} must be a number, got {value!r}")
        else:
            value = float(value)
        values.append(value)
    synthetic = obj.get("synthetic", False)
    if type(synthetic) is not bool:
        raise CodecError(f"candle synthetic must be a boolean, got {synthetic!r}")
    t, o, h, low, c, v = values
    candle = Candle(t, o, h, low, c, v, synthetic)
    try:
        return check_candle(candle)
    except ProtocolError as e:
        raise CodecError(f"invalid candle: {e}") from None


def _strict_int(value: object, _: object) -> int:
    if type(value) is not int:
        raise CodecError(f"expected an integer, got {value!r}")
    return value


def _strict_str(value: object, _: object) -> str:
    if not isinstance(value, str):
        raise CodecError(f"expected a string, got {value!r}")
    return value


def _build_converter() -> cattrs.Converter:
    # cattrs' defaults would coerce ("5" -> 5, 5 -> "5", 1.5 -> 1); a frame must carry the real types.
    conv = cattrs.Converter()
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(str, _strict_str)
    conv.register_unstructure_hook(Candle, candle_to_wire)
    conv.register_structure_hook(Candle, lambda obj, _: candle_from_wire(obj))
    conv.register_unstructure_hook(
        CandlesBatch, lambda m: {"series_id": m.series_id, "candles": [candle_to_wire(c) for c in m.candles]}
    )
    conv.register_structure_hook(
        CandlesBatch,
        lambda obj, _: CandlesBatch(_str(obj, "series_id"), tuple(candle_from_wire(c) for c in _list(obj, "candles"))),
    )

    def unstructure_error(m: ErrorMessage) -> dict[str, Any]:
        out = {"code": m.code, "message": m.message}
        if m.series_id is not None:
            out["series_id"] = m.series_id
        return out

    conv.register_unstructure_hook(ErrorMessage, unstructure_error)
    return conv


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise CodecError(f"{key} must be a string, got {value!r}")
    return value


def _list(obj: Mapping[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise CodecError(f"{key} must be a list, got {type(value).__name__}")
    return value


converter: Final = _build_converter()


def to_wire(msg: OutMessage) -> dict[str, Any]:
    """The JSON-ready dict of a message, ``type`` first."""
    return {"type": _TYPE_NAMES[type(msg)], **converter.unstructure(msg)}


def encode(msg: OutMessage) -> bytes:
    """The one place a message becomes bytes."""
    return orjson.dumps(to_wire(msg))


def decode(data: bytes | str) -> OutMessage:
    """The one place bytes become a message; anything else raises :class:`CodecError`."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise CodecError("invalid json") from None
    if not isinstance(obj, dict):
        raise CodecError("message must be a JSON object")
    kind = obj.pop("type", None)
    if not isinstance(kind, str):
        raise CodecError("missing message type")
    cls = MESSAGE_TYPES.get(kind)
    if cls is None:
        raise CodecError(f"unknown message type: {kind}")
    try:
        msg: OutMessage = converter.structure(obj, cls)
    except CodecError:
        raise
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as e:
        raise CodecError(f"invalid {kind} message: {_describe(e)}") from None
    return msg


def _format_exception(exc: BaseException, type_: object) -> str:
    if isinstance(exc, CodecError):
        return str(exc)
    if isinstance(exc, KeyError):
        return "required field missing"
    return f"invalid value ({exc})"


def _describe(error: Exception) -> str:
    if isinstance(error, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(error, format_exception=_format_exception))
    return str(error)
