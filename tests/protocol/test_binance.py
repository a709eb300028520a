"""Binance kline stream payloads: the exact real formats parse; anything malformed is a typed result."""

from __future__ import annotations

import copy
from typing import Any, Final

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import binance
from protocol.binance import (
    AggTrade,
    ControlError,
    ControlReply,
    KlineUpdate,
    Listing,
    MalformedPayload,
    ServerShutdown,
    agg_trade_event,
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


# -- the fast path agrees with the precise one ---------------------------------------------------------


def precise(raw: bytes, market: Market = "spot") -> object:
    """What the precise path alone answers (all that ``parse_stream_message`` did before its fast path)."""
    obj = orjson.loads(raw)
    try:
        return binance._parse_object(obj, "binance", market, SYMBOLS)
    except binance._MalformedError as e:
        return MalformedPayload(str(e), raw.decode()[:200])


def fast(raw: bytes, market: Market = "spot") -> object:
    """What the fast path alone answers: a message, or None (it leaves the frame to the precise path)."""
    try:
        return binance._well_formed(orjson.loads(raw), "binance", market, SYMBOLS)
    except (KeyError, TypeError, ValueError):
        return None


@given(aligned_candles(), st.booleans(), st.integers(0, 2**40), st.booleans())
def test_the_fast_path_takes_every_well_formed_kline_and_agrees(
    pair: tuple[SeriesId, Candle], final: bool, trade_id: int, enveloped: bool
) -> None:
    series, candle = pair
    payload: object = kline_event(
        series, candle, is_final=final, event_time_ms=1, first_trade_id=trade_id, last_trade_id=trade_id + 9
    )
    if enveloped:
        payload = {"stream": stream_name(series.symbol_id, series.timeframe), "data": payload}
    raw = orjson.dumps(payload)
    expected = precise(raw, series.market)
    assert isinstance(expected, KlineUpdate)
    assert fast(raw, series.market) == (None if series.timeframe.is_calendar else expected)  # 1M: precise only
    assert parse(raw, series.market) == expected


@given(
    st.integers(0, 2**40),
    prices.filter(lambda p: p > 0),
    st.integers(0, 10**12).map(lambda n: n / 10**8),
    st.integers(0, 2**42),
    st.booleans(),
    st.booleans(),
)
def test_the_fast_path_takes_every_well_formed_trade_and_agrees(
    agg_id: int, price: float, quantity: float, t_ms: int, maker: bool, enveloped: bool
) -> None:
    payload: object = agg_trade_event("BNBBTC", AggTrade("BNBBTC", agg_id, price, quantity, t_ms, t_ms + 3, maker))
    if enveloped:
        payload = {"stream": "bnbbtc@aggTrade", "data": payload}
    raw = orjson.dumps(payload)
    expected = precise(raw)
    assert isinstance(expected, AggTrade)
    assert fast(raw) == expected
    assert parse(raw) == expected


def well_formed(**k_changes: object) -> dict[str, Any]:
    """The documentation's sample as Binance really sends it (every decimal with a dot): a fast-path frame."""
    out = sample(l="0.0009", v="1000.0", V="500.0")
    out["k"].update(k_changes)
    return out


def test_the_documentation_sample_as_binance_sends_it_takes_the_fast_path() -> None:
    raw = orjson.dumps({"stream": "bnbbtc@kline_1m", "data": well_formed()})
    assert isinstance(fast(raw), KlineUpdate)
    assert fast(raw) == precise(raw)


# Decimal texts the precise path accepts or refuses, each for its own reason, and some that could fool a reader
# of JSON numbers.
DECIMAL_TEXTS: Final = [
    *("0.0025", "1000", "0", "0.0", "-0.0", "-5.0", "12.", ".5", "00.5", " 0.002", "0.002\n", "1.0000000000000001"),
    *("1e-3", "1E3", "1.5e3", "+0.002", "nan", "NaN", "inf", "-Infinity", "1_0.5", "\u0661.\u0665", "\u00b2.5"),
    *("1" + "0" * 400 + ".5", "", ".", "0.002,0.003", "[0.002]", '"0.002"', "null", "true", "0x10", "0.002]"),
]
decimal_texts = st.sampled_from(DECIMAL_TEXTS) | st.text(alphabet='0123456789.,-+eE []"nul', max_size=10)
json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | decimal_texts


def trade_event(**changes: object) -> dict[str, Any]:
    trade = AggTrade("BNBBTC", 7, 0.0123, 4.5, 1_700_000_000_000, 1_700_000_000_003, True)
    return agg_trade_event("BNBBTC", trade) | changes


def assert_parsed_as_precisely(payload: dict[str, Any], stream: str) -> None:
    for message in (payload, {"stream": stream, "data": payload}, {"stream": "x", "data": payload}):
        raw = orjson.dumps(message)
        assert parse(raw) == precise(raw)


@pytest.mark.parametrize("text", DECIMAL_TEXTS)
def test_a_decimal_in_any_form_parses_as_the_precise_path_parses_it(text: str) -> None:
    assert_parsed_as_precisely(well_formed(o=text, h=text, l=text, c=text), "bnbbtc@kline_1m")
    for name in ("v", "q", "V", "Q"):
        assert_parsed_as_precisely(well_formed(**{name: text}), "bnbbtc@kline_1m")
    assert_parsed_as_precisely(trade_event(p=text), "bnbbtc@aggTrade")
    assert_parsed_as_precisely(trade_event(q=text), "bnbbtc@aggTrade")


WEEK_MS: Final = 7 * 86400 * 1000
MONDAY_MS: Final = 1672617600000  # 2023-01-02


@pytest.mark.parametrize(
    "changes",
    [
        {"t": -60_000, "T": -1},
        {"t": 0, "T": 59_999},
        {"T": 1672515840000},
        {"T": 1672515839998},
        {"i": "5m", "T": 1672516079999},
        {"i": "1w", "t": MONDAY_MS, "T": MONDAY_MS + WEEK_MS - 1},
        {"i": "1w", "t": MONDAY_MS + 86400_000, "T": MONDAY_MS + 86400_000 + WEEK_MS - 1},
        {"i": "1M", "t": 1672531200000, "T": 1675209599999},
        {"i": "1M", "t": 645 * 2592000_000, "T": 646 * 2592000_000 - 1},  # 30 days, not a month
        {"o": "0.0030"},
        {"c": "0.0030"},
        {"o": "0.0001"},
        {"c": "0.0001"},
        {"h": "0.0015"},
        {"l": "0.0015"},
        {"o": "0.0025", "c": "0.0009"},
        {"i": "7m"},
        {"i": 1},
        {"i": ["1m"]},
        {"s": "BTCUSDT"},
        {"s": "XYZUSDT"},
        {"x": 1},
        {"x": None},
    ],
)
def test_kline_times_and_names_parse_as_the_precise_path_parses_them(changes: dict[str, object]) -> None:
    assert_parsed_as_precisely(well_formed(**changes), "bnbbtc@kline_1m")


@pytest.mark.parametrize("value", [True, False, None, 1.5, "100", [], {}, -1])
@pytest.mark.parametrize("name", ["t", "T", "f", "L", "n", "x", "E", "s", "i", "B"])
def test_a_kline_field_of_any_kind_parses_as_the_precise_path_parses_it(name: str, value: object) -> None:
    payload = well_formed()
    (payload if name == "E" else payload["k"])[name] = value
    assert_parsed_as_precisely(payload, "bnbbtc@kline_1m")
    if name != "E":
        del payload["k"][name]
        assert_parsed_as_precisely(payload, "bnbbtc@kline_1m")


def test_a_kline_whose_event_symbol_differs_parses_as_the_precise_path_parses_it() -> None:
    payload = well_formed(s="BTCUSDT")
    payload["s"] = "BNBBTC"
    assert_parsed_as_precisely(payload, "bnbbtc@kline_1m")
    payload["s"] = 7
    assert_parsed_as_precisely(payload, "bnbbtc@kline_1m")
    del payload["s"]
    assert_parsed_as_precisely(payload, "bnbbtc@kline_1m")


@pytest.mark.parametrize("value", [True, False, None, 1.5, "100", [], {}, -1, "BTCUSDT", "XYZUSDT"])
@pytest.mark.parametrize("name", ["e", "E", "s", "a", "p", "q", "f", "l", "T", "m"])
def test_a_trade_field_of_any_kind_parses_as_the_precise_path_parses_it(name: str, value: object) -> None:
    payload = trade_event(**{name: value})
    assert_parsed_as_precisely(payload, "bnbbtc@aggTrade")
    del payload[name]
    assert_parsed_as_precisely(payload, "bnbbtc@aggTrade")


@given(st.dictionaries(st.sampled_from([*SAMPLE["k"], "E", "s", "e"]), json_scalars, min_size=1))
def test_any_kline_fields_parse_as_the_precise_path_parses_them(fields: dict[str, object]) -> None:
    payload = well_formed()
    for name, value in fields.items():
        (payload if name in ("E", "s", "e") else payload["k"])[name] = value
    assert_parsed_as_precisely(payload, "bnbbtc@kline_1m")


@given(st.dictionaries(st.sampled_from(["e", "E", "s", "a", "p", "q", "f", "l", "T", "m"]), json_scalars, min_size=1))
def test_any_trade_fields_parse_as_the_precise_path_parses_them(fields: dict[str, object]) -> None:
    assert_parsed_as_precisely(trade_event(**fields), "bnbbtc@aggTrade")


@pytest.mark.parametrize(
    "frame",
    [
        {"stream": "bnbbtc@kline_1m", "data": well_formed(), "id": 1},
        {"stream": "bnbbtc@kline_1m"},
        {"data": well_formed()},
        {"data": well_formed(), "id": 1},
        {"stream": "bnbbtc@kline_1m", "data": [well_formed()]},
        {"stream": "bnbbtc@kline_1m", "data": "kline"},
        {"stream": None, "data": well_formed()},
        {**well_formed(), "stream": "bnbbtc@kline_1m"},
        {**well_formed(), "data": None},
        {**well_formed(), "id": 5},
        {**trade_event(), "id": 5},
        {"id": 1, "result": None},
        {"e": "serverShutdown", "E": 1},
    ],
)
def test_odd_envelopes_parse_as_the_precise_path_parses_them(frame: dict[str, object]) -> None:
    raw = orjson.dumps(frame)
    assert fast(raw) is None
    assert parse(raw) == precise(raw)


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
