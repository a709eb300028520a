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
import contextlib
import cProfile
import functools
import gc
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs
import orjson
import trio
from trio_websocket import open_websocket_url
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Request, TextMessage
from wsproto.frame_protocol import FrameProtocol

from actors.clock import ExchangeClock
from actors.ingest import Deliver, UpstreamIngest
from actors.pipeline import ClosedCandleWriter
from actors.store import Store
from actors.trade_series import TRADE_GRACE_S, TradeSeriesActor
from actors.upstream_ws import open_upstream
from daemon.storage.eventlog import EventLog
from protocol.binance import AggTrade, KlineUpdate, agg_trade_event, parse_stream_message
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
    raw = [
        orjson.dumps({"stream": f"{t.symbol_id.lower()}@aggTrade", "data": agg_trade_event(t.symbol_id, t)})
        for t in trades[:100_000]
    ]
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


# -- loopback: one blaster, four readers of the same stream --------------------------------------------------

WIRE_CHUNK = 1 << 16
MINUTE_LEFT_S = 20  # a run starts with at least this much of its minute left
PACE_FRAMES_PER_TICK, PACE_TICK_S = 10, 0.001  # the trickle: 10,000 frames/s, each in a TCP segment of its own
REGIMES = {
    "": "burst: the pre-framed stream written as fast as the socket takes it (the reader is the bottleneck)",
    "/paced": "trickle: 10 frames a millisecond, one send each (a reader woken for a few frames at a time)",
}


def paced_frames(n_frames: int) -> int:
    return max(n_frames // 4, 1000)


def blast_frames(n_symbols: int, n_frames: int, now_ms: int) -> list[bytes]:
    """``n_frames`` combined aggTrade frames as Binance sends them (unmasked server frames), framed once."""
    frames = FrameProtocol(client=False, extensions=[])
    out = []
    for k in range(n_frames):
        symbol = f"S{k % n_symbols:04d}USDT"
        trade = AggTrade(symbol, k, 10.0, 0.5, now_ms, now_ms, False)
        text = orjson.dumps({"stream": f"{symbol.lower()}@aggTrade", "data": agg_trade_event(symbol, trade)})
        out.append(frames.send_data(text.decode(), fin=True))
    return out


async def blaster(n_symbols: int, n_frames: int) -> None:
    """The loopback exchange: answers SUBSCRIBE until every symbol is in, then sends the pre-framed stream:
    on ``/stream`` as fast as the socket takes it, so the reader (not the sender) is what the run measures;
    on ``/paced/stream`` a quarter of it, paced (``PACE_FRAMES_PER_TICK`` every ``PACE_TICK_S``)."""

    async def handler(stream: trio.SocketStream) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        subscribed, text, paced = 0, "", False
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while subscribed < n_symbols:
                data = await stream.receive_some(WIRE_CHUNK)
                if not data:
                    return
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, Request):
                        paced = event.target.startswith("/paced")
                        await stream.send_all(ws.send(AcceptConnection()))
                    elif isinstance(event, TextMessage):
                        text += event.data
                        if event.message_finished:
                            msg, text = orjson.loads(text), ""
                            subscribed += len(msg.get("params", []))
                            reply = orjson.dumps({"result": None, "id": msg.get("id")}).decode()
                            await stream.send_all(ws.send(Message(data=reply)))
                    elif isinstance(event, CloseConnection):
                        return
            # Stamped now, inside a minute the books have opened and will not close during the run: a trade of
            # a closed period is refused at once, one of the next minute is held back, both cheaper than a trade.
            if time.time() % 60 > 60 - MINUTE_LEFT_S:
                await trio.sleep(60 - time.time() % 60 + TRADE_GRACE_S + 1)
            frames = blast_frames(n_symbols, paced_frames(n_frames) if paced else n_frames, int(time.time() * 1000))
            if paced:
                next_at = trio.current_time()
                for i in range(0, paced_frames(n_frames), PACE_FRAMES_PER_TICK):
                    for frame in frames[i : i + PACE_FRAMES_PER_TICK]:
                        await stream.send_all(frame)
                    next_at += PACE_TICK_S
                    await trio.sleep_until(next_at)
            else:
                wire = b"".join(frames)
                view = memoryview(wire)
                for i in range(0, len(wire), WIRE_CHUNK):
                    await stream.send_all(view[i : i + WIRE_CHUNK])
            while data := await stream.receive_some(WIRE_CHUNK):  # until the reader closes
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, CloseConnection):
                        await stream.send_all(ws.send(event.response()))
                        return

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        print(listeners[0].socket.getsockname()[1], flush=True)


