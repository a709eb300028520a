"""Binance payloads parsed into typed results: market-stream messages (kline and aggTrade streams, spot
and USD-M futures) and the REST ``exchangeInfo`` listing.

Nothing in a stream raises on bad input: every message becomes a :data:`StreamMessage`, malformed ones a
:class:`MalformedPayload` whose reason names what is wrong (the ingest logs and counts it, then moves on).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import attrs
import msgspec
import orjson

from protocol.candle import Candle, check_candle
from protocol.errors import ExchangeInfoError, ProtocolError
from protocol.series import Market, SeriesId
from protocol.timeframes import TIMEFRAMES, Timeframe

RAW_LIMIT: Final = 200
_KLINE_FIELDS: Final = ("t", "T", "s", "i", "f", "L", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q", "B")


class KlineUpdate(NamedTuple):
    """One kline event: the candle so far (``is_final`` false: forming) or the closed one.

    A NamedTuple, as :class:`~protocol.candle.Candle`: one is built for every upstream message, and a tuple
    builds in a fraction of the time of a frozen attrs instance."""

    series_id: SeriesId
    candle: Candle
    is_final: bool
    event_time_ms: int
    close_time_ms: int
    trades: int
    quote_volume: float


class AggTrade(NamedTuple):
    """One aggregated trade (``<symbol>@aggTrade``): what the trade-driven source builds candles from (a
    NamedTuple for the same reason as :class:`KlineUpdate`)."""

    symbol_id: str
    agg_id: int
    price: float
    quantity: float
    trade_time_ms: int
    event_time_ms: int
    buyer_is_maker: bool


@attrs.frozen
class ControlReply:
    """The answer to SUBSCRIBE / UNSUBSCRIBE (``result`` None) or LIST_SUBSCRIPTIONS (a list)."""

    id: int | None
    result: object


@attrs.frozen
class ControlError:
    id: int | None
    code: int
    message: str


@attrs.frozen
class ServerShutdown:
    """Binance will close this connection soon: reconnect now."""

    event_time_ms: int


@attrs.frozen
class MalformedPayload:
    reason: str
    raw: str


StreamMessage = KlineUpdate | AggTrade | ControlReply | ControlError | ServerShutdown | MalformedPayload


class _MalformedError(Exception):
    """Internal: a reason a payload is malformed."""


def stream_name(symbol_id: str, timeframe: Timeframe) -> str:
    """Binance's stream name, e.g. ``btcusdt@kline_1m``."""
    return f"{symbol_id.lower()}@kline_{timeframe.name}"


def parse_stream_message(
    raw: str | bytes, *, exchange: str, market: Market, symbols: Mapping[str, str]
) -> StreamMessage:
    """Parse one WebSocket text frame; ``symbols`` maps exchange symbol ids (``BTCUSDT``) to ``BTC/USDT``."""
    message: StreamMessage | None = None
    if raw.startswith(_COMBINED_TEXT if type(raw) is str else _COMBINED_BYTES):  # type: ignore[arg-type]
        try:
            message = _combined(_decode_combined(raw), exchange, market, symbols)
        except (msgspec.DecodeError, ValueError):  # not exactly a well-formed combined frame: the paths below
            message = None
        if message is not None:
            return message
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _malformed("not JSON", raw)
    try:
        message = _well_formed(obj, exchange, market, symbols)
    except (KeyError, TypeError, ValueError):  # a field missing or of the wrong kind
        message = None
    if message is not None:
        return message
    try:
        return _parse_object(obj, exchange, market, symbols)
    except _MalformedError as e:
        return _malformed(str(e), raw)


# -- the fast path ---------------------------------------------------------------------------------------
# Nearly every frame is a well-formed trade or kline: it is checked in a few operations that run in C, and
# accepted only where the precise path below would accept it, with the same result. Anything else (control
# replies, malformed payloads, rare forms such as integral decimals or a monthly kline) returns None or
# raises, and the precise path parses it again and names what is wrong.

# What the upstream reader receives is a combined-stream frame: msgspec decodes it straight into typed fields
# (in C, cheaper than building the dicts of a plain JSON parse), so that what is left in Python is the checks
# that are not about types. A frame of any other shape, or a field of another type, raises here and goes on.


