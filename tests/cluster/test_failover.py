"""The writer killed again and again (chaos style): three real ``klined`` nodes on a real 3-node NATS cluster,
following the fake exchange on a fast clock, with a chart subscribed on every node and a client posting closed
candles to whichever node it reaches (a replica's 409 names the writer, and the client goes there).

Each round SIGKILLs the node that writes, measures the time until another node writes its first candle, and
restarts the killed node (it comes back as a replica). At the end, with every node caught up:
- every node's log is the same, seq by seq, and so are its projections;
- every closed period of every series (1m and the derived 5m) from the first stored one is in the log and
  equals the exchange's kline; no candle is stored twice, none corrected;
- every acknowledged HTTP candle is in the log;
- every chart, on every node, received candles strictly ascending, each once, each equal to the exchange's,
  with a ``gap`` frame exactly where consecutive candles are not adjacent;
- each failover took at most the lease TTL plus the catch-up bound.

``pytest --cluster-long`` kills the writer 20 times; the default run a few.
"""

from __future__ import annotations

import json
import random
import signal
import urllib.request
from contextlib import suppress
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from actors.projector import Projector
from daemon.fakex.market import Market
from daemon.fakex.server import FakeExchange, FakeExchangeUrls, exchange_clock
from daemon.storage.eventlog import EventLog
from daemon.storage.projection_store import ProjectionStore
from protocol.logrecords import EventKind, LogEvent
from protocol.series import SeriesId
from tests.actors.test_projector import outputs
from tests.cluster.nats_cluster import NatsCluster, Node
from tests.cluster.nodes import LEASE_TTL_S, Chart, KlinedNode, klined_node, wait_for
from tests.exchange_truth import check_frames, exchange_kline, matches

SPEED = 120.0  # exchange seconds per wall second: a 1m period closes every 0.5 s
SERIES = ["binance:spot:BTC/USDT:1m", "binance:spot:ETH/USDT:1m"]
DERIVED = [s.replace(":1m", ":5m") for s in SERIES]
ACKED = "binance:spot:ACK/USDT:1m"  # not on the exchange: only the HTTP client writes it
NODES = ("k1", "k2", "k3")
CATCH_UP_BOUND_S = 6.0  # beyond the lease TTL: the take's poll, catch-up, and a loaded 2-core machine
ENV = {
    "KLINED_WHITELIST": ",".join(SERIES),
    "KLINED_ENABLE_DERIVED_TIMEFRAMES": "1",
    "KLINED_DERIVED_TIMEFRAMES": "5m",
    "KLINED_ENABLE_MARKET_GAP_BACKFILL": "1",
    "KLINED_ENABLE_CCXT_BACKFILL": "1",
    "KLINED_ENABLE_STARTUP_KLINE_SYNC": "1",
    "KLINED_STARTUP_KLINE_SYNC_TARGET_CANDLES": "30",
    "KLINED_MARKET_HISTORY_SOURCE": "ccxt",
    "KLINED_DEV_CLOCK_SPEED": str(SPEED),
}


@attrs.define
class Kill:
    killed: str
    new_writer: str
    failover_s: float  # from SIGKILL to the new writer's first appended event
    seq_at_kill: int


