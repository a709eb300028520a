"""Trade-built candles benchmark: 500 symbols' trades through klined's trade actors, and the minute close.

Measures, on klined's own code path (trades handed to ``TradeSeriesActor.deliver`` as the upstream reader
does, a real LMDB log behind the writer): the cost per trade in microseconds, the CPU share one core needs at
200,000 trades/s, and tick -> durable latency for the closes of all symbols (1m + 5m + 15m) at a minute
boundary. Baseline in the same run: parsing the same trades from Binance's aggTrade JSON (``protocol/``),
which the reader pays before it hands a trade over.

Then the same on loopback: a blaster process serves Binance's combined ``aggTrade`` stream as fast as it can,
klined's own upstream reader (``UpstreamIngest``: SUBSCRIBE, wsproto, parsing) hands the trades to the trade
actors; printed: the rate one klined process sustains and its CPU share, so what 200,000 trades/s would take.

Run: ``python bench/trades.py [--symbols 500] [--trades 1000000] [--loopback-frames 200000]``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import trio

from actors.clock import ExchangeClock
from actors.pipeline import ClosedCandleWriter
from actors.store import Store
from actors.trade_series import TradeSeriesActor
from daemon.storage.eventlog import EventLog
from protocol.binance import AggTrade, agg_trade_event, parse_stream_message
from protocol.candle import Candle
from protocol.series import SeriesId
from protocol.timeframes import TIMEFRAMES

TFS = [TIMEFRAMES[n] for n in ("1m", "5m", "15m")]


async def run(n_symbols: int, n_trades: int, tmp: Path) -> dict[str, float]:
    start_ms = (int(time.time()) // 900 * 900 - 900) * 1000  # a 15-minute boundary, in the past
    offset = {"ms": 0}
    clock = ExchangeClock(wall=lambda: start_ms + offset["ms"])
    clock.record(start_ms, start_ms, start_ms)  # measured: the books start at once
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


async def blaster(n_symbols: int, n_frames: int) -> None:
    """The loopback exchange: answers SUBSCRIBE, then sends ``n_frames`` combined aggTrade frames at once."""
    from trio_websocket import ConnectionClosed, serve_websocket

    now_ms = int(time.time() * 1000) // 60_000 * 60_000 + 1_000
    frames = [
        orjson.dumps(
            {
                "stream": f"s{k % n_symbols:04d}usdt@aggTrade",
                "data": agg_trade_event(
                    f"S{k % n_symbols:04d}USDT",
                    AggTrade(f"S{k % n_symbols:04d}USDT", k, 10.0, 0.5, now_ms, now_ms, False),
                ),
            }
        ).decode()
        for k in range(n_frames)
    ]

    async def handler(request: Any) -> None:
        ws = await request.accept()
        try:
            subscribed = 0
            while subscribed < n_symbols:
                msg = orjson.loads(await ws.get_message())
                subscribed += len(msg.get("params", []))
                await ws.send_message(orjson.dumps({"result": None, "id": msg.get("id")}).decode())
            for frame in frames:
                await ws.send_message(frame)
            await trio.sleep_forever()
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        print(server.port, flush=True)


async def loopback(n_symbols: int, n_frames: int, tmp: Path) -> dict[str, float]:
    from actors.ingest import UpstreamIngest

    cmd = [sys.executable, __file__, "--blaster", "--symbols", str(n_symbols), "--loopback-frames", str(n_frames)]
    proc = await trio.to_thread.run_sync(lambda: subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
    try:
        assert proc.stdout is not None
        port = int(await trio.to_thread.run_sync(proc.stdout.readline))
        clock = ExchangeClock()
        wall = int(time.time() * 1000)
        clock.record(wall, wall, wall)  # measured: the books start at once
        got = {"n": 0, "first": 0.0, "cpu0": 0.0}
        done = trio.Event()
        with EventLog(tmp / "loop") as log:
            writer = ClosedCandleWriter(Store(log))
            actors: dict[str, TradeSeriesActor] = {}

            async def fetch(series: SeriesId, first: int, last: int) -> list[Candle]:
                return []

            def deliver(update: object) -> None:
                if not isinstance(update, AggTrade):
                    return
                if got["n"] == 0:
                    got["first"], got["cpu0"] = time.perf_counter(), time.process_time()
                actors[update.symbol_id].deliver(update)
                got["n"] += 1
                if got["n"] == n_frames:
                    got["last"], got["cpu1"] = time.perf_counter(), time.process_time()
                    done.set()

            async with trio.open_nursery() as nursery:
                await nursery.start(writer.run)
                ingest = UpstreamIngest(market="spot", ws_base=f"ws://127.0.0.1:{port}", deliver=deliver)
                await nursery.start(ingest.run)
                head = Candle(clock.now_s() // 60 * 60 - 60, 10.0, 10.0, 10.0, 10.0, 1.0)
                for i in range(n_symbols):
                    series = [SeriesId.parse(f"binance:spot:S{i:04d}/USDT:{tf.name}") for tf in TFS]
                    actor = TradeSeriesActor(
                        series,
                        heads={s: head if s.timeframe.name == "1m" else None for s in series},
                        writer=writer,
                        broadcast_forming=lambda s, c: None,
                        fetch_closed=fetch,
                        clock=clock,
                    )
                    await nursery.start(actor.run)
                    actors[series[0].symbol_id] = actor
                    ingest.add(series[0], trades=True)
                with trio.fail_after(300):
                    await done.wait()
                nursery.cancel_scope.cancel()
        wall = got["last"] - got["first"]
        return {"rate": n_frames / wall, "cpu_share": (got["cpu1"] - got["cpu0"]) / wall * 100}
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--trades", type=int, default=1_000_000)
    parser.add_argument("--loopback-frames", type=int, default=200_000)
    parser.add_argument("--blaster", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.blaster:
        trio.run(blaster, args.symbols, args.loopback_frames)
        return
    with tempfile.TemporaryDirectory(prefix="klined-bench-trades-", dir=".") as tmp:
        r = trio.run(run, args.symbols, args.trades, Path(tmp))
        lb = trio.run(loopback, args.symbols, args.loopback_frames, Path(tmp))
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
    per_trade = lb["cpu_share"] / lb["rate"] * 1e4
    print(
        f"  on loopback, klined's upstream reader ... {lb['rate']:,.0f} trades/s at {lb['cpu_share']:.0f} % of a core"
    )
    print(f"      = {per_trade:.1f} µs a trade: 200,000 trades/s would need {per_trade * 0.2:.1f} cores")
    print()
    verdict = "PASS" if r["tick_max_ms"] < 100 else "FAIL"
    print(f"target: tick -> durable p99 < 100 ms ... {verdict} (max {r['tick_max_ms']:.1f} ms)")


if __name__ == "__main__":
    main()
