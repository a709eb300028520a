"""Trade-built candles benchmark: 500 symbols' trades through klined's trade actors, and the minute close.

Measures, on klined's own code path (trades handed to ``TradeSeriesActor.deliver`` as the upstream reader
does, a real LMDB log behind the writer): the cost per trade in microseconds, the CPU share one core needs at
200,000 trades/s, and tick -> durable latency for the closes of all symbols (1m + 5m + 15m) at a minute
boundary. Baseline in the same run: parsing the same trades from Binance's aggTrade JSON (``protocol/``),
which the reader pays before it hands a trade over.

Run: ``python bench/trades.py [--symbols 500] [--trades 1000000]``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import orjson
import trio

from actors.clock import ExchangeClock
from actors.pipeline import ClosedCandleWriter
from actors.store import Store
from actors.trade_series import TradeSeriesActor
from daemon.eventlog import EventLog
from protocol.binance import AggTrade, agg_trade_event, parse_stream_message
from protocol.candle import Candle
from protocol.series import SeriesId
from protocol.timeframes import TIMEFRAMES

TFS = [TIMEFRAMES[n] for n in ("1m", "5m", "15m")]


async def run(n_symbols: int, n_trades: int, tmp: Path) -> dict[str, float]:
    start_ms = (int(time.time()) // 900 * 900 - 900) * 1000  # a 15-minute boundary, in the past
    offset = {"ms": 0}
    clock = ExchangeClock(wall=lambda: start_ms + offset["ms"])
    symbols = [f"S{i:04d}USDT" for i in range(n_symbols)]
    with EventLog(tmp / "log") as log:
        store = Store(log)
        writer = ClosedCandleWriter(store)
        actors: list[TradeSeriesActor] = []

        async def fetch(series: SeriesId, first: int, last: int) -> list[Candle]:
            return [Candle(last, 10.0, 10.0, 10.0, 10.0, 1.0)]

        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            for sid in symbols:
                base = sid.removesuffix("USDT")
                series = [SeriesId.parse(f"binance:spot:{base}/USDT:{tf.name}") for tf in TFS]
                actor = TradeSeriesActor(
                    series,
                    heads=dict.fromkeys(series),
                    writer=writer,
                    broadcast_forming=lambda s, c: None,
                    fetch_closed=fetch,
                    clock=clock,
                    grace_s=0.001,
                )
                await nursery.start(actor.run)
                actors.append(actor)
            gc.collect()
            gc.freeze()
            # Trades spread over the first 14 minutes: delivered as the reader delivers them.
            per_ms = n_trades / (14 * 60_000)
            trades = [
                AggTrade(symbols[k % n_symbols], k, 10.0 + (k % 97) / 100, 0.5, start_ms + int(k / per_ms), 0, False)
                for k in range(n_trades)
            ]
            # Each minute's trades reach the actors as the reader would deliver them, then the minute ends:
            # every symbol closes 1m (and 5m, 15m at their boundaries) at once.
            cpu_deliver = 0.0
            durable: list[float] = []
            latencies: list[float] = []
            k = 0
            for minute in range(1, 16):
                cpu0 = time.process_time()
                while k < n_trades and trades[k].trade_time_ms < start_ms + minute * 60_000:
                    actors[k % n_symbols].deliver(trades[k])
                    k += 1
                cpu_deliver += time.process_time() - cpu0
                before = log.last_seq()
                tick_at = time.perf_counter()
                offset["ms"] = minute * 60_000 + 2  # the clock passes the boundary (+ the tiny grace)
                clock.record(start_ms + offset["ms"], start_ms + offset["ms"], start_ms + offset["ms"])
                while log.last_seq() - before < n_symbols * (1 + (minute % 5 == 0) + (minute % 15 == 0)):
                    await store.wait_appended()
                latencies.append(time.perf_counter() - tick_at)
                durable.append(log.last_seq() - before)
            per_trade_us = cpu_deliver / max(k, 1) * 1e6
            nursery.cancel_scope.cancel()
    raw = [orjson.dumps({"stream": "x@aggTrade", "data": agg_trade_event(t.symbol_id, t)}) for t in trades[:100_000]]
    table = dict.fromkeys(symbols, "S/USDT")
    cpu0 = time.process_time()
    for r in raw:
        parse_stream_message(r, exchange="binance", market="spot", symbols=table)
    parse_us = (time.process_time() - cpu0) / len(raw) * 1e6
    return {
        "per_trade_us": per_trade_us,
        "parse_us": parse_us,
        "tick_p50_ms": statistics.median(latencies) * 1000,
        "tick_max_ms": max(latencies) * 1000,
        "boundary_15m_ms": latencies[-1] * 1000,
        "closes_at_15m": durable[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--trades", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="klined-bench-trades-", dir=".") as tmp:
        r = trio.run(run, args.symbols, args.trades, Path(tmp))
    share = r["per_trade_us"] * 200_000 / 1e6 * 100
    print(f"klined trade-candles benchmark: {args.symbols} symbols, {args.trades:,} trades, 1m + 5m + 15m each")
    print(f"  aggregation per trade (klined's deliver) .... {r['per_trade_us']:6.2f} µs")
    ratio = r["per_trade_us"] / r["parse_us"]
    print(f"  parsing the aggTrade JSON (baseline) ........ {r['parse_us']:6.2f} µs  ({ratio:.2f}x)")
    print(f"  one core's share at 200,000 trades/s ........ {share:6.1f} %  (aggregation only)")
    print(f"  ... with parsing, at 200,000 trades/s ....... {(r['per_trade_us'] + r['parse_us']) * 20:6.1f} %")
    print(
        f"  tick -> durable, every symbol's closes ...... p50 {r['tick_p50_ms']:.1f} ms, max {r['tick_max_ms']:.1f} ms"
    )
    print(f"  the 15m boundary ({int(r['closes_at_15m']):,} closes in one batch) . {r['boundary_15m_ms']:.1f} ms")
    print()
    verdict = "PASS" if r["tick_max_ms"] < 100 else "FAIL"
    print(f"target: tick -> durable p99 < 100 ms ... {verdict} (max {r['tick_max_ms']:.1f} ms)")


if __name__ == "__main__":
    main()