@attrs.define
class Nodes:
    """The nodes' lives: each is restarted whenever it dies, until ``stopping``; a chart on each."""

    root: Path
    urls: FakeExchangeUrls
    nats: NatsCluster
    names: tuple[str, ...] = NODES
    alive: dict[str, KlinedNode | None] = attrs.field(init=False)
    charts: dict[str, Chart] = attrs.field(init=False)
    stopping: bool = False

    def __attrs_post_init__(self) -> None:
        self.alive = dict.fromkeys(self.names)
        self.charts = {n: Chart([*SERIES, *DERIVED]) for n in self.names}

    async def start(self, outer: trio.Nursery, fake: FakeExchange) -> None:
        self.urls = await outer.start(fake.serve)
        for name in self.names:
            outer.start_soon(self.keep_running, name, {})
        await wait_for(lambda: all_alive(self), "every node up", timeout_s=60)

    async def stop(self) -> None:
        self.stopping = True
        for node in self.alive.values():
            if node is not None:
                node.proc.terminate()
        await wait_for(lambda: none_alive(self), "every node stopped", timeout_s=30)

    async def keep_running(self, name: str, extra: dict[str, str]) -> None:
        while not self.stopping:
            async with klined_node(self.root, name, self.urls, self.nats, **ENV, **extra) as node:
                self.alive[name] = node
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.charts[name].watch, node.url)
                    await node.proc.wait()  # killed by the run, or stopped at the end
                    nursery.cancel_scope.cancel()
            self.alive[name] = None

    async def roles(self) -> dict[str, dict[str, Any]]:
        """Each live node's own view of itself."""
        views: dict[str, dict[str, Any]] = {}
        for name, node in list(self.alive.items()):
            if node is None:
                continue
            with suppress(OSError, ValueError):
                view = await node.cluster()
                views[name] = next(n for n in view["nodes"] if n["node"] == name)
        return views

    async def writer(self) -> tuple[str, int] | None:
        """The node that writes and has written since it became the writer, with its applied seq."""
        writers = [(n, v) for n, v in (await self.roles()).items() if v["role"] == "writer"]
        if len(writers) != 1:
            return None
        return writers[0][0], int(writers[0][1]["applied_seq"])


async def poster(nodes: Nodes, acked: list[int], rng: random.Random) -> None:
    """Closed candles of ACKED, one at a time, to a random live node; a 409 names the writer, tried next."""
    t = 60
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            await trio.sleep(0.05)
            live = [n for n in nodes.alive.values() if n is not None]
            if not live:
                continue
            node = rng.choice(live)
            body = {
                "series_id": ACKED,
                "candle": {"candle_time": t, "open": 1, "high": 2, "low": 0.5, "close": 1.5, "volume": 3},
            }
            for _ in range(2):
                try:
                    r = await http.post(node.url + "/api/market/ingest/candle_closed", json=body)
                except httpx.HTTPError:
                    break  # the node died under us: not acknowledged
                if r.status_code == 200:
                    acked.append(t)
                    t += 60
                    break
                if r.status_code == 503:
                    break  # the node is stopping: not acknowledged
                assert r.status_code == 409, r.text
                answer = r.json()
                assert answer["code"] == "not_writer", answer
                assert "node" in answer["detail"], answer  # which node refused, and who writes or will
                writer = nodes.alive.get(answer.get("writer") or "")
                if writer is None:
                    break
                node = writer


async def caught_up(nodes: Nodes, fake: FakeExchange) -> int:
    """Wait (bounded) until every node holds every series whole up to the last closed period; returns it."""
    market = fake.market
    short: list[object] = []  # what was last found missing, for the failure's message

    async def whole() -> int | None:
        end_s = fake.now_ms() // 1000 // 60 * 60 - 60
        async with httpx.AsyncClient(timeout=10) as http:
            for node in nodes.alive.values():
                assert node is not None
                for sid in [*SERIES, *DERIVED]:
                    series = SeriesId.parse(sid)
                    tf = series.timeframe
                    last = tf.last_closed_open(end_s + 60)
                    first = await http.get(
                        node.url + "/api/market/candles", params={"series_id": sid, "since": 0, "limit": 1}
                    )
                    if not first.json()["candles"]:
                        short[:] = [node.name, sid, "empty"]
                        return None
                    since = first.json()["candles"][0]["candle_time"] - tf.seconds  # from the first stored one
                    params: dict[str, str | int] = {"series_id": sid, "since": since, "limit": 5000}
                    got = {
                        c["candle_time"]: c
                        for c in (await http.get(node.url + "/api/market/candles", params=params)).json()["candles"]
                    }
                    for t in range(tf.next_open(since), last + 1, tf.seconds):
                        c = got.get(t)
                        if c is None:
                            short[:] = [node.name, sid, t, "missing", end_s]
                            return None
                        row = (t, c["open"], c["high"], c["low"], c["close"], c["volume"], c.get("synthetic", False))
                        if not matches(row, exchange_kline(market, series, t)):
                            short[:] = [node.name, sid, t, "unequal", row, end_s]
                            return None
        return end_s

    try:
        end: int = await wait_for(whole, "every node caught up with the exchange", timeout_s=90, poll_s=0.25)
    except trio.TooSlowError:
        raise AssertionError(f"a node never caught up with the exchange: {short}") from None
    return end


