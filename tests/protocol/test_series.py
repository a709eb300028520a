"""Series ids (docs/protocol.md): strict parsing, round trips, error messages that name the bad part, accessors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ProtocolError, SeriesIdError
from protocol.series import (
    MAX_SERIES_ID_LENGTH,
    SeriesId,
    check_exchange,
    check_market,
    check_symbol,
    parse_series_id,
)
from protocol.timeframes import TIMEFRAME_NAMES, parse_timeframe

LOWER_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
UPPER_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

exchanges = st.text(alphabet=LOWER_ALNUM, min_size=1, max_size=12)
markets = st.sampled_from(["spot", "futures"])
assets = st.text(alphabet=UPPER_ALNUM, min_size=1, max_size=12)
symbols = st.builds(lambda base, quote: f"{base}/{quote}", assets, assets)
timeframe_names = st.sampled_from(TIMEFRAME_NAMES)
valid_texts = st.builds(lambda e, m, s, tf: f"{e}:{m}:{s}:{tf}", exchanges, markets, symbols, timeframe_names)
valid_ids = st.builds(
    lambda e, m, s, tf: SeriesId(exchange=e, market=m, symbol=s, timeframe=parse_timeframe(tf)),
    exchanges,
    markets,
    symbols,
    timeframe_names,
)

# Text that often looks like an id: parts drawn from near-miss alphabets, joined by a random number of colons.
_near_alphabet = LOWER_ALNUM + UPPER_ALNUM + "/:-_. \n\t\x00éÅ٣"
near_parts = st.text(alphabet=_near_alphabet, max_size=10)
near_texts = st.one_of(
    st.lists(st.one_of(near_parts, exchanges, markets, symbols, timeframe_names), min_size=0, max_size=6).map(":".join),
    valid_texts,
    st.text(),
)


def assert_error(text: object, *words: str) -> str:
    with pytest.raises(SeriesIdError) as excinfo:
        SeriesId.parse(text)
    message = str(excinfo.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


# ---------------------------------------------------------------- valid ids


@pytest.mark.parametrize(
    ("text", "exchange", "market", "symbol", "timeframe"),
    [
        ("binance:spot:BTC/USDT:1m", "binance", "spot", "BTC/USDT", "1m"),
        ("binance:futures:ETH/USDT:5m", "binance", "futures", "ETH/USDT", "5m"),
        ("okx2:spot:1000PEPE/USDT:1M", "okx2", "spot", "1000PEPE/USDT", "1M"),
        ("1:spot:A/B:1w", "1", "spot", "A/B", "1w"),
    ],
)
def test_valid_ids_parse_and_round_trip(text: str, exchange: str, market: str, symbol: str, timeframe: str) -> None:
    sid = SeriesId.parse(text)
    assert sid.exchange == exchange
    assert sid.market == market
    assert sid.symbol == symbol
    assert sid.timeframe == parse_timeframe(timeframe)
    assert sid.timeframe.name == timeframe
    assert str(sid) == text
    assert parse_series_id(text) == sid
    assert SeriesId.parse(str(sid)) == sid


@pytest.mark.parametrize("timeframe", TIMEFRAME_NAMES)
def test_every_timeframe_is_accepted(timeframe: str) -> None:
    text = f"binance:spot:BTC/USDT:{timeframe}"
    assert str(SeriesId.parse(text)) == text


def test_minute_and_month_ids_differ() -> None:
    minute = SeriesId.parse("binance:spot:BTC/USDT:1m")
    month = SeriesId.parse("binance:spot:BTC/USDT:1M")
    assert minute != month
    assert minute.timeframe.seconds == 60
    assert month.timeframe.is_calendar


def test_parsed_ids_are_hashable_values() -> None:
    a = SeriesId.parse("binance:spot:BTC/USDT:1m")
    b = SeriesId.parse("binance:spot:BTC/USDT:1m")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1


def test_max_length_boundary() -> None:
    prefix = "binance:spot:BTC/"
    suffix = ":1m"
    quote = "U" * (MAX_SERIES_ID_LENGTH - len(prefix) - len(suffix))
    text = f"{prefix}{quote}{suffix}"
    assert len(text) == MAX_SERIES_ID_LENGTH
    assert str(SeriesId.parse(text)) == text
    too_long = f"{prefix}{quote}U{suffix}"
    assert len(too_long) == MAX_SERIES_ID_LENGTH + 1
    assert_error(too_long, "longer", str(MAX_SERIES_ID_LENGTH))


@settings(max_examples=300)
@given(valid_ids)
def test_parse_of_format_is_identity(sid: SeriesId) -> None:
    text = str(sid)
    if len(text) <= MAX_SERIES_ID_LENGTH:
        assert SeriesId.parse(text) == sid
    else:
        assert_error(text, "longer")


@settings(max_examples=300)
@given(valid_texts)
def test_format_of_parse_is_identity(text: str) -> None:
    assert len(text) <= MAX_SERIES_ID_LENGTH
    assert str(SeriesId.parse(text)) == text


# ---------------------------------------------------------------- malformed ids


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("binance:spot:BTC/USDT", 3),
        ("binance:spot:BTC/USDT:1m:extra", 5),
        ("spot:BTC/USDT:1m", 3),
        ("binance:spot:BTC:USDT:1m", 5),
        ("::", 3),
        ("::::", 5),
        (":", 2),
        ("binance", 1),
    ],
)
def test_wrong_part_count(text: str, count: int) -> None:
    assert_error(text, "parts", str(count), repr(text))


def test_empty_string() -> None:
    assert_error("", "empty")


def test_three_colons_is_four_empty_parts_and_fails_on_exchange() -> None:
    assert_error(":::", "exchange", "''")


@pytest.mark.parametrize("exchange", ["Binance", "BINANCE", "bin-ance", "bin_ance", "bin.ance", "bin ance", "", "é"])
def test_bad_exchange(exchange: str) -> None:
    assert_error(f"{exchange}:spot:BTC/USDT:1m", "exchange", repr(exchange))
    with pytest.raises(SeriesIdError, match="exchange"):
        check_exchange(exchange)


@pytest.mark.parametrize("market", ["margin", "Spot", "SPOT", "future", "futures ", "", "swap"])
def test_bad_market(market: str) -> None:
    assert_error(f"binance:{market}:BTC/USDT:1m", "market", repr(market))
    with pytest.raises(SeriesIdError, match="market"):
        check_market(market)


@pytest.mark.parametrize(
    "symbol",
    [
        "BTCUSDT",  # no slash
        "btc/usdt",  # lower case
        "Btc/USDT",
        "BTC/usdt",
        "BTC/USDT/X",  # extra slash
        "/USDT",  # empty base
        "BTC/",  # empty quote
        "/",
        "",
        "BTC-USDT",
        "BTC /USDT",
        "BTC/USDT\n",
        "BTC/ÜSDT",
    ],
)
def test_bad_symbol(symbol: str) -> None:
    assert_error(f"binance:spot:{symbol}:1m", "symbol", repr(symbol))
    with pytest.raises(SeriesIdError, match="symbol"):
        check_symbol(symbol)


@pytest.mark.parametrize("timeframe", ["2m", "1H", "1D", "1W", "", "1mm", "60", " 1m", "1m\n"])
def test_bad_timeframe(timeframe: str) -> None:
    assert_error(f"binance:spot:BTC/USDT:{timeframe}", "timeframe", repr(timeframe))


@pytest.mark.parametrize("value", [None, 1, 1.5, b"binance:spot:BTC/USDT:1m", ["binance", "spot", "BTC/USDT", "1m"]])
def test_non_string_input(value: object) -> None:
    message = assert_error(value, "string", type(value).__name__)
    assert message
    with pytest.raises(SeriesIdError):
        parse_series_id(value)


def test_series_id_error_is_a_protocol_value_error() -> None:
    with pytest.raises(ProtocolError):
        SeriesId.parse("nope")
    with pytest.raises(ValueError, match="parts"):
        SeriesId.parse("nope")


def test_first_bad_part_is_reported() -> None:
    assert_error("BAD:margin:btc:9x", "exchange", "'BAD'")
    assert_error("ok:margin:btc:9x", "market", "'margin'")
    assert_error("ok:spot:btc:9x", "symbol", "'btc'")
    assert_error("ok:spot:BTC/USDT:9x", "timeframe", "'9x'")


@settings(max_examples=1000)
@given(near_texts)
def test_arbitrary_text_parses_exactly_or_raises_series_id_error(text: str) -> None:
    try:
        sid = SeriesId.parse(text)
    except SeriesIdError:
        return
    assert str(sid) == text
    assert SeriesId.parse(str(sid)) == sid


@settings(max_examples=200)
@given(st.one_of(st.none(), st.integers(), st.floats(), st.binary(), st.lists(st.text())))
def test_arbitrary_non_strings_raise_series_id_error(value: object) -> None:
    with pytest.raises(SeriesIdError):
        SeriesId.parse(value)


# ---------------------------------------------------------------- accessors


def test_accessors() -> None:
    sid = SeriesId.parse("binance:spot:BTC/USDT:1m")
    assert sid.base_asset == "BTC"
    assert sid.quote_asset == "USDT"
    assert sid.symbol_id == "BTCUSDT"
    assert sid.candle_id(1_700_000_040) == "binance:spot:BTC/USDT:1m:1700000040"
    pepe = SeriesId.parse("okx2:spot:1000PEPE/USDT:1M")
    assert pepe.base_asset == "1000PEPE"
    assert pepe.quote_asset == "USDT"
    assert pepe.symbol_id == "1000PEPEUSDT"


def test_with_timeframe() -> None:
    sid = SeriesId.parse("binance:futures:ETH/USDT:1m")
    hourly = sid.with_timeframe(parse_timeframe("1h"))
    assert str(hourly) == "binance:futures:ETH/USDT:1h"
    assert hourly == SeriesId.parse("binance:futures:ETH/USDT:1h")
    assert str(sid) == "binance:futures:ETH/USDT:1m"  # the original is unchanged
    assert hourly.with_timeframe(parse_timeframe("1m")) == sid


@settings(max_examples=200)
@given(valid_ids, st.integers(min_value=0, max_value=2**40), timeframe_names)
def test_accessor_properties(sid: SeriesId, candle_time: int, timeframe: str) -> None:
    base, quote = sid.symbol.split("/")
    assert sid.base_asset == base
    assert sid.quote_asset == quote
    assert sid.symbol_id == base + quote
    assert sid.candle_id(candle_time) == f"{sid}:{candle_time}"
    series_text, _, time_text = sid.candle_id(candle_time).rpartition(":")
    assert series_text == str(sid)
    assert int(time_text) == candle_time
    other = sid.with_timeframe(parse_timeframe(timeframe))
    assert (other.exchange, other.market, other.symbol) == (sid.exchange, sid.market, sid.symbol)
    assert other.timeframe.name == timeframe