@attrs.define
class Meter:
    """Wall and process CPU time from the first counted frame to the ``n``-th."""

    n: int
    count: int = 0
    wall0: float = 0.0
    cpu0: float = 0.0
    wall: float = 0.0
    cpu: float = 0.0
    done: trio.Event = attrs.Factory(trio.Event)

    def tick(self) -> None:
        if self.count == 0:
            self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        self.count += 1
        if self.count == self.n:
            self.wall, self.cpu = time.perf_counter() - self.wall0, time.process_time() - self.cpu0
            self.done.set()

    def result(self) -> dict[str, float]:
        return {"rate": self.n / self.wall, "cpu_share": self.cpu / self.wall * 100, "us": self.cpu / self.n * 1e6}


def subscribe_all(n_symbols: int) -> str:
    params = [f"s{i:04d}usdt@aggTrade" for i in range(n_symbols)]
    return orjson.dumps({"method": "SUBSCRIBE", "params": params, "id": 1}).decode()


async def bare_reader(port: int, regime: str, n_symbols: int, meter: Meter) -> None:
    """The floor: handshake, then wsproto frames straight from ``receive_some``; no parsing, no delivery."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host="127.0.0.1", target=f"{regime}/stream")))
    replies = 0
    while meter.count < meter.n:
        data = await stream.receive_some(1 << 18)
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                await stream.send_all(ws.send(Message(data=subscribe_all(n_symbols))))
            elif isinstance(event, TextMessage) and event.message_finished:
                if replies == 0:
                    replies = 1  # the SUBSCRIBE's answer
                else:
                    meter.tick()
    await stream.aclose()


async def upstream_ws_reader(port: int, regime: str, n_symbols: int, meter: Meter) -> None:
    """klined's own frame loop (``actors.upstream_ws``) alone: messages counted, not parsed."""
    async with open_upstream(f"ws://127.0.0.1:{port}{regime}/stream") as ws:
        await ws.send_message(subscribe_all(n_symbols))
        replies = 0
        while meter.count < meter.n:
            for _ in await ws.receive():
                if replies == 0:
                    replies = 1  # the SUBSCRIBE's answer
                else:
                    meter.tick()


async def trio_websocket_reader(port: int, regime: str, n_symbols: int, meter: Meter, deliver: Deliver | None) -> None:
    """The path klined had: trio-websocket's reader task and channel, ``get_message``, parse, deliver
    (with ``deliver=None``: ``get_message`` alone)."""
    table = {f"S{i:04d}USDT": f"S{i:04d}/USDT" for i in range(n_symbols)}
    async with open_websocket_url(f"ws://127.0.0.1:{port}{regime}/stream") as ws:
        await ws.send_message(subscribe_all(n_symbols))
        await ws.get_message()
        while meter.count < meter.n:
            raw = await ws.get_message()
            if deliver is None:
                meter.tick()
                continue
            msg = parse_stream_message(raw, exchange="binance", market="spot", symbols=table)
            if isinstance(msg, AggTrade):
                deliver(msg)