def read_log(data: Path) -> list[LogEvent]:
    with EventLog(data / "eventlog") as log:
        return log.events_since(0)


async def check(nodes: Nodes, market: Market, end_s: int, acked: list[int], tmp: Path) -> list[tuple[str, int, int]]:
    rows: list[tuple[str, int, int]] = []
    names = nodes.names
    logs = {name: read_log(nodes.root / name) for name in names}
    first = max(logs.values(), key=len)
    # Stopped one after the other while candles arrive: a node may stop an event or two short of the longest
    # log, never with a different event at any seq.
    diverged = sum(logs[n] != first[: len(logs[n])] for n in names)
    rows.append(("logs equal, seq by seq, to the longest (nodes)", len(names), diverged))
    by_series: dict[str, list[int]] = {}
    corrected = 0
    for e in first:
        if e.kind is EventKind.CANDLE_CORRECTED:
            corrected += e.series_id != ACKED
        else:
            by_series.setdefault(e.series_id, []).append(e.candle.candle_time)
    checked = missing = wrong = 0
    with EventLog(nodes.root / names[0] / "eventlog") as log:
        for sid in [*SERIES, *DERIVED]:
            series = SeriesId.parse(sid)
            tf = series.timeframe
            stored = {c.candle_time: c for c in log.range(sid)}
            t = min(stored)
            while t <= tf.last_closed_open(end_s + 60):
                checked += 1
                c = stored.get(t)
                missing += c is None
                wrong += c is not None and not matches(tuple(c), exchange_kline(market, series, t))
                t = tf.next_open(t)
        acked_stored = {c.candle_time for c in log.range(ACKED)}
    rows.append(("closed periods in the log (1m, derived 5m)", checked, missing))
    rows.append(("stored candle equals the exchange's kline", checked, wrong))
    rows.append(
        (
            "candles stored twice",
            sum(map(len, by_series.values())),
            sum(len(v) - len(set(v)) for v in by_series.values()),
        )
    )
    rows.append(("candle_corrected events on exchange series", len(first), corrected))
    rows.append(("acknowledged HTTP candles kept", len(acked), len(set(acked) - acked_stored)))
    for name in names:
        frames = check_frames(nodes.charts[name].sessions, market)
        rows.append((f"{name} chart: ascending, each once", frames.sent, frames.bad_order))
        rows.append((f"{name} chart: equal to the exchange", frames.sent, frames.bad_value))
        rows.append((f"{name} chart: gap frame exactly at each hole", frames.sent, frames.bad_gap))
    projections: dict[str, list[Any]] = {}
    for name in names:
        with EventLog(nodes.root / name / "eventlog") as log:
            projector = Projector(log, ProjectionStore(nodes.root / name / "projections"))
            projections[name] = [outputs(projector, SeriesId.parse(s)) for s in SERIES]
            projector.pstore.close()
    with EventLog(nodes.root / names[0] / "eventlog") as log:
        scratch = Projector(log, ProjectionStore(tmp / "scratch"))
        await scratch.start()
        replay = [outputs(scratch, SeriesId.parse(s)) for s in SERIES]
        scratch.pstore.close()
    rows.append(
        ("projections equal a replay of the log (nodes)", len(names), sum(projections[n] != replay for n in names))
    )
    return rows


def print_report(kills: list[Kill], rows: list[tuple[str, int, int]], events: int) -> None:
    lines = [
        f"cluster writer-kill run: {len(kills)} kills at {SPEED:.0f}x, lease TTL {LEASE_TTL_S} s, {events} log events"
    ]
    lines.append(f"{'kill':>4} {'killed':<7} {'new writer':<10} {'failover_s':>10} {'seq at kill':>11}")
    lines += [
        f"{i:>4} {k.killed:<7} {k.new_writer:<10} {k.failover_s:>10.2f} {k.seq_at_kill:>11}"
        for i, k in enumerate(kills, 1)
    ]
    lines.append(f"{'invariant':<52} {'checked':>8} {'violations':>10}")
    lines += [f"{name:<52} {checked:>8} {bad:>10}" for name, checked, bad in rows]
    print("\n".join(lines))