class _TradeData(msgspec.Struct, tag_field="e", tag="aggTrade"):
    s: str
    a: int
    p: str
    q: str
    f: int
    l: int  # noqa: E741 (Binance's name)
    T: int
    E: int
    m: bool


class _KlineBody(msgspec.Struct):
    t: int
    T: int
    s: str
    i: str
    f: int
    L: int
    o: str
    c: str
    h: str
    l: str  # noqa: E741 (Binance's name)
    v: str
    n: int
    x: bool
    q: str
    V: str
    Q: str
    B: Any


class _KlineData(msgspec.Struct, tag_field="e", tag="kline"):
    E: int
    s: str
    k: _KlineBody


class _Combined(msgspec.Struct, forbid_unknown_fields=True):
    stream: str
    data: _TradeData | _KlineData


_decode_combined: Final = msgspec.json.Decoder(_Combined).decode
_COMBINED_TEXT: Final = '{"stream":'  # how Binance begins every combined frame (other frames skip the decoder)
_COMBINED_BYTES: Final = _COMBINED_TEXT.encode()
_TRADE_STREAMS: dict[str, str] = {}  # symbol id -> its aggTrade stream name, built once


def _trade_stream(symbol_id: str) -> str:
    name = _TRADE_STREAMS[symbol_id] = symbol_id.lower() + "@aggTrade"
    return name


def _combined(
    frame: _Combined, exchange: str, market: Market, symbols: Mapping[str, str]
) -> KlineUpdate | AggTrade | None:
    """The fast path's answer for a decoded combined frame (types already checked), or None."""
    data = frame.data
    if isinstance(data, _TradeData):
        symbol_id = data.s
        if symbol_id not in symbols or frame.stream != (_TRADE_STREAMS.get(symbol_id) or _trade_stream(symbol_id)):
            return None
        return _trade(symbol_id, data.p, data.q, data.a, data.T, data.E, data.m)
    k = data.k
    symbol_id = k.s
    if data.s != symbol_id or symbol_id not in symbols:
        return None
    found = _kline_series(exchange, market, symbols[symbol_id], symbol_id, k.i)
    if found is None or frame.stream != found[1]:
        return None
    decimals = f"[{k.o},{k.h},{k.l},{k.c},{k.v},{k.q},{k.V},{k.Q}]"
    return _kline(found, k.t, k.T, decimals, k.x, data.E, k.n)


_KLINE_VALUES: Final = operator.itemgetter(*_KLINE_FIELDS)
_TRADE_VALUES: Final = operator.itemgetter("s", "p", "q", "m", "a", "T", "E", "f", "l")
_new_tuple: Final = tuple.__new__


def _well_formed(obj: Any, exchange: str, market: Market, symbols: Mapping[str, str]) -> KlineUpdate | AggTrade | None:
    if type(obj) is not dict:
        return None
    if len(obj) == 2:
        stream, data = obj["stream"], obj["data"]
        if type(stream) is not str:
            return None
    elif "stream" in obj or "data" in obj or "id" in obj:
        return None
    else:
        stream, data = None, obj
    event = data["e"]
    if event == "aggTrade":
        return _well_formed_trade(data, stream, symbols)
    if event == "kline":
        return _well_formed_kline(data, stream, exchange, market, symbols)
    return None


def _well_formed_trade(data: dict[str, Any], stream: object, symbols: Mapping[str, str]) -> AggTrade | None:
    symbol_id, p, q, maker, agg_id, trade_ms, event_ms, first, last = _TRADE_VALUES(data)
    if not (
        type(symbol_id) is str
        and symbol_id in symbols
        and type(agg_id) is type(trade_ms) is type(event_ms) is type(first) is type(last) is int
        and type(maker) is bool
        and type(p) is type(q) is str
        and (stream is None or stream == (_TRADE_STREAMS.get(symbol_id) or _trade_stream(symbol_id)))
    ):
        return None
    return _trade(symbol_id, p, q, agg_id, trade_ms, event_ms, maker)


