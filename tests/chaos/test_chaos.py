"""Truth under faults (issue 9): the real ``klined`` against the fake exchange for hours of market compressed
into seconds, with faults injected at random (seeded), then the log checked against the exchange.

The fake exchange's clock runs ``SPEED`` times as fast and klined follows it (``dev_clock_speed``). Faults:
upstream drops, silences and refused reconnects, 429/418 storms, REST pages that repeat, duplicate, swapped
and late closed candles, malformed payloads, SIGKILL and SIGTERM of klined with a restart, a tiny LMDB map
that must grow, a slow and a dead subscriber, a client posting closed candles the whole time, and hostile
peers on every listener (``hostile_peers.py``: garbage, resets, half-closes, silence, trickled headers).

After the run, invariants are checked and printed as a table:
- every closed period of every whitelisted series (1m and the derived 5m) from the first stored one to the
  end is in the log and equals the exchange's kline, flagged synthetic only where the exchange had no trade
  (SOL is built from trades); no candle is stored twice; the kline-stream series are never corrected;
- every subscriber connection received candles strictly ascending, each once, each equal to the exchange's
  (or, built from trades, to a candle the log corrected later), with a ``gap`` frame exactly where
  consecutive candles are not adjacent, up to the head at the end;
- every closed candle acknowledged by ``POST /api/market/ingest/candle_closed`` is in the log;
- the factor projections equal a replay of the log from scratch;
- every hostile peer was answered or cut (none left open past the daemon's bound).

``pytest --chaos-long`` runs 24 simulated hours instead of 3.
"""

from __future__ import annotations

import random
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from actors.projector import Projector
from daemon.fakex.market import Market
from daemon.fakex.server import FakeExchange, exchange_clock
from daemon.storage.eventlog import EventLog
from daemon.storage.projection_store import ProjectionStore
from protocol.logrecords import EventKind
from protocol.series import SeriesId
from tests.actors.test_projector import outputs
from tests.chaos.hostile_peers import PEERS, Listener, listeners, must_be_cut
from tests.exchange_truth import check_frames, matches, wire
from tests.klined_process import klined

SPEED = 240.0  # exchange seconds per wall second: a 1m period every 0.25 s
# SOL is built from its aggTrade stream (clock-driven, flat synthetic candles for minutes without a trade);
# the others from kline streams.
KLINE_SERIES = ["binance:spot:BTC/USDT:1m", "binance:spot:ETH/USDT:1m"]
TRADE_SERIES = ["binance:spot:SOL/USDT:1m"]
TRADE_SOURCES = ["binance:spot:SOL/USDT"]
# The series of this run (set by the test): whitelisted 1m, and their derived 5m.
WHITELIST: list[str] = []
DERIVED: list[str] = []
ACKED = "binance:spot:ACK/USDT:1m"  # not on the exchange: candles only ever come from the HTTP client
KINDS = ("drop", "silence", "outage", "429", "418", "repeat_pages", "resend", "swap", "late", "malformed")
KILLS = ("sigkill", "sigterm")
HOSTILE_CUT_S = 2.0  # the daemon's http_idle_timeout_s and control_request_timeout_s in this run


@attrs.define
class Run:
    """What the run did and saw, for the checks and the report."""

    faults: Counter[str] = attrs.field(factory=Counter)
    acked: list[int] = attrs.field(factory=list)
    sessions: list[dict[str, list[dict[str, Any]]]] = attrs.field(factory=list)  # per klined life: frames
    slow_closed: int = 0
    restarts: int = 0
    reached_head: int = 0  # series whose subscriber got every candle up to the head at the end
    end_lag: dict[str, tuple[int | None, int]] = attrs.field(factory=dict)  # series: (last received, head)
    sigterm_exits: list[tuple[int, float]] = attrs.field(factory=list)  # (exit code, seconds) per SIGTERM
    hostile: Counter[str] = attrs.field(factory=Counter)  # "listener/peer: outcome" -> count


def is_trade_built(sid: str) -> bool:
    return any(sid.startswith(f"{source}:") for source in TRADE_SOURCES)