@pytest.mark.slow
async def test_killing_the_writer_loses_nothing_and_hands_over(
    cluster: NatsCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    kills_wanted = 20 if request.config.getoption("--cluster-long") else 3
    rng = random.Random(20261207)
    market = Market.default(spot=["BTCUSDT", "ETHUSDT"])
    fake = FakeExchange(market, exchange_clock(speed=SPEED))
    nodes = Nodes(tmp_path, FakeExchangeUrls("", ""), cluster)
    kills: list[Kill] = []
    acked: list[int] = []
    async with trio.open_nursery() as outer:
        await nodes.start(outer, fake)
        outer.start_soon(poster, nodes, acked, rng)
        for _ in range(kills_wanted):
            await wait_for(lambda: all_alive(nodes), "three nodes up", timeout_s=60)
            await trio.sleep(rng.uniform(0.5, 2.0))  # the market runs on: kill at a random point of a period
            kills.append(await kill_the_writer(nodes))
        await wait_for(lambda: all_alive(nodes), "three nodes up", timeout_s=60)
        end_s = await settle_and_stop(nodes, fake)
        outer.cancel_scope.cancel()
    rows = await check(nodes, market, end_s, acked, tmp_path)
    print_report(kills, rows, len(read_log(tmp_path / "k1")))
    assert sum(bad for _, _, bad in rows) == 0, rows
    slow = [k for k in kills if k.failover_s > LEASE_TTL_S + CATCH_UP_BOUND_S]
    assert not slow, slow


@pytest.mark.slow
async def test_a_writer_stopped_past_its_lease_wakes_as_a_replica(cluster: NatsCluster, tmp_path: Path) -> None:
    """SIGSTOP the writer past its lease: another node writes; SIGCONT: the old writer appends nothing, says
    it lost the lease, and follows the new one."""
    market = Market.default(spot=["BTCUSDT", "ETHUSDT"])
    fake = FakeExchange(market, exchange_clock(speed=SPEED))
    nodes = Nodes(tmp_path, FakeExchangeUrls("", ""), cluster, names=("k1", "k2"))
    acked: list[int] = []
    async with trio.open_nursery() as outer:
        await nodes.start(outer, fake)
        outer.start_soon(poster, nodes, acked, random.Random(7))
        zombie, _ = await wait_for(nodes.writer, "a writer", timeout_s=60)
        frozen = nodes.alive[zombie]
        assert frozen is not None
        nodes.alive[zombie] = None  # nobody asks a stopped process anything
        frozen.proc.send_signal(signal.SIGSTOP)
        new_writer, seq = await wait_for(lambda: other_writer(nodes, zombie), "a new writer", timeout_s=60)
        await wait_for(lambda: wrote_past(nodes, new_writer, seq + 4), "the new writer writes on", timeout_s=30)
        frozen.proc.send_signal(signal.SIGCONT)
        nodes.alive[zombie] = frozen
        await wait_for(lambda: plays(nodes, zombie, "replica"), "the old writer follows", timeout_s=30)
        end_s = await settle_and_stop(nodes, fake)
        outer.cancel_scope.cancel()
    said = (tmp_path / f"{zombie}.log").read_text()
    assert '"cluster_lease_lost"' in said
    assert '"cluster_writer_stepping_down"' in said
    rows = await check(nodes, market, end_s, acked, tmp_path)
    print_report([], rows, len(read_log(tmp_path / "k1")))
    assert sum(bad for _, _, bad in rows) == 0, rows


@pytest.mark.slow
async def test_killing_the_stream_leader_stalls_writes_and_loses_nothing(cluster: NatsCluster, tmp_path: Path) -> None:
    market = Market.default(spot=["BTCUSDT", "ETHUSDT"])
    fake = FakeExchange(market, exchange_clock(speed=SPEED))
    nodes = Nodes(tmp_path, FakeExchangeUrls("", ""), cluster, names=("k1", "k2"))
    acked: list[int] = []
    async with trio.open_nursery() as outer:
        await nodes.start(outer, fake)
        outer.start_soon(poster, nodes, acked, random.Random(11))
        writer, seq = await wait_for(nodes.writer, "a writer", timeout_s=60)
        await wait_for(lambda: wrote_past(nodes, writer, seq + 4), "the writer writes", timeout_s=30)
        leader = await trio.to_thread.run_sync(stream_leader, cluster)
        tip = max(int(v["applied_seq"]) for v in (await nodes.roles()).values())
        leader.kill()
        killed_at = trio.current_time()
        await wait_for(lambda: some_writer_past(nodes, tip + 4), "writes resumed", timeout_s=60)
        print(f"stream leader {leader.name} killed: writes resumed after {trio.current_time() - killed_at:.2f} s")
        leader.start()  # back: it catches up from its peers
        end_s = await settle_and_stop(nodes, fake)
        outer.cancel_scope.cancel()
    rows = await check(nodes, market, end_s, acked, tmp_path)
    print_report([], rows, len(read_log(tmp_path / "k1")))
    assert sum(bad for _, _, bad in rows) == 0, rows


def stream_leader(cluster: NatsCluster) -> Node:
    """The NATS server leading the event stream's RAFT group (from the servers' monitoring)."""
    for node in cluster.nodes:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.monitor_port}/jsz?streams=1", timeout=2) as r:
            answer = json.load(r)
        for account in answer.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                if stream["name"] == "kt_events" and (stream.get("cluster") or {}).get("leader"):
                    return next(n for n in cluster.nodes if n.name == stream["cluster"]["leader"])
    raise AssertionError("the event stream has no leader")