def _well_formed_kline(
    data: dict[str, Any], stream: object, exchange: str, market: Market, symbols: Mapping[str, str]
) -> KlineUpdate | None:
    open_ms, close_ms, symbol_id, interval, first, last, o, c, h, low, v, trades, is_final, q, tv, tq, _ = (
        _KLINE_VALUES(data["k"])
    )
    event_ms = data["E"]
    if not (
        type(symbol_id) is str
        and data["s"] == symbol_id
        and type(open_ms) is type(close_ms) is type(first) is type(last) is type(trades) is type(event_ms) is int
        and type(is_final) is bool
    ):
        return None
    found = _kline_series(exchange, market, symbols[symbol_id], symbol_id, interval)
    if found is None or (stream is not None and stream != found[1]):
        return None
    decimals = f"[{','.join((o, h, low, c, v, q, tv, tq))}]"
    return _kline(found, open_ms, close_ms, decimals, is_final, event_ms, trades)


def _trade(symbol_id: str, p: str, q: str, agg_id: int, trade_ms: int, event_ms: int, maker: bool) -> AggTrade | None:
    """A trade whose fields are of the right kinds (both fast paths check that their own way): its decimals
    read and checked as the precise path checks them."""
    text = f"[{p},{q}]"
    if "e" in text or "E" in text:
        return None
    price, quantity = _loads(text)
    if not (type(price) is type(quantity) is float and price > 0.0 and quantity >= 0.0):
        return None
    return _new_tuple(AggTrade, (symbol_id, agg_id, price, quantity, trade_ms, event_ms, maker))


