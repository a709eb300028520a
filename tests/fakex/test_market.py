"""The fake exchange's market model: deterministic, continuous, valid, aggregates exact, quiet minutes flat."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.fakex.market import Market, Symbol
from protocol.aggregate import aggregate
from protocol.binance import AggTrade
from protocol.candle import check_candle
from protocol.timeframes import TIMEFRAMES
from protocol.trades import TradeCandles

M1, M5, H1 = TIMEFRAMES["1m"], TIMEFRAMES["5m"], TIMEFRAMES["1h"]
T0 = 1_700_000_040


def btc() -> Symbol:
    return Market.default().spot["BTCUSDT"]


@given(st.integers(0, 10**6))
def test_candles_are_valid_continuous_and_deterministic(k: int) -> None:
    sym = btc()
    t = T0 + 60 * k
    a, b = sym.candle_1m(t), sym.candle_1m(t + 60)
    check_candle(a, M1)
    check_candle(b, M1)
    assert b.open == a.close
    assert btc().candle_1m(t) == a


def test_higher_timeframes_are_exact_aggregates_of_1m() -> None:
    sym = btc()
    start = H1.floor(T0)
    minutes = [sym.candle_1m(start + 60 * i) for i in range(120)]
    assert list(aggregate(M1, M5, minutes)) == [sym.candle(M5, start + 300 * i) for i in range(24)]
    assert list(aggregate(M1, H1, minutes)) == [sym.candle(H1, start), sym.candle(H1, start + 3600)]


def test_quiet_minutes_are_flat_at_the_previous_close_with_no_volume() -> None:
    sym = btc()
    sym.quiet.append((T0, T0 + 180))
    before = sym.candle_1m(T0 - 60)
    for t in (T0, T0 + 60, T0 + 120):
        c = sym.candle_1m(t)
        assert (c.open, c.high, c.low, c.close, c.volume) == (before.close,) * 4 + (0.0,)
    after = sym.candle_1m(T0 + 180)
    assert after.open == before.close
    assert after.volume > 0


def test_forming_stays_inside_the_closed_candle() -> None:
    sym = btc()
    period = M5.floor(T0)
    final = sym.candle(M5, period)
    for ms in (0, 30_000, 61_000, 299_999):
        forming = sym.forming(M5, period * 1000 + ms)
        check_candle(forming, M5)
        assert forming.candle_time == period
        assert forming.open == final.open
        assert final.low <= forming.low <= forming.high <= final.high
        assert forming.volume <= final.volume


def test_nothing_before_listing() -> None:
    sym = Symbol("NEWUSDT", "NEW", "USDT", 1.0, listed_at=T0)
    first = sym.candle_1m(T0)
    assert first.open == first.close
    with pytest.raises(ValueError, match="listed"):
        sym.candle_1m(T0 - 60)


def test_a_days_trades_aggregate_to_the_fakes_own_klines_in_every_timeframe() -> None:
    """The cross-check of issue 7: candles built from the fake's trades equal its klines, every period."""
    market = Market.default()
    sym = market.spot["BTCUSDT"]
    day = 1_700_006_400 // 86_400 * 86_400  # a UTC midnight
    sym.quiet.append((day + 3_600, day + 3_600 + 17 * 60))  # 17 quiet minutes in the second hour
    tfs = [TIMEFRAMES[n] for n in ("1m", "5m", "15m", "1h", "4h", "1d")]
    book = TradeCandles(tfs, now_s=day, last_close=sym.close_of(day - 60))
    built: dict[str, list[tuple[int, float, float, float, float, float]]] = {tf.name: [] for tf in tfs}
    for minute in range(day, day + 86_400, 60):
        for k, (t, price, qty) in enumerate(sym.trades_1m(minute)):
            book.add(AggTrade(sym.symbol_id, minute + k, price, qty, t, t, False))
        for tf, c in book.tick(minute + 60):
            built[tf.name].append(c[:6])
    for tf in tfs:
        want = [sym.candle(tf, t) for t in range(day, day + 86_400, tf.seconds)]
        got = built[tf.name]
        assert [c[:5] for c in got] == [c[:5] for c in want], tf.name
        assert [c[5] for c in got] == pytest.approx([c.volume for c in want]), tf.name