async def some_writer_past(nodes: Nodes, seq: int) -> bool:
    """Whoever writes now (the same node or, if its lease lapsed meanwhile, another) has appended past ``seq``."""
    found = await nodes.writer()
    return found is not None and found[1] > seq


async def plays(nodes: Nodes, name: str, role: str) -> bool:
    view = (await nodes.roles()).get(name)
    return view is not None and view["role"] == role


async def settle_and_stop(nodes: Nodes, fake: FakeExchange) -> int:
    """Every node caught up with the exchange and every chart at the head, then every node stopped: the last
    closed period checked."""
    end_s = await caught_up(nodes, fake)
    await wait_for(lambda: charts_at_head(nodes, end_s), "every chart at the head", timeout_s=30, poll_s=0.1)
    await nodes.stop()
    return end_s


async def kill_the_writer(nodes: Nodes) -> Kill:
    """SIGKILL the writer; return once another process (another node, or the killed one restarted: it may win
    the lease again) has appended its first event as the writer."""
    writer, seq = await wait_for(nodes.writer, "a writer", timeout_s=60)
    victim = nodes.alive[writer]
    assert victim is not None
    killed_at = trio.current_time()
    victim.proc.kill()
    new_writer, new_seq = await wait_for(lambda: other_writer(nodes, victim), "a new writer", timeout_s=60)
    await wait_for(lambda: wrote_past(nodes, new_writer, new_seq), "the new writer's first event", timeout_s=30)
    return Kill(writer, new_writer, trio.current_time() - killed_at, seq)


async def all_alive(nodes: Nodes) -> bool:
    return all(n is not None for n in nodes.alive.values())


async def none_alive(nodes: Nodes) -> bool:
    return all(n is None for n in nodes.alive.values())


async def other_writer(nodes: Nodes, old: str | KlinedNode) -> tuple[str, int] | None:
    """The writer, if it is not ``old`` (a node's name, or one process of it)."""
    found = await nodes.writer()
    if found is None:
        return None
    if isinstance(old, str):
        return found if found[0] != old else None
    return found if nodes.alive.get(found[0]) is not old else None


async def wrote_past(nodes: Nodes, name: str, seq: int) -> bool:
    view = (await nodes.roles()).get(name)
    return view is not None and view["role"] == "writer" and int(view["applied_seq"]) > seq


async def charts_at_head(nodes: Nodes, end_s: int) -> bool:
    for chart in nodes.charts.values():
        for sid in [*SERIES, *DERIVED]:
            tf = SeriesId.parse(sid).timeframe
            if (chart.since.get(sid) or 0) < tf.last_closed_open(end_s + 60):
                return False
    return True