def _kline(
    found: tuple[SeriesId, str, int, int],
    open_ms: int,
    close_ms: int,
    decimals: str,
    is_final: bool,
    event_ms: int,
    trades: int,
) -> KlineUpdate | None:
    """A kline of a known series whose fields are of the right kinds, ``decimals`` its eight decimal texts
    as one JSON array (o, h, l, c, v, q, V, Q): its period and decimals checked as the precise path checks
    them."""
    series, _, period_ms, offset_ms = found
    if open_ms < 0 or (open_ms - offset_ms) % period_ms or close_ms != open_ms + period_ms - 1:
        return None
    if "e" in decimals or "E" in decimals:
        return None
    o, h, low, c, v, q, tv, tq = _loads(decimals)
    if not (
        type(o) is type(h) is type(low) is type(c) is type(v) is type(q) is type(tv) is type(tq) is float
        and low <= o <= h
        and low <= c <= h
        and v >= 0.0
    ):
        return None
    candle = _new_tuple(Candle, (open_ms // 1000, o, h, low, c, v, False))
    return _new_tuple(KlineUpdate, (series, candle, is_final, event_ms, close_ms, trades, q))


# Binance's decimals (a JSON array of them) are read by orjson, correctly rounded and several times faster than
# ``float``. Only the forms :func:`_dec` accepts get through: no exponent (checked before), no NaN nor
# infinity (orjson raises on an overflow), and a dot in each (else an int, which the fast path leaves alone).
_loads: Final = orjson.loads


@functools.lru_cache(maxsize=4096)
def _kline_series(
    exchange: str, market: Market, symbol: str, symbol_id: str, interval: object
) -> tuple[SeriesId, str, int, int] | None:
    """A kline's series, its stream name, and its timeframe's period and phase in ms (each kline of the
    series asks again: built once). None for a monthly kline (its length varies), or an unknown interval."""
    timeframe = TIMEFRAMES.get(interval) if type(interval) is str else None
    if timeframe is None or timeframe.is_calendar:
        return None
    series = SeriesId(exchange=exchange, market=market, symbol=symbol, timeframe=timeframe)
    period = timeframe.seconds
    return series, stream_name(symbol_id, timeframe), period * 1000, timeframe.floor(0) % period * 1000


# -- the precise path ------------------------------------------------------------------------------------


def _malformed(reason: str, raw: str | bytes) -> MalformedPayload:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else str(raw)
    return MalformedPayload(reason, text[:RAW_LIMIT])


def _parse_object(obj: Any, exchange: str, market: Market, symbols: Mapping[str, str]) -> StreamMessage:
    if not isinstance(obj, dict):
        raise _MalformedError("not a JSON object")
    if "id" in obj and ("result" in obj or "error" in obj):
        return _parse_control(obj)
    stream: str | None = None
    if "stream" in obj or "data" in obj:
        stream, obj = obj.get("stream"), obj.get("data")
        if not isinstance(stream, str):
            raise _MalformedError("combined envelope without a stream name")
        if not isinstance(obj, dict):
            raise _MalformedError("combined envelope without a data object")
    event = obj.get("e")
    if event == "serverShutdown":
        return ServerShutdown(_int(obj, "E"))
    if event == "aggTrade":
        trade = _parse_agg_trade(obj, symbols)
        if stream is not None and stream != f"{trade.symbol_id.lower()}@aggTrade":
            raise _MalformedError(f"stream {stream!r} does not match its event ({trade.symbol_id.lower()}@aggTrade)")
        return trade
    if event != "kline":
        raise _MalformedError(f"unsupported event type {event!r}")
    update = _parse_kline(obj, exchange, market, symbols)
    if stream is not None:
        expected = stream_name(update.series_id.symbol_id, update.series_id.timeframe)
        if stream != expected:
            raise _MalformedError(f"stream {stream!r} does not match its event ({expected!r})")
    return update


def _parse_control(obj: dict[str, Any]) -> ControlReply | ControlError:
    msg_id = obj["id"]
    if msg_id is not None and (type(msg_id) is not int):
        raise _MalformedError(f"control reply id must be an integer or null, got {msg_id!r}")
    if "error" in obj:
        error = obj["error"]
        if not isinstance(error, dict):
            raise _MalformedError("control error without an error object")
        code, message = error.get("code"), error.get("msg")
        if type(code) is not int or not isinstance(message, str):
            raise _MalformedError("control error needs an integer code and a string msg")
        return ControlError(msg_id, code, message)
    return ControlReply(msg_id, obj["result"])


def _parse_kline(obj: dict[str, Any], exchange: str, market: Market, symbols: Mapping[str, str]) -> KlineUpdate:
    k = obj.get("k")
    if not isinstance(k, dict):
        raise _MalformedError("kline event without a 'k' object")
    for name in _KLINE_FIELDS:
        if name not in k:
            raise _MalformedError(f"kline field {name!r} is missing")
    symbol_id = _str(k, "s")
    if obj.get("s") != symbol_id:
        raise _MalformedError(f"event symbol {obj.get('s')!r} differs from kline symbol {symbol_id!r}")
    symbol = symbols.get(symbol_id)
    if symbol is None:
        raise _MalformedError(f"unknown symbol {symbol_id!r}")
    interval = _str(k, "i")
    timeframe = TIMEFRAMES.get(interval)
    if timeframe is None:
        raise _MalformedError(f"interval {interval!r} is not a timeframe")
    open_ms, close_ms = _int(k, "t"), _int(k, "T")
    if open_ms % 1000:
        raise _MalformedError(f"open time {open_ms} is not a whole second")
    open_s = open_ms // 1000
    if not timeframe.is_aligned(open_s):
        raise _MalformedError(f"open time {open_ms} not aligned to {interval}")
    if close_ms != timeframe.next_open(open_s) * 1000 - 1:
        raise _MalformedError(f"close time {close_ms} is not the end of the {interval} period opening at {open_ms}")
    is_final = k["x"]
    if type(is_final) is not bool:
        raise _MalformedError(f"kline field 'x' must be a boolean, got {is_final!r}")
    for name in ("f", "L"):
        _int(k, name)
    trades = _int(k, "n")
    candle = Candle(open_s, _dec(k, "o"), _dec(k, "h"), _dec(k, "l"), _dec(k, "c"), _dec(k, "v"))
    for name in ("V", "Q"):
        _dec(k, name)
    try:
        check_candle(candle, timeframe)
        series = SeriesId(exchange=exchange, market=market, symbol=symbol, timeframe=timeframe)
    except ProtocolError as e:
        raise _MalformedError(str(e)) from None
    return KlineUpdate(series, candle, is_final, _int(obj, "E"), close_ms, trades, _dec(k, "q"))


def _parse_agg_trade(obj: dict[str, Any], symbols: Mapping[str, str]) -> AggTrade:
    symbol_id = _str(obj, "s")
    if symbol_id not in symbols:
        raise _MalformedError(f"unknown symbol {symbol_id!r}")
    price, quantity = _dec(obj, "p"), _dec(obj, "q")
    if price <= 0 or quantity < 0:
        raise _MalformedError(f"aggTrade price must be > 0 and quantity >= 0, got {price} x {quantity}")
    maker = obj.get("m")
    if type(maker) is not bool:
        raise _MalformedError(f"aggTrade field 'm' must be a boolean, got {maker!r}")
    for name in ("f", "l"):
        _int(obj, name)
    return AggTrade(symbol_id, _int(obj, "a"), price, quantity, _int(obj, "T"), _int(obj, "E"), maker)


def agg_trade_event(symbol_id: str, trade: AggTrade) -> dict[str, Any]:
    """Binance's aggTrade payload for ``trade`` (the fake exchange sends these)."""
    return {
        "e": "aggTrade",
        "E": trade.event_time_ms,
        "s": symbol_id,
        "a": trade.agg_id,
        "p": format_decimal(trade.price),
        "q": format_decimal(trade.quantity),
        "f": trade.agg_id,
        "l": trade.agg_id,
        "T": trade.trade_time_ms,
        "m": trade.buyer_is_maker,
        "M": True,
    }


def _int(obj: Mapping[str, Any], name: str) -> int:
    value = obj.get(name)
    if type(value) is not int:
        raise _MalformedError(f"field {name!r} must be an integer, got {value!r}")
    return value


def _str(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise _MalformedError(f"field {name!r} must be a string, got {value!r}")
    return value


def _dec(obj: Mapping[str, Any], name: str) -> float:
    """A Binance decimal string (``"0.0010"``) as a finite float."""
    value = obj.get(name)
    if not isinstance(value, str):
        raise _MalformedError(f"kline field {name!r} is not a decimal string: {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise _MalformedError(f"kline field {name!r} is not a decimal string: {value!r}") from None
    if not math.isfinite(number) or not value.strip().lstrip("+-").replace(".", "", 1).isdigit():
        raise _MalformedError(f"kline field {name!r} is not a finite decimal: {value!r}")
    return number


@attrs.frozen
class Listing:
    """A symbol the exchange trades now (one row of ``exchangeInfo``)."""

    symbol_id: str  # the exchange's id, e.g. ``BTCUSDT``
    base_asset: str
    quote_asset: str

    @property
    def symbol(self) -> str:
        return f"{self.base_asset}/{self.quote_asset}"


def parse_exchange_info(info: object, *, futures: bool) -> dict[str, Listing]:
    """The symbols trading now in an ``exchangeInfo`` answer, by symbol id; futures keep perpetual contracts
    only. A malformed row is skipped (one odd symbol must not hide the rest); an answer without a list of
    symbols raises :class:`~protocol.errors.ExchangeInfoError`."""
    rows = info.get("symbols") if isinstance(info, dict) else None
    if not isinstance(rows, list):
        raise ExchangeInfoError("exchangeInfo without a symbols list")
    out: dict[str, Listing] = {}
    for row in rows:
        if not isinstance(row, dict) or row.get("status") != "TRADING":
            continue
        if futures and row.get("contractType") != "PERPETUAL":
            continue
        symbol_id, base, quote = row.get("symbol"), row.get("baseAsset"), row.get("quoteAsset")
        if isinstance(symbol_id, str) and isinstance(base, str) and isinstance(quote, str):
            out[symbol_id] = Listing(symbol_id, base, quote)
    return out


def format_decimal(value: float, places: int = 8) -> str:
    """Binance's fixed-point decimal text."""
    return f"{value:.{places}f}"


def kline_event(
    series_id: SeriesId,
    candle: Candle,
    *,
    is_final: bool,
    event_time_ms: int,
    first_trade_id: int = 0,
    last_trade_id: int = -1,
    trades: int = 0,
    quote_volume: float = 0.0,
    taker_buy_volume: float = 0.0,
    taker_buy_quote_volume: float = 0.0,
) -> dict[str, object]:
    """A kline event in exactly Binance's format (the fake exchange and tests send these)."""
    tf = series_id.timeframe
    open_ms = candle.candle_time * 1000
    return {
        "e": "kline",
        "E": event_time_ms,
        "s": series_id.symbol_id,
        "k": {
            "t": open_ms,
            "T": tf.next_open(candle.candle_time) * 1000 - 1,
            "s": series_id.symbol_id,
            "i": tf.name,
            "f": first_trade_id,
            "L": last_trade_id,
            "o": format_decimal(candle.open),
            "c": format_decimal(candle.close),
            "h": format_decimal(candle.high),
            "l": format_decimal(candle.low),
            "v": format_decimal(candle.volume),
            "n": trades,
            "x": is_final,
            "q": format_decimal(quote_volume),
            "V": format_decimal(taker_buy_volume),
            "Q": format_decimal(taker_buy_quote_volume),
            "B": "0",
        },
    }