async def loopback(variant: str, regime: str, port: int, n_symbols: int, n_frames: int, tmp: Path) -> dict[str, float]:
    """One reader over the blaster's whole stream; trades go to klined's trade actors as in the daemon."""
    meter = Meter(paced_frames(n_frames) if regime else n_frames)
    if variant == "bare":
        with trio.fail_after(300):
            await bare_reader(port, regime, n_symbols, meter)
        return meter.result()
    if variant == "trio-websocket":
        with trio.fail_after(300):
            await trio_websocket_reader(port, regime, n_symbols, meter, None)
        return meter.result()
    if variant == "klined-frames":
        with trio.fail_after(300):
            await upstream_ws_reader(port, regime, n_symbols, meter)
        return meter.result()
    aggregate = variant != "klined-parse"
    clock = ExchangeClock()
    wall = int(time.time() * 1000)
    clock.record(wall, wall, wall)  # measured: the books start at once
    with EventLog(tmp / f"{variant}{regime.replace('/', '-')}") as log:
        writer = ClosedCandleWriter(Store(log))
        actors: dict[str, TradeSeriesActor] = {}

        async def fetch(series: SeriesId, first: int, last: int) -> list[Candle]:
            return []

        def deliver(update: KlineUpdate | AggTrade) -> None:
            if isinstance(update, AggTrade):
                if aggregate:
                    actors[update.symbol_id].deliver(update)
                meter.tick()

        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            head = Candle(clock.now_s() // 60 * 60 - 60, 10.0, 10.0, 10.0, 10.0, 1.0)
            series_ids = []
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
                series_ids.append(series[0])
            with trio.fail_after(300):
                if variant == "trio-websocket+parse":
                    await trio_websocket_reader(port, regime, n_symbols, meter, deliver)
                else:
                    ingest = UpstreamIngest(market="spot", ws_base=f"ws://127.0.0.1:{port}{regime}", deliver=deliver)
                    await nursery.start(ingest.run)
                    for sid in series_ids:
                        ingest.add(sid, trades=True)
                    await meter.done.wait()
            nursery.cancel_scope.cancel()
    return meter.result()


READERS = {
    "bare": "bare wsproto frames (baseline, no parse)",
    "klined-frames": "klined's frame loop (upstream_ws), no parse",
    "trio-websocket": "trio-websocket get_message, no parse",
    "trio-websocket+parse": "trio-websocket + parse + deliver",
    "klined-parse": "klined's UpstreamIngest + parse, no deliver",
    "klined": "klined's UpstreamIngest + parse + deliver",
}


def run_readers(n_symbols: int, n_frames: int, tmp: Path, profile: bool) -> dict[tuple[str, str], dict[str, float]]:
    cmd = [sys.executable, __file__, "--blaster", "--symbols", str(n_symbols), "--loopback-frames", str(n_frames)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        results = {}
        for regime in REGIMES:
            for variant in READERS:
                gc.collect()
                args = (variant, regime, port, n_symbols, n_frames, tmp)
                if profile and variant == "klined" and not regime:
                    profiler = cProfile.Profile()
                    results[regime, variant] = profiler.runcall(trio.run, loopback, *args)
                    pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
                else:
                    results[regime, variant] = trio.run(loopback, *args)
        return results
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--trades", type=int, default=1_000_000)
    parser.add_argument("--loopback-frames", type=int, default=200_000)
    parser.add_argument("--loopback-only", action="store_true", help="only the loopback readers")
    parser.add_argument("--profile", action="store_true", help="cProfile klined's reader on loopback")
    parser.add_argument("--blaster", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.blaster:
        trio.run(blaster, args.symbols, args.loopback_frames)
        return
    with tempfile.TemporaryDirectory(prefix="klined-bench-trades-", dir=".") as tmp:
        r = None if args.loopback_only else trio.run(run, args.symbols, args.trades, Path(tmp))
        lb = run_readers(args.symbols, args.loopback_frames, Path(tmp), args.profile)
    print(f"klined trade-candles benchmark: {args.symbols} symbols, {args.trades:,} trades, 1m + 5m + 15m each")
    if r is not None:
        share = r["per_trade_us"] * 200_000 / 1e6 * 100
        print(f"  aggregation per trade (klined's deliver) .... {r['per_trade_us']:6.2f} µs")
        ratio = r["per_trade_us"] / r["parse_us"]
        print(f"  parsing the aggTrade JSON (baseline) ........ {r['parse_us']:6.2f} µs  ({ratio:.2f}x)")
        print(f"  one core's share at 200,000 trades/s ........ {share:6.1f} %  (aggregation only)")
        print(f"  ... with parsing, at 200,000 trades/s ....... {(r['per_trade_us'] + r['parse_us']) * 20:6.1f} %")
        p50, top = r["tick_p50_ms"], r["tick_max_ms"]
        print(f"  tick -> durable, every symbol's closes ...... p50 {p50:.1f} ms, max {top:.1f} ms")
        print(f"  the 15m boundary ({int(r['closes_at_15m']):,} closes in one batch) . {r['boundary_15m_ms']:.1f} ms")
    print(f"  on loopback, a blaster process, one reader at a time over {args.symbols} aggTrade streams;")
    print("  per core/s = frames a core would take at this CPU a frame; x bare: CPU a frame / the bare reader's;")
    print("  x old: the trio-websocket path's CPU a frame / this one's (trades/s per core against today's path)")
    for regime, title in REGIMES.items():
        n = paced_frames(args.loopback_frames) if regime else args.loopback_frames
        print(f"  {title}, {n:,} frames")
        print("    reader                                        frames/s  CPU   µs/frame  per core/s  x bare  x old")
        bare, old = lb[regime, "bare"]["us"], lb[regime, "trio-websocket+parse"]["us"]
        for variant, label in READERS.items():
            m = lb[regime, variant]
            per_core = 1e6 / m["us"]
            print(
                f"    {label:<44} {m['rate']:>8,.0f} {m['cpu_share']:4.0f} % {m['us']:8.1f}  {per_core:>10,.0f}"
                f"  {m['us'] / bare:6.2f}  {old / m['us']:5.2f}"
            )
        klined = lb[regime, "klined"]["us"]
        print(f"    klined's reader: {old / klined:.2f}x the trades/s per core of the trio-websocket path")
    klined = lb["", "klined"]["us"]
    print(f"  at full load {klined:.1f} µs a trade: 200,000 trades/s would need {klined * 0.2:.1f} cores")
    if r is not None:
        print()
        verdict = "PASS" if r["tick_max_ms"] < 100 else "FAIL"
        print(f"target: tick -> durable p99 < 100 ms ... {verdict} (max {r['tick_max_ms']:.1f} ms)")


if __name__ == "__main__":
    main()
