"""Candles from trades, clock-driven (issue 7's pure core): the three steps of a tick, on plain numbers."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.binance import AggTrade, agg_trade_event, parse_stream_message
from protocol.candle import Candle
from protocol.timeframes import TIMEFRAMES
from protocol.trades import TradeCandles

M1, M5, M15 = TIMEFRAMES["1m"], TIMEFRAMES["5m"], TIMEFRAMES["15m"]
T0 = 1_700_001_000 // 900 * 900  # a 15-minute boundary


def trade(t_ms: int, price: float, qty: float = 1.0, agg: int = 1) -> AggTrade:
    return AggTrade("BTCUSDT", agg, price, qty, t_ms, t_ms + 5, False)


def run_ticks(book: TradeCandles, first: int, last: int) -> list[tuple[str, Candle]]:
    out = []
    for boundary in range(first, last + 1, 60):
        out += [(tf.name, c) for tf, c in book.tick(boundary)]
    return out


def test_a_quiet_symbol_for_17_minutes_gives_17_flat_1m_and_the_right_5m_and_15m() -> None:
    book = TradeCandles([M1, M5, M15], now_s=T0, last_close=100.0)
    book.add(trade(T0 * 1000 + 1_000, 101.0, 2.0))
    book.add(trade(T0 * 1000 + 30_000, 99.0, 1.0))
    out = run_ticks(book, T0 + 60, T0 + 18 * 60)
    m1 = [c for name, c in out if name == "1m"]
    assert m1[0] == Candle(T0, 101.0, 101.0, 99.0, 99.0, 3.0)
    assert m1[1:] == [Candle(T0 + 60 * k, 99.0, 99.0, 99.0, 99.0, 0.0, True) for k in range(1, 18)]
    m5 = [c for name, c in out if name == "5m"]
    assert m5 == [
        Candle(T0, 101.0, 101.0, 99.0, 99.0, 3.0),
        Candle(T0 + 300, 99.0, 99.0, 99.0, 99.0, 0.0, True),
        Candle(T0 + 600, 99.0, 99.0, 99.0, 99.0, 0.0, True),
    ]
    assert [c for name, c in out if name == "15m"] == [Candle(T0, 101.0, 101.0, 99.0, 99.0, 3.0)]
    assert book.stats.synthetic == 17 + 2


def test_a_trade_on_the_boundary_opens_the_new_period_even_before_the_tick() -> None:
    book = TradeCandles([M1], now_s=T0, last_close=100.0)
    book.add(trade(T0 * 1000 + 59_999, 100.5))
    book.add(trade((T0 + 60) * 1000, 102.0))  # exactly on the boundary; the tick comes a moment later
    ((_, closed),) = book.tick(T0 + 60)
    assert closed == Candle(T0, 100.5, 100.5, 100.5, 100.5, 1.0)
    ((_, forming),) = book.forming()
    assert forming == Candle(T0 + 60, 102.0, 102.0, 102.0, 102.0, 1.0)


def test_a_late_tick_closes_every_period_once_and_late_trades_are_refused() -> None:
    book = TradeCandles([M1, M5], now_s=T0 + 10, last_close=50.0)
    book.add(trade(T0 * 1000 + 20_000, 51.0))
    out = book.tick(T0 + 180)  # the loop stalled for three minutes
    assert [(tf.name, c.candle_time, c.synthetic) for tf, c in out] == [
        ("1m", T0, False),
        ("1m", T0 + 60, True),
        ("1m", T0 + 120, True),
    ]
    assert book.tick(T0 + 180) == []  # nothing twice
    assert not book.add(trade(T0 * 1000 + 50_000, 60.0))  # its period is final
    assert book.stats.late_trades == 1


def test_a_new_symbol_gets_a_seed_candle_at_once() -> None:
    book, seed = TradeCandles.seeded([M1, M5], now_s=T0 + 125, price=3.5)
    assert [(tf.name, c) for tf, c in seed] == [
        ("1m", Candle(T0 + 120, 3.5, 3.5, 3.5, 3.5, 0.0, True)),
        ("5m", Candle(T0, 3.5, 3.5, 3.5, 3.5, 0.0, True)),
    ]
    assert [c for _, c in book.tick(T0 + 180)] == [Candle(T0 + 120, 3.5, 3.5, 3.5, 3.5, 0.0, True)]


def test_agg_trade_payloads_parse_and_round_trip() -> None:
    t = trade(T0 * 1000 + 1, 65000.5, 0.25, agg=77)
    raw = orjson.dumps({"stream": "btcusdt@aggTrade", "data": agg_trade_event("BTCUSDT", t)})
    assert parse_stream_message(raw, exchange="binance", market="spot", symbols={"BTCUSDT": "BTC/USDT"}) == t
    bad = raw.replace(b'"p":"65000.50000000"', b'"p":"-1"')
    assert type(
        parse_stream_message(bad, exchange="binance", market="spot", symbols={"BTCUSDT": "BTC/USDT"})
    ).__name__ == ("MalformedPayload")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20 * 60_000 - 1), st.integers(1, 1000), st.integers(1, 9)), max_size=60))
def test_candles_from_trades_equal_a_brute_force_aggregation(raw: list[tuple[int, int, int]]) -> None:
    trades = sorted((T0 * 1000 + dt, float(p), float(q)) for dt, p, q in raw)
    book = TradeCandles([M1, M5], now_s=T0, last_close=500.0)
    out: list[tuple[str, Candle]] = []
    i = 0
    for boundary in range(T0 + 60, T0 + 20 * 60 + 1, 60):
        while i < len(trades) and trades[i][0] < boundary * 1000:
            book.add(trade(trades[i][0], trades[i][1], trades[i][2]))
            i += 1
        out += [(tf.name, c) for tf, c in book.tick(boundary)]
    for tf in (M1, M5):
        got = [c for name, c in out if name == tf.name]
        close = 500.0
        want = []
        for start in range(T0, T0 + 20 * 60, tf.seconds):
            inside = [(p, q) for t, p, q in trades if start * 1000 <= t < (start + tf.seconds) * 1000]
            if inside:
                prices = [p for p, _ in inside]
                want.append(Candle(start, prices[0], max(prices), min(prices), prices[-1], sum(q for _, q in inside)))
                close = prices[-1]
            else:
                want.append(Candle(start, close, close, close, close, 0.0, True))
        assert got == want