def ack_candle(t: int) -> dict[str, Any]:
    return {"candle_time": t, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": float(t % 11)}


@attrs.define
class Progress:
    """Set whenever a subscriber's cursor moves (the end of the run waits on it)."""

    moved: trio.Event = attrs.field(factory=trio.Event)

    def bump(self) -> None:
        self.moved.set()
        self.moved = trio.Event()


async def subscriber(
    url: str, since: dict[str, int | None], frames: dict[str, list[dict[str, Any]]], progress: Progress | None = None
) -> None:
    """A chart: subscribes to every series from its last candle, records every frame until the socket goes."""
    try:
        async with open_websocket_url(url.replace("http://", "ws://") + "/ws/market", max_message_size=64 << 20) as ws:
            for sid in [*WHITELIST, *DERIVED]:
                await ws.send_message(
                    orjson.dumps({"type": "subscribe", "series_id": sid, "since": since[sid], "supports_batch": True})
                )
            while True:
                frame = orjson.loads(await ws.get_message())
                sid = frame.get("series_id")
                if sid in frames:
                    frames[sid].append(frame)
                    if frame["type"] == "candle_closed":
                        since[sid] = frame["candle"]["candle_time"]
                    elif frame["type"] == "candles_batch":
                        since[sid] = frame["candles"][-1]["candle_time"]
                    if progress is not None:
                        progress.bump()
    except (ConnectionClosed, HandshakeError, OSError):
        return


async def slow_and_dead(url: str, run: Run) -> None:
    """A subscriber that reads a frame a second and one that never reads: neither may slow anyone down."""
    ws_url = url.replace("http://", "ws://") + "/ws/market"
    try:
        async with open_websocket_url(ws_url) as dead, open_websocket_url(ws_url) as slow:
            for ws in (dead, slow):
                for sid in WHITELIST:
                    await ws.send_message(orjson.dumps({"type": "subscribe", "series_id": sid, "since": None}))
            while True:
                await slow.get_message()
                await trio.sleep(1.0)
    except (ConnectionClosed, HandshakeError, OSError):
        run.slow_closed += 1


async def poster(url: str, run: Run, next_t: list[int]) -> None:
    """Closed candles over HTTP, one at a time and in batches of 500 (volume: the tiny map must grow);
    a 200 is an acknowledgement the log must keep."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        for n in range(1_000_000):
            t = next_t[0]
            times = list(range(t, t + 60 * (500 if n % 4 == 3 else 1), 60))
            try:
                if len(times) == 1:
                    body = {"series_id": ACKED, "candle": ack_candle(t)}
                    r = await http.post("/api/market/ingest/candle_closed", json=body)
                else:
                    body = {"series_id": ACKED, "candles": [ack_candle(x) for x in times], "publish_ws": True}
                    r = await http.post("/api/dev/market/ingest/candles_closed_batch", json=body)
            except httpx.HTTPError:
                return  # klined went away: not acknowledged
            if r.status_code == 200:
                run.acked.extend(times)
                next_t[0] = times[-1] + 60
            await trio.sleep(0.02)


async def hostile(url: str, control: Path, run: Run, rng: random.Random) -> None:
    """Hostile peers on every listener, a few a second, for the whole life of one klined."""
    targets = listeners(str(control), int(url.rsplit(":", 1)[1]))

    async def one(listener: Listener, kind: str) -> None:
        try:
            outcome = await PEERS[kind](listener, HOSTILE_CUT_S)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, AssertionError):
            outcome = "daemon gone"  # killed by the run mid-way: not a verdict on the daemon
        if outcome == "open" and not must_be_cut(listener.name, kind):
            outcome = "open (allowed)"
        run.hostile[f"{listener.name}/{kind}: {outcome}"] += 1

    async with trio.open_nursery() as nursery:
        while True:
            nursery.start_soon(one, rng.choice(targets), rng.choice(list(PEERS)))
            await trio.sleep(rng.uniform(0.05, 0.4))


def inject(fake: FakeExchange, kind: str, rng: random.Random) -> None:
    now = fake.now_ms()
    faults, rest = fake.streams.faults, fake.rest_faults
    minute = 60_000
    if kind == "drop":
        faults.drop_generation += 1
    elif kind == "silence":
        faults.silent_until_ms = now + rng.randint(2, 12) * minute
    elif kind == "outage":  # connections dropped and refused for a while
        faults.refuse_until_ms = now + rng.randint(2, 10) * minute
        faults.drop_generation += 1
    elif kind in ("429", "418"):
        rest.status, rest.count, rest.path_prefix = int(kind), rng.randint(3, 30), ""
    elif kind == "repeat_pages":
        rest.repeat_pages = True
    elif kind == "resend":
        faults.resend_closed = rng.randint(1, 6)
    elif kind == "swap":
        faults.swap_next_closed = True
    elif kind == "late":
        base = now // 1000 // 60 * 60
        faults.replay_after_close = tuple(base - 60 * k for k in rng.sample(range(2, 40), 3))
    elif kind == "malformed":
        faults.malformed = rng.randint(1, 8)


@pytest.mark.slow
async def test_the_log_is_the_exchange_through_faults(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    long = bool(request.config.getoption("--chaos-long"))
    hours = 24 if long else 3
    WHITELIST[:] = KLINE_SERIES + TRADE_SERIES
    DERIVED[:] = [s.replace(":1m", ":5m") for s in WHITELIST]
    seed = 20261127
    rng = random.Random(seed)
    run = Run()
    market = Market.default(spot=["BTCUSDT", "ETHUSDT", "SOLUSDT"])
    clock = exchange_clock(speed=SPEED)
    fake = FakeExchange(market, clock)
    # Quiet stretches on SOL (no trade at all): 1-15 minutes, a few an hour, over the whole run.
    start = clock() // 1000 // 60 * 60
    market.spot["SOLUSDT"].quiet = [
        (m, m + 60 * rng.randint(1, 15))
        for m in sorted(start + 60 * rng.randrange(hours * 60) for _ in range(hours * 3))
    ]
    data = tmp_path / "data"
    env = {
        "KLINED_WHITELIST": ",".join(WHITELIST),
        "KLINED_TRADE_SOURCES": ",".join(TRADE_SOURCES),
        "KLINED_ENABLE_DERIVED_TIMEFRAMES": "1",
        "KLINED_DERIVED_TIMEFRAMES": "5m",
        "KLINED_ENABLE_MARKET_GAP_BACKFILL": "1",
        "KLINED_ENABLE_CCXT_BACKFILL": "1",
        "KLINED_ENABLE_STARTUP_KLINE_SYNC": "1",
        "KLINED_MARKET_HISTORY_SOURCE": "ccxt",
        "KLINED_DEV_CLOCK_SPEED": str(SPEED),
        "KLINED_LMDB_MAP_SIZE_MB": "1",  # tiny: it must grow, under load, several times
        "KLINED_ENABLE_DEBUG_API": "1",  # batch ingest
        "KLINED_HTTP_IDLE_TIMEOUT_S": str(HOSTILE_CUT_S),
        "KLINED_CONTROL_REQUEST_TIMEOUT_S": str(HOSTILE_CUT_S),
        "KLINED_HTTP_SEND_TIMEOUT_S": str(HOSTILE_CUT_S),
    }
    wall_s = hours * 3600 / SPEED
    since: dict[str, int | None] = dict.fromkeys([*WHITELIST, *DERIVED])
    next_t = [60]
    async with trio.open_nursery() as outer:
        urls = await outer.start(fake.serve)
        deadline = trio.current_time() + wall_s
        while trio.current_time() < deadline:
            frames: dict[str, list[dict[str, Any]]] = {sid: [] for sid in since}
            run.sessions.append(frames)
            async with (
                klined(data, urls, tmp_path / "klined.log", **env) as (proc, url),
                trio.open_nursery() as clients,
            ):
                clients.start_soon(subscriber, url, since, frames)
                clients.start_soon(slow_and_dead, url, run)
                clients.start_soon(poster, url, run, next_t)
                clients.start_soon(hostile, url, data / "klined.sock", run, random.Random(rng.random()))
                life = min(deadline, trio.current_time() + rng.uniform(3.0, 9.0))
                while trio.current_time() < life:
                    await trio.sleep(rng.uniform(0.2, 1.2))
                    kind = rng.choice(KINDS)
                    inject(fake, kind, rng)
                    run.faults[kind] += 1
                    if rng.random() < 0.3:  # storms and repeats end
                        fake.rest_faults.repeat_pages = False
                if trio.current_time() < deadline:
                    kill = rng.choice(KILLS)
                    run.faults[kill] += 1
                    run.restarts += 1
                    proc.send_signal(signal.SIGKILL if kill == "sigkill" else signal.SIGTERM)
                    stopping = trio.current_time()
                    with trio.fail_after(15):
                        code = await proc.wait()
                    if kill == "sigterm":
                        run.sigterm_exits.append((code, trio.current_time() - stopping))
                clients.cancel_scope.cancel()
        # The end: faults off, one last life to catch up, then a clean stop.
        fake.rest_faults.repeat_pages = False
        fake.rest_faults.count = 0
        fake.streams.faults.refuse_until_ms = 0
        fake.streams.faults.silent_until_ms = 0
        frames = {sid: [] for sid in since}
        run.sessions.append(frames)
        async with klined(data, urls, tmp_path / "klined.log", **env) as (proc, url), trio.open_nursery() as clients:
            progress = Progress()
            clients.start_soon(subscriber, url, since, frames, progress)
            end_s, heads = await caught_up(url, fake)
            await repairs_settled(url, market, end_s)
            with trio.move_on_after(30):  # the subscriber's frames of the last candles may still be in flight
                while any((since[sid] or 0) < head for sid, head in heads.items()):
                    await progress.moved.wait()
            run.reached_head = sum((since[sid] or 0) >= head for sid, head in heads.items())
            run.end_lag = {sid: (since[sid], head) for sid, head in heads.items() if (since[sid] or 0) < head}
            clients.cancel_scope.cancel()
        outer.cancel_scope.cancel()
    report = await check(data, tmp_path, market, run, end_s)
    print_report(hours, seed, run, report)
    assert report["violations"] == 0, report


async def repairs_settled(url: str, market: Market, end_s: int) -> None:
    """Give the repairs still in flight (gap fills after the restart, the trade audit's next rounds) their
    time: wait, bounded, until the tail of every series reads back whole and equal to the exchange. If it
    never does, the checks below report what is left."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        with trio.move_on_after(60):
            while True:
                ok = True
                for sid in [*WHITELIST, *DERIVED]:
                    series = SeriesId.parse(sid)
                    tf, symbol = series.timeframe, market.spot[series.symbol.replace("/", "")]
                    last = tf.last_closed_open(end_s + 60)
                    since = last - 300 * tf.seconds
                    r = await http.get("/api/market/candles", params={"series_id": sid, "since": since, "limit": 5000})
                    got = {c["candle_time"]: c for c in r.json()["candles"]}
                    for t in range(since + tf.seconds, last + 1, tf.seconds):
                        c = got.get(t)
                        row = None if c is None else (t, *(c[k] for k in ("open", "high", "low", "close", "volume")))
                        if row is None or not matches((*row, c.get("synthetic", False)), wire(symbol.candle(tf, t))):
                            ok = False
                            break
                if ok:
                    return
                await trio.sleep(0.25)  # a real process on a fast clock: there is no event to wait on


async def caught_up(url: str, fake: FakeExchange) -> tuple[int, dict[str, int]]:
    """Wait (bounded) until every whitelisted series holds the last closed period; returns that period and
    the heads."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        with trio.fail_after(60):
            while True:
                last_closed = fake.now_ms() // 1000 // 60 * 60 - 60
                heads: dict[str, int] = {}
                for sid in [*WHITELIST, *DERIVED]:
                    r = await http.get("/api/market/candles", params={"series_id": sid, "limit": 1})
                    candles = r.json()["candles"]
                    tf = SeriesId.parse(sid).timeframe
                    if candles and candles[-1]["candle_time"] >= tf.last_closed_open(last_closed + 60):
                        heads[sid] = candles[-1]["candle_time"]
                if len(heads) == len(WHITELIST) + len(DERIVED):
                    return last_closed, heads
                await trio.sleep(0.1)  # a real process on a fast clock: there is no event to wait on


async def check(data: Path, tmp: Path, market: Market, run: Run, end_s: int) -> dict[str, Any]:
    report: dict[str, Any] = {"violations": 0, "rows": []}

    def row(name: str, checked: int, bad: int, note: str = "") -> None:
        report["rows"].append((name, checked, bad, note))
        report["violations"] += bad

    data_file = (data / "eventlog" / "data.mdb").stat().st_size
    with EventLog(data / "eventlog", map_size=1 << 20) as log:
        events = log.events_since(0)
        by_series: dict[str, list[int]] = {}
        corrected = 0
        trade_corrections = 0
        provisional: set[tuple[str, int, tuple[float, ...]]] = set()  # trade-built candles later replaced
        for e in events:
            if e.kind is EventKind.CANDLE_CORRECTED and e.previous is not None:
                provisional.add((e.series_id, e.candle.candle_time, tuple(e.previous[1:6])))
            if e.kind is EventKind.CANDLE_CORRECTED and is_trade_built(e.series_id):
                trade_corrections += 1  # a synthetic candle the exchange later reported: replaced, as it should
            elif e.kind is EventKind.CANDLE_CORRECTED:
                corrected += 1 if e.series_id != ACKED else 0
                report.setdefault("corrections", []).append(
                    (e.seq, e.series_id, tuple(e.candle), tuple(e.previous or ()))
                )
            else:
                by_series.setdefault(e.series_id, []).append(e.candle.candle_time)
        checked = missing = wrong = 0
        for sid in [*WHITELIST, *DERIVED]:
            series = SeriesId.parse(sid)
            tf = series.timeframe
            symbol = market.spot[series.symbol.replace("/", "")]
            stored = {c.candle_time: c for c in log.range(sid)}
            first = min(stored)
            t = first
            while t <= tf.last_closed_open(end_s + 60):
                checked += 1
                c = stored.get(t)
                if c is None:
                    missing += 1
                    report.setdefault("missing", []).append((sid, t))
                elif not matches(tuple(c), wire(symbol.candle(tf, t))):
                    wrong += 1
                    report.setdefault("wrong", []).append((sid, t, tuple(c), tuple(wire(symbol.candle(tf, t)))))
                t = tf.next_open(t)
        row("closed periods in the log (1m, derived 5m)", checked, missing, "missing")
        row("stored candle equals the exchange's kline", checked, wrong, "different")
        dups = sum(len(ts) - len(set(ts)) for ts in by_series.values())
        row("candles stored twice", sum(map(len, by_series.values())), dups)
        row("candle_corrected events on kline-stream series", len(events), corrected)
        report["trade_corrections"] = trade_corrections
        acked_stored = {c.candle_time for c in log.range(ACKED)}
        row("acknowledged HTTP candles kept", len(run.acked), len(set(run.acked) - acked_stored), "lost")
        # A trade-built period that closed after the audited window (the run stopped before the audit came
        # round, as it does every few seconds of exchange time) may still hold its candle as built: a
        # subscriber got exactly what the log holds. Up to the window's end it must be the exchange's (above).
        for sid in WHITELIST + DERIVED:
            if is_trade_built(sid):
                tf = SeriesId.parse(sid).timeframe
                after = tf.last_closed_open(end_s + 60)
                provisional.update((sid, c.candle_time, tuple(c[1:6])) for c in log.range(sid, after, None, None))
        frames_check = check_frames(run.sessions, market, provisional)
        sent, bad_order, bad_value, bad_gap = (
            frames_check.sent,
            frames_check.bad_order,
            frames_check.bad_value,
            frames_check.bad_gap,
        )
        report["unequal"] = frames_check.unequal
        row("subscriber candles strictly ascending, each once", sent, bad_order)
        row("subscriber candles equal what the log held", sent, bad_value)
        row("gap frame exactly at each hole a subscriber saw", sent, bad_gap)
        slow = sum(1 for code, took in run.sigterm_exits if code != 0 or took > 5.0)
        row("SIGTERM: exit 0 within 5 s", len(run.sigterm_exits), slow)
        series_count = len(WHITELIST) + len(DERIVED)
        row("subscriber reached the head at the end (series)", series_count, series_count - run.reached_head)
        resumed = Projector(log, ProjectionStore(data / "projections"))
        scratch = Projector(log, ProjectionStore(tmp / "scratch"))
        await scratch.start()
        same = sum(outputs(resumed, SeriesId.parse(s)) == outputs(scratch, SeriesId.parse(s)) for s in WHITELIST)
        row("projections equal a replay from scratch (series)", len(WHITELIST), len(WHITELIST) - same)
        left_open = sum(n for key, n in run.hostile.items() if key.endswith(": open"))
        row("hostile peers answered or cut in time", sum(run.hostile.values()), left_open)
        resumed.pstore.close()
        scratch.pstore.close()
        report["lmdb_map_bytes"] = data_file
        report["events"] = len(events)
    return report


def print_report(hours: int, seed: int, run: Run, report: dict[str, Any]) -> None:
    lines = [
        f"chaos run: {hours} simulated hours at {SPEED:.0f}x, seed {seed}, {run.restarts} restarts, "
        f"{report['events']} log events, LMDB file grown to {report['lmdb_map_bytes'] / 2**20:.1f} MB from a 1 MB map",
        "faults injected: " + ", ".join(f"{k} {v}" for k, v in sorted(run.faults.items())),
        f"slow/dead subscribers cut: {run.slow_closed}; synthetic candles the exchange later reported, "
        f"replaced by candle_corrected on the trade-built series: {report.get('trade_corrections', 0)}",
        f"{'invariant':<52} {'checked':>8} {'violations':>10}",
    ]
    lines += [f"{name:<52} {checked:>8} {bad:>10}" for name, checked, bad, _note in report["rows"]]
    lines += [f"  hostile {key}: {n}" for key, n in sorted(run.hostile.items())]
    lines += [f"  missing: {w}" for w in report.get("missing", [])[:40]]
    lines += [f"  subscriber short of the head: {sid} {pair}" for sid, pair in run.end_lag.items()]
    lines += [f"  wrong: {w}" for w in report.get("wrong", [])]
    lines += [f"  unequal to the log: {u}" for u in report.get("unequal", [])]
    lines += [f"  corrected: {c}" for c in report.get("corrections", [])]
    print("\n".join(lines))
