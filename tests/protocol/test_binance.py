"""Binance kline stream payloads: the exact real formats parse; anything malformed is a typed result."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.binance import (
    ControlError,
    ControlReply,
    KlineUpdate,
    Listing,
    MalformedPayload,
    ServerShutdown,
    kline_event,
    parse_exchange_info,
    parse_stream_message,
    stream_name,
)
from protocol.candle import Candle
from protocol.errors import ExchangeInfoError
from protocol.series import Market, SeriesId
from protocol.timeframes import TIMEFRAMES

SYMBOLS = {"BTCUSDT": "BTC/USDT", "BNBBTC": "BNB/BTC"}
# The sample of Binance's own documentation, verbatim.
SAMPLE: dict[str, Any] = {
    "e": "kline",
    "E": 1672515782136,
    "s": "BNBBTC",
    "k": {
        "t": 1672515780000,
        "T": 1672515839999,
        "s": "BNBBTC",
        "i": "1m",
        "f": 100,
        "L": 200,
        "o": "0.0010",
        "c": "0.0020",
        "h": "0.0025",
        "l": "0.0015",
        "v": "1000",
        "n": 100,
        "x": False,
        "q": "1.0000",
        "V": "500",
        "Q": "0.500",
        "B": "123456",
    },
}


def parse(payload: object, market: Market = "spot") -> object:
    raw = payload if isinstance(payload, str | bytes) else orjson.dumps(payload)
    return parse_stream_message(raw, exchange="binance", market=market, symbols=SYMBOLS)


def sample(**k_changes: object) -> dict[str, Any]:
    out = copy.deepcopy(SAMPLE)
    out["k"].update(k_changes)
    return out


def test_documentation_sample_parses_except_its_low_above_open() -> None:
    # Binance's doc sample has low 0.0015 above open 0.0010: an impossible candle, and we say so.
    result = parse(SAMPLE)
    assert isinstance(result, MalformedPayload)
    assert "low 0.0015 must be <= min(open, close)" in result.reason


@pytest.mark.parametrize("market", ["spot", "futures"])
def test_raw_and_combined_kline(market: Market) -> None:
    payload = sample(l="0.0009")
    raw = parse(payload, market)
    assert isinstance(raw, KlineUpdate)
    assert raw.series_id == SeriesId.parse(f"binance:{market}:BNB/BTC:1m")
    assert raw.candle == Candle(1672515780, 0.001, 0.0025, 0.0009, 0.002, 1000.0)
    assert (raw.is_final, raw.event_time_ms, raw.close_time_ms, raw.trades, raw.quote_volume) == (
        False,
        1672515782136,
        1672515839999,
        100,
        1.0,
    )
    combined = parse({"stream": "bnbbtc@kline_1m", "data": payload}, market)
    assert combined == raw


def test_futures_extra_keys_are_ignored_and_final_flag_read() -> None:
    payload = sample(l="0.0009", x=True)
    payload["k"]["extra"] = 1
    payload["ps"] = "BNBBTC"
    result = parse(payload, "futures")
    assert isinstance(result, KlineUpdate)
    assert result.is_final is True


@pytest.mark.parametrize("field", ["t", "T", "s", "i", "f", "L", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q", "B"])
def test_each_missing_field_is_named(field: str) -> None:
    payload = sample(l="0.0009")
    del payload["k"][field]
    result = parse(payload)
    assert isinstance(result, MalformedPayload)
    assert f"kline field {field!r} is missing" == result.reason


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"o": 0.001}, "kline field 'o' is not a decimal string"),
        ({"o": "abc"}, "kline field 'o' is not a decimal string"),
        ({"c": "NaN"}, "kline field 'c' is not a finite decimal"),
        ({"h": "Infinity"}, "kline field 'h' is not a finite decimal"),
        ({"v": "1e3"}, "kline field 'v' is not a finite decimal"),
        ({"v": "-5"}, "volume must be >= 0"),
        ({"t": True}, "field 't' must be an integer"),
        ({"t": "1672515780000"}, "field 't' must be an integer"),
        ({"n": 1.5}, "field 'n' must be an integer"),
        ({"x": 1}, "kline field 'x' must be a boolean"),
        ({"i": "7m"}, "interval '7m' is not a timeframe"),
        ({"t": 1672515781000, "T": 1672515840999}, "open time 1672515781000 not aligned to 1m"),
        ({"t": 1672515780500}, "open time 1672515780500 is not a whole second"),
        ({"T": 1672515840000}, "close time 1672515840000 is not the end of the 1m period"),
        ({"s": "XYZUSDT"}, "differs from kline symbol"),
        ({"h": "0.0001"}, "high 0.0001 must be >= max(open, close)"),
    ],
)
def test_malformed_kline_fields(changes: dict[str, object], reason: str) -> None:
    result = parse(sample(l="0.0009", **changes))
    assert isinstance(result, MalformedPayload)
    assert reason in result.reason


def test_unknown_symbol() -> None:
    payload = sample(l="0.0009", s="XYZUSDT")
    payload["s"] = "XYZUSDT"
    result = parse(payload)
    assert isinstance(result, MalformedPayload)
    assert result.reason == "unknown symbol 'XYZUSDT'"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        ('{"e":"kline"', "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"text"', "not a JSON object"),
        (b'{"e":"trade"}', "unsupported event type 'trade'"),
        (b'{"e":"kline","E":1,"s":"BTCUSDT"}', "kline event without a 'k' object"),
        (b'{"stream":"x","data":[]}', "combined envelope without a data object"),
        (b'{"stream":5,"data":{}}', "combined envelope without a stream name"),
    ],
)
def test_not_a_kline_at_all(raw: bytes | str, reason: str) -> None:
    result = parse(raw)
    assert isinstance(result, MalformedPayload)
    assert result.reason == reason
    assert len(result.raw) <= 200


def test_envelope_must_match_its_event() -> None:
    result = parse({"stream": "btcusdt@kline_1m", "data": sample(l="0.0009")})
    assert isinstance(result, MalformedPayload)
    assert "does not match its event" in result.reason


def test_control_replies_and_errors() -> None:
    assert parse(b'{"result":null,"id":1}') == ControlReply(1, None)
    assert parse(b'{"result":["btcusdt@kline_1m"],"id":3}') == ControlReply(3, ["btcusdt@kline_1m"])
    assert parse(b'{"error":{"code":2,"msg":"Invalid request"},"id":5}') == ControlError(5, 2, "Invalid request")
    assert parse(b'{"error":{"code":2,"msg":"Invalid request"},"id":null}') == ControlError(None, 2, "Invalid request")
    assert isinstance(parse(b'{"error":"x","id":5}'), MalformedPayload)
    assert isinstance(parse(b'{"result":null,"id":"5"}'), MalformedPayload)


def test_server_shutdown_raw_and_enveloped() -> None:
    assert parse(b'{"e":"serverShutdown","E":1700000000000}') == ServerShutdown(1700000000000)
    enveloped = b'{"stream":"btcusdt@kline_1m","data":{"e":"serverShutdown","E":1700000000000}}'
    assert parse(enveloped) == ServerShutdown(1700000000000)


def test_stream_name() -> None:
    assert stream_name("BTCUSDT", TIMEFRAMES["1m"]) == "btcusdt@kline_1m"
    assert stream_name("ETHUSDT", TIMEFRAMES["1M"]) == "ethusdt@kline_1M"


# -- properties -------------------------------------------------------------------------------------

prices = st.integers(1, 10**12).map(lambda n: n / 10**8)


@st.composite
def aligned_candles(draw: st.DrawFn) -> tuple[SeriesId, Candle]:
    tf = TIMEFRAMES[draw(st.sampled_from(list(TIMEFRAMES)))]
    t = tf.floor(draw(st.integers(40 * 86400, 4_000_000_000)))  # after the first Monday and month
    o, c = draw(prices), draw(prices)
    h, low = max(o, c) + draw(prices), max(min(o, c) - draw(prices), 0.0)
    low = round(low, 8)
    h = round(h, 8)
    candle = Candle(t, o, h, low, c, draw(prices))
    market = draw(st.sampled_from(["spot", "futures"]))
    return SeriesId.parse(f"binance:{market}:BTC/USDT:{tf.name}"), candle


@given(aligned_candles(), st.booleans())
def test_kline_event_round_trips(pair: tuple[SeriesId, Candle], final: bool) -> None:
    series, candle = pair
    payload = kline_event(series, candle, is_final=final, event_time_ms=candle.candle_time * 1000 + 5)
    assert set(payload["k"]) == {  # type: ignore[call-overload]
        "t",
        "T",
        "s",
        "i",
        "f",
        "L",
        "o",
        "c",
        "h",
        "l",
        "v",
        "n",
        "x",
        "q",
        "V",
        "Q",
        "B",
    }
    result = parse(payload, series.market)
    assert isinstance(result, KlineUpdate), result
    assert (result.series_id, result.candle, result.is_final) == (series, candle, final)
    combined = parse({"stream": stream_name(series.symbol_id, series.timeframe), "data": payload}, series.market)
    assert combined == result


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=20,
)


@given(st.binary(max_size=300) | st.text(max_size=300))
def test_arbitrary_bytes_never_raise(raw: bytes | str) -> None:
    assert parse(raw) is not None


@given(st.dictionaries(st.sampled_from(["e", "E", "s", "k", "stream", "data", "id", "result", "error"]), json_values))
def test_arbitrary_objects_never_raise(obj: dict[str, object]) -> None:
    result = parse(orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS))
    assert isinstance(result, KlineUpdate | ControlReply | ControlError | ServerShutdown | MalformedPayload)


@given(st.dictionaries(st.sampled_from(list(SAMPLE["k"])), json_values))
def test_arbitrary_kline_bodies_never_raise(k: dict[str, object]) -> None:
    payload = sample(l="0.0009")
    payload["k"].update(k)
    parse(payload)


def test_exchange_info_keeps_trading_symbols_and_perpetual_futures() -> None:
    def info(**fields: str) -> dict[str, str]:
        return {"symbol": "BTCUSDT", "baseAsset": "BTC", "quoteAsset": "USDT", "status": "TRADING"} | fields

    payload = {
        "symbols": [
            info(contractType="PERPETUAL"),
            info(symbol="BTCUSDT_240628", contractType="CURRENT_QUARTER"),
            info(symbol="ETHUSDT", baseAsset="ETH", contractType="PERPETUAL", status="SETTLING"),
            info(symbol="LUNAUSDT", baseAsset="LUNA", status="BREAK"),
            {"symbol": 7},
            "junk",
        ]
    }
    assert list(parse_exchange_info(payload, futures=True)) == ["BTCUSDT"]
    assert list(parse_exchange_info(payload, futures=False)) == ["BTCUSDT", "BTCUSDT_240628"]
    assert parse_exchange_info(payload, futures=True)["BTCUSDT"] == Listing("BTCUSDT", "BTC", "USDT")
    assert Listing("BTCUSDT", "BTC", "USDT").symbol == "BTC/USDT"


@pytest.mark.parametrize("answer", [{"code": -1000}, {"symbols": "BTCUSDT"}, [], None])
def test_an_exchange_info_without_a_symbols_list_raises(answer: object) -> None:
    with pytest.raises(ExchangeInfoError, match="symbols list"):
        parse_exchange_info(answer, futures=False)
