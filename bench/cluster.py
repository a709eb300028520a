"""Cluster benchmark: three klined nodes on a real 3-node NATS cluster, every figure beside standalone.

Everything runs on loopback from the project's own code: three ``nats-server`` (``tests/cluster/nats_cluster.py``),
the fake exchange in this process (N generated symbols, a fast clock), real ``klined run`` processes (one
standalone daemon first, then three cluster nodes; all follow the same N series) and ``bench/fanout.py``'s
WebSocket subscriber processes. Absolute figures on a 2-core machine drift 2-4x from day to day, so each is
printed beside standalone measured in the same run:

1. a minute-close burst of N series: the writer's publish instant (``/api/market/debug/publish_times``) ->
   receipt by a subscriber process on a replica (one client per series). Standalone: publish -> receipt on
   the same node. The writer records publish instants only of series with subscribers, so it has the same
   subscriber process as the standalone node. The first boundary after the subscribers are in warms up.
   Also from the exchange's send instant of each closed kline, which does not depend on the writer's clock,
   and one more burst with the replicas' klined stopped (SIGSTOP): the cluster writer's own path, alone.
2. batched backfill: 1000-candle batches over many series through the debug batch write (not published),
   one client then a few concurrent ones: candles/s on the cluster's writer against the standalone daemon.
   To tell the parts apart: the writer again with the replicas' klined stopped (SIGSTOP), a bare append of
   1000 events to a stream of the same NATS cluster from this process, and each process's CPU at rest.
3. failover: SIGKILL the writer; the time until another node, as the writer, has appended an event (every
   node's control socket polled), while a client posts small batches to whichever node writes.
4. lost and duplicated candles: after the runs, every node's log equal seq by seq, no (series, candle_time)
   appended twice, every acknowledged batch candle in the log.
5. K clients on one series on each of the three nodes: the writer's publish -> receipt, per node, against
   K clients on the standalone daemon; closed candles POSTed one at a time to the writer, between two bursts.

Run: ``python -m bench.cluster [--quick] [--keep DIR]`` (``--keep`` leaves the data and klined logs there).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import nats
import orjson
import trio

from bench.cluster_nodes import BATCH_PATH, ClusterNodes, check_logs, failovers
from bench.fanout import DaemonLog, candle, cpu_seconds, read_line, reap, series_names, spawn_worker
from bench.latency import RawHttp, pct, post_body
from daemon.cluster.bridge import AsyncioThread
from daemon.cluster.stream import EventStream
from daemon.fakex.market import Market
from daemon.fakex.server import ExchangeTime, FakeExchange, exchange_clock
from protocol.candle import Candle
from protocol.cluster_events import encode_event
from protocol.logrecords import EventKind
from tests.cluster.nats_cluster import nats_cluster
from tests.cluster.nodes import wait_for, ws_url
from tests.klined_process import klined

BATCH = 1000  # candles in one backfill batch (the stream's atomic batch holds at most 1000 events)
BACKFILL_SERIES = 100
BACKFILL_FROM = 1_577_836_800  # 2020-01-01: minutes long closed
ONE_SERIES_BASE = "F"  # figure 5's series, F0000, beside the exchange's S0000...
SETTLE_S = 3.0  # after the last burst's boundary, before the subscribers report
REST_S = 5.0  # CPU measured at rest, after the bursts
CLOSED = "/api/market/ingest/candle_closed"
JSON = {"Content-Type": "application/json"}


@attrs.frozen
class Plan:
    series: int = 1000
    speed: float = 2.0  # exchange clock: a minute boundary every 60 / speed s
    bursts: int = 3  # measured, after the warm-up one
    clients: int = 300  # per node, on one series
    posts: int = 200
    batches: int = 40  # sequential; the concurrent clients post as many
    concurrency: int = 4
    kills: int = 4
    lease_ttl_s: float = 5.0


@attrs.define
class Deployment:
    """Where the benchmark writes (the first node, the writer) and whose subscribers it times."""

    nodes: dict[str, str]  # label -> HTTP URL
    pids: dict[str, list[int]]  # label -> processes whose CPU is shown
    replicas: list[int] = attrs.field(factory=list)  # the replicas' klined processes

    @property
    def writer(self) -> str:
        return next(iter(self.nodes.values()))

    def cpu(self) -> dict[str, float]:
        return {k: sum(cpu_seconds(p) for p in pids) for k, pids in self.pids.items()}


# -- subscribers and publish instants ---------------------------------------------------------------


class Subscribers:
    """``bench/fanout.py``'s client processes, one per URL, each ``clients`` clients over ``series`` series."""

    def __init__(self, urls: list[str], clients: int, series: int, base: str = "S") -> None:
        args = argparse.Namespace(clients=clients, series=series, client="raw", series_base=base)
        self.clients = clients
        self.procs = [spawn_worker(ws_url(u), args) for u in urls]

    async def ready(self) -> None:
        for p in self.procs:
            got = await read_line(p.stdout)
            if got["ready"] < self.clients:
                print(f"  warning: only {got['ready']}/{self.clients} clients subscribed", file=sys.stderr)

    async def arrivals(self) -> list[dict[str, dict[str, list[float]]]]:
        """Stop the clients; per process, series -> candle_time -> arrival instants."""
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write("stop\n")
            p.stdin.flush()
        results = [await read_line(p.stdout) for p in self.procs]
        for r in results:
            if r["errors"]:
                print(f"  clients: {r['failed']} failed, {r['closed']} closed: {r['errors'][:3]}", file=sys.stderr)
        return [r["arrivals"] for r in results]

    async def close(self) -> None:
        for p in self.procs:
            if p.stdin is not None and not p.stdin.closed:
                p.stdin.close()  # a client process not yet stopped reports and ends
            await trio.to_thread.run_sync(reap, p)


async def published(url: str, series: list[str]) -> dict[tuple[str, int], float]:
    """A node's publish instants of its recent closed candles, per (series, candle_time)."""
    out: dict[tuple[str, int], float] = {}
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for s in series:
            body = (await http.get("/api/market/debug/publish_times", params={"series_id": s})).json()
            out.update({(s, t): at for t, at in body["published"]})
    return out


def after(origin: dict[tuple[str, int], float], arrivals: dict[str, Any], keys: list[tuple[str, int]]) -> list[float]:
    """Every (candle, subscriber) pair's arrival minus the candle's origin instant."""
    return [a - origin[k] for k in keys if k in origin for a in arrivals[k[0]].get(str(k[1]), [])]


def wall_of(clock: ExchangeTime, exchange_ms: int) -> float:
    """An exchange instant as this host's wall clock (s)."""
    return (clock.origin_ms + (exchange_ms - clock.origin_ms - clock.offset_ms) / clock.speed) / 1000


def next_boundary(clock: ExchangeTime) -> int:
    return (clock() // 60_000 + 1) * 60_000


async def settled_after(clock: ExchangeTime, boundary_ms: int) -> None:
    """Sleep until the burst of the minute boundary ``boundary_ms`` (exchange time) is over."""
    await trio.sleep(max(0.0, wall_of(clock, boundary_ms) + SETTLE_S - time.time()))


@contextmanager
def stopped(pids: list[int]) -> Iterator[None]:
    """These processes SIGSTOPped meanwhile: what the others do without them on the machine's cores."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


async def writer_flushes(url: str) -> tuple[int, int]:
    """The closed-candle writer's group commits so far, and the events they wrote."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        stats = (await http.get("/api/market/debug/ingest_state")).json()["stats"]["writer"]
    return stats["flushes"], stats["written_events"]


# -- 1. minute-close bursts -------------------------------------------------------------------------


async def bursts(fake: FakeExchange, dep: Deployment, plan: Plan) -> dict[str, Any]:
    clock = fake.now_ms
    assert isinstance(clock, ExchangeTime)
    series = series_names(plan.series)
    watched = list(dep.nodes)[:2]  # standalone: itself; a cluster: the writer and a replica
    subs = Subscribers([dep.nodes[n] for n in watched], plan.series, plan.series)
    fake.streams.sent_closes = []  # (stream, open ms, E ms) of every closed kline sent from now on
    try:
        await subs.ready()
        warm_up = next_boundary(clock)
        times = [warm_up // 1000 - 60 + 60 * k for k in range(1, plan.bursts + 1)]
        flushes0, events0 = await writer_flushes(dep.writer)
        await settled_after(clock, warm_up + 60_000 * plan.bursts)
        flushes1, events1 = await writer_flushes(dep.writer)
        if dep.replicas:  # one more burst with the replicas' klined stopped: the writer's own path, alone
            with stopped(dep.replicas):
                await settled_after(clock, warm_up + 60_000 * (plan.bursts + 1))
        arrivals = await subs.arrivals()
    finally:
        await subs.close()
        sent_ms = {(name, open_ms): e for name, open_ms, e in fake.streams.sent_closes or []}
        fake.streams.sent_closes = None
    writer = await published(dep.writer, series)
    # Every closed kline's send instant, on this host's clock, per (series, candle_time).
    sent = {
        (f"binance:spot:{n.split('usdt@')[0].upper()}/USDT:1m", t // 1000): wall_of(clock, e)
        for (n, t), e in sent_ms.items()
    }
    keys = [(s, t) for t in times for s in series]
    alone = [(s, times[-1] + 60) for s in series] if dep.replicas else []
    out: dict[str, Any] = {
        "expected": len(keys),
        "receipt": {n: after(writer, a, keys) for n, a in zip(watched, arrivals, strict=True)},
        "from_exchange": {n: after(sent, a, keys) for n, a in zip(watched, arrivals, strict=True)},
        "to_publish": [writer[k] - sent[k] for k in keys if k in writer and k in sent],
        "to_publish_alone": [writer[k] - sent[k] for k in alone if k in writer and k in sent],
        "per_flush": (events1 - events0) / max(1, flushes1 - flushes0),  # the warm-up burst included
    }
    if len(watched) > 1:  # a replica's share: the stream and its apply, then its own fan-out
        replica = await published(dep.nodes[watched[1]], series)
        out["replica_publish"] = [replica[k] - writer[k] for k in keys if k in replica and k in writer]
    return out


# -- 2. batched backfill ----------------------------------------------------------------------------


async def backfill(dep: Deployment, plan: Plan, acked: list[tuple[str, list[int]]]) -> dict[str, Any]:
    """``plan.batches`` batches from one client, then as many from ``plan.concurrency`` clients; in a cluster,
    as many again from one client with the replicas' klined stopped (the writer and NATS alone on the cores)."""
    work = []
    for i in range(3 * plan.batches):
        series = f"binance:spot:H{i % BACKFILL_SERIES:04d}/USDT:1m"
        start = BACKFILL_FROM + 60 * BATCH * (i // BACKFILL_SERIES)
        times = list(range(start, start + 60 * BATCH, 60))
        body = {"series_id": series, "candles": [candle(t) for t in times], "publish_ws": False}
        work.append((series, times, orjson.dumps(body)))  # encoded ahead: the client's JSON is not timed

    limits = httpx.Limits(max_connections=plan.concurrency, max_keepalive_connections=plan.concurrency)
    async with httpx.AsyncClient(base_url=dep.writer, timeout=120, limits=limits) as http:

        async def post(queue: Any) -> None:
            for series, times, body in queue:
                r = await http.post(BATCH_PATH, content=body, headers=JSON)
                if r.status_code != 200:
                    raise SystemExit(f"batch write: HTTP {r.status_code} {r.text[:200]}")
                acked.append((series, times))

        cpu0, t0 = dep.cpu(), time.perf_counter()
        await post(work[: plan.batches])
        t1 = time.perf_counter()
        queue = iter(work[plan.batches : 2 * plan.batches])  # shared: each batch goes once
        async with trio.open_nursery() as nursery:
            for _ in range(plan.concurrency):
                nursery.start_soon(post, queue)
        t2, cpu1 = time.perf_counter(), dep.cpu()
        out = {
            "sequential": plan.batches * BATCH / (t1 - t0),
            "concurrent": plan.batches * BATCH / (t2 - t1),
            "cpu": {k: (cpu1[k] - cpu0[k]) / (t2 - t0) * 100 for k in cpu0},
        }
        if dep.replicas:
            with stopped(dep.replicas):
                t3 = time.perf_counter()
                await post(work[2 * plan.batches :])
                out["replicas_paused"] = plan.batches * BATCH / (time.perf_counter() - t3)
    return out


# -- 5. one series, K clients per node --------------------------------------------------------------


async def one_series(clock: ExchangeTime, dep: Deployment, plan: Plan) -> dict[str, Any]:
    sid = series_names(1, ONE_SERIES_BASE)[0]
    base = (int(time.time()) // 60 - 100_000) * 60
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(dep.writer + CLOSED, content=post_body(sid, base), headers=JSON)
        r.raise_for_status()
        for url in dep.nodes.values():  # the seed everywhere: each client's catchup says it is subscribed
            await wait_for(functools.partial(has_candles, http, url, sid), f"the seed candle on {url}")
    subs = Subscribers(list(dep.nodes.values()), plan.clients, 1, ONE_SERIES_BASE)
    try:
        await subs.ready()
        await settled_after(clock, next_boundary(clock))  # between two bursts, not across one
        pause_s = 0.02 + len(dep.nodes) * plan.clients / 20_000  # one candle's fan-out ends before the next
        times = await trio.to_thread.run_sync(post_one_by_one, dep.writer, sid, base, plan.posts, pause_s)
        await trio.sleep(1.0)
        arrivals = await subs.arrivals()
    finally:
        await subs.close()
    keys = [(sid, t) for t in times]
    at = {n: await published(url, [sid]) for n, url in dep.nodes.items()}
    writer = next(iter(at.values()))
    return {
        "expected": len(keys) * plan.clients,
        "receipt": {n: after(writer, a, keys) for n, a in zip(dep.nodes, arrivals, strict=True)},
        "node_publish": {
            n: [p[k] - writer[k] for k in keys if k in p and k in writer] for n, p in list(at.items())[1:]
        },
    }


async def has_candles(http: httpx.AsyncClient, url: str, sid: str) -> bool:
    r = await http.get(url + "/api/market/candles", params={"series_id": sid, "limit": 1})
    return r.status_code == 200 and bool(r.json()["candles"])


def post_one_by_one(url: str, sid: str, base: int, posts: int, pause_s: float) -> list[int]:
    http = RawHttp(url)
    try:
        for k in range(1, posts + 1):
            status, answer = http.request("POST", CLOSED, post_body(sid, base + 60 * k))
            if status != 200:
                raise SystemExit(f"POST candle_closed: HTTP {status} {answer[:200]!r}")
            time.sleep(pause_s)
    finally:
        http.close()
    return [base + 60 * k for k in range(1, posts + 1)]


def log_events(path: Path) -> DaemonLog:
    with path.open() as f:
        log = DaemonLog(f)
        log.join()
    return log


# -- the run -------------------------------------------------------------------------------------------


async def run(plan: Plan, root: Path) -> dict[str, Any]:
    clock = exchange_clock(speed=plan.speed)
    fake = FakeExchange(Market.default(spot=[f"S{i:04d}USDT" for i in range(plan.series)]), clock)
    env = {
        "KLINED_WHITELIST": ",".join(series_names(plan.series)),
        "KLINED_ENABLE_DEBUG_API": "1",
        "KLINED_DEV_CLOCK_SPEED": str(plan.speed),
    }
    out: dict[str, Any] = {"acked": {"standalone": [], "cluster": []}}
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(fake.serve)
        print("standalone ...", file=sys.stderr)
        async with klined(root / "standalone", urls, root / "standalone.log", **env) as (proc, url):
            dep = Deployment({"standalone": url}, {"klined": [proc.pid]})
            out["standalone"] = await measure(fake, dep, plan, out["acked"]["standalone"])
        print("cluster ...", file=sys.stderr)
        with ExitStack() as stack:
            (root / "nats").mkdir()
            nats = await trio.to_thread.run_sync(stack.enter_context, nats_cluster(root / "nats"))
            out["bare_appends"] = await bare_appends(nats.urls, 2 * plan.batches)
            lease = {"KLINED_CLUSTER_LEASE_TTL_S": str(plan.lease_ttl_s)}
            async with trio.open_nursery() as nodes_nursery:
                nodes = ClusterNodes(root, urls, nats, {**env, **lease}, nodes_nursery)
                started = [await nodes.start("k1")]
                await wait_for(nodes.writer, "k1 writes")
                started += [await nodes.start(name) for name in ("k2", "k3")]
                await wait_for(nodes.in_step, "k2 and k3 follow")
                labels = ["k1 (writer)", "k2 (replica)", "k3 (replica)"]
                pids = {"nats x3": [n.process.pid for n in nats.nodes if n.process is not None]}
                dep = Deployment(
                    {label: n.url for label, n in zip(labels, started, strict=True)},
                    {**{n.name: [n.proc.pid] for n in started}, **pids},
                    [n.proc.pid for n in started[1:]],
                )
                out["cluster"] = await measure(fake, dep, plan, out["acked"]["cluster"])
                print("failovers ...", file=sys.stderr)
                out["failover"] = await failovers(nodes, plan.kills, out["acked"]["cluster"])
                fake.streams.faults.silent_until_ms = 2**62  # no more klines: nothing left to append
                await wait_for(nodes.settled, "every node at one seq", timeout_s=60)
                await nodes.stop()
            await trio.to_thread.run_sync(stack.close)
        nursery.cancel_scope.cancel()
    return out


async def measure(fake: FakeExchange, dep: Deployment, plan: Plan, acked: list[tuple[str, list[int]]]) -> dict:
    print("  bursts", file=sys.stderr)
    out = {"burst": await bursts(fake, dep, plan)}
    cpu0, t0 = dep.cpu(), time.perf_counter()  # between two bursts: following N series, serving nobody
    await trio.sleep(REST_S)
    cpu1, t1 = dep.cpu(), time.perf_counter()
    out["rest_cpu"] = {k: (cpu1[k] - cpu0[k]) / (t1 - t0) * 100 for k in cpu0}
    print("  one series", file=sys.stderr)
    assert isinstance(fake.now_ms, ExchangeTime)
    out["one"] = await one_series(fake.now_ms, dep, plan)
    print("  backfill", file=sys.stderr)
    out["backfill"] = await backfill(dep, plan, acked)
    return out


async def bare_appends(urls: list[str], n: int) -> list[float]:
    """Baseline: ``n`` appends of a 1000-event atomic batch to a stream of the same NATS cluster, from this
    process through klined's own stream client (the floor under a cluster writer's batch)."""
    body = encode_event(EventKind.CANDLE_CLOSED, "binance:spot:H0000/USDT:1m", Candle(60, 1.0, 2.0, 0.5, 1.5, 3.0))
    times = []
    async with AsyncioThread() as bridge:
        nc: Any = await bridge.run(nats.connect, urls)
        try:
            stream = EventStream(bridge, nc, "bench")
            await stream.open(replicas=3, max_age_s=0)
            for k in range(n):
                t0 = time.perf_counter()
                await stream.append([body] * BATCH, expected_last=k * BATCH, batch_id=f"bench-{k}")
                times.append(time.perf_counter() - t0)
        finally:
            await bridge.run(nc.close)
    return times


# -- the report ------------------------------------------------------------------------------------


def ms(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 1000:.1f} ms"


def p50_p99(values: list[float]) -> str:
    return f"{ms(pct(values, 0.5))} / {ms(pct(values, 0.99))}"


def row(label: str, value: object) -> None:
    print(f"  {label + ' ':.<60} {value}")


def report(plan: Plan, r: dict[str, Any]) -> None:
    solo, clus, fo = r["standalone"], r["cluster"], r["failover"]
    print(
        f"klined cluster benchmark: 3 nodes on a 3-node NATS cluster vs standalone, {plan.series} series on the"
        f" fake exchange at {plan.speed:g}x (a minute boundary every {60 / plan.speed:g} s)"
    )
    sb, cb = solo["burst"], clus["burst"]
    print(f"1. minute-close burst of {plan.series} series, {plan.bursts} burst(s) after a warm-up (p50 / p99)")
    for name, b in (("standalone", sb), ("cluster writer", cb)):
        row(f"{name}: exchange send -> publish (ingest, commit, project)", p50_p99(b["to_publish"]))
        row(f"{name}: closed candles per group commit in the bursts", f"{b['per_flush']:.0f}")
    row("cluster writer, one more burst, replicas' klined stopped", p50_p99(cb["to_publish_alone"]))
    row("writer's publish -> k2's publish", p50_p99(cb["replica_publish"]))
    for origin, key in (("writer's publish", "receipt"), ("exchange send", "from_exchange")):
        for name, lags in [*sb[key].items(), *cb[key].items()]:
            row(f"{name}: {origin} -> receipt", f"{p50_p99(lags)}  ({len(lags)}/{sb['expected']})")
    print(f"2. batched backfill, {BATCH}-candle batches, {plan.batches} per run")
    for label, b in (("standalone", solo["backfill"]), ("cluster writer", clus["backfill"])):
        row(f"{label}: one client", f"{b['sequential']:,.0f} candles/s")
        row(f"{label}: {plan.concurrency} clients", f"{b['concurrent']:,.0f} candles/s")
        row(f"{label}: CPU over both, % of a core", ", ".join(f"{k} {v:.0f}" for k, v in b["cpu"].items()))
    row("cluster writer: one client, replicas' klined stopped", f"{clus['backfill']['replicas_paused']:,.0f} candles/s")
    bare = pct(r["bare_appends"], 0.5)
    row(f"baseline: bare stream append of {BATCH} events, p50", f"{ms(bare)} ({BATCH / bare:,.0f} events/s)")
    for label, m in (("standalone", solo), ("cluster", clus)):
        row(f"{label}: CPU at rest, % of a core", ", ".join(f"{k} {v:.0f}" for k, v in m["rest_cpu"].items()))
    print(f"3. failover, lease TTL {plan.lease_ttl_s:g} s: SIGKILL -> the new writer's first append")
    for i, k in enumerate(fo["kills"], 1):
        row(
            f"kill {i}: {k.killed} -> {k.new_writer}",
            f"{k.failover_s:.2f} s (first acknowledged batch {k.first_ack_s:.2f} s)",
        )
    row("client: batches acknowledged / other answers", f"{fo['acked']} / {fo['refused'] or 'none'}")
    print("4. the logs after the runs")
    for label, c in r["logs"].items():
        row(f"{label}: events per node", c["events"])
        row(
            f"{label}: unequal logs / duplicated / corrected / lost of acked",
            f"{c['unequal']} / {c['duplicated']} / {c['corrected']} / {c['lost']} of {c['acked']:,}",
        )
    print(f"5. {plan.clients} clients on one series per node, {plan.posts} candles POSTed to the writer (p50 / p99)")
    for name, lags in [*solo["one"]["receipt"].items(), *clus["one"]["receipt"].items()]:
        row(f"{name}: writer's publish -> receipt", f"{p50_p99(lags)}  ({len(lags)}/{solo['one']['expected']})")
    for name, lags in clus["one"]["node_publish"].items():
        row(f"{name}: writer's publish -> its own publish", p50_p99(lags))
    print("klined warnings and errors, per log")
    for name, log in r["daemon_logs"].items():
        row(name, dict(log.events.most_common(8)) or "none")
    print()
    table(summary(plan, r))


def summary(plan: Plan, r: dict[str, Any]) -> list[tuple[str, ...]]:
    solo, clus, kills = r["standalone"], r["cluster"], r["failover"]["kills"]
    rows = []
    for origin, key in (("writer publish", "receipt"), ("exchange send", "from_exchange")):
        [alone] = solo["burst"][key].values()
        replica = clus["burst"][key]["k2 (replica)"]
        target, met = ("p99 < 25 ms", yes(pct(replica, 0.99) < 0.025)) if key == "receipt" else ("-", "-")
        label = f"1. burst of {plan.series}: {origin} -> replica receipt (standalone: same node)"
        rows.append((label, p50_p99(replica), p50_p99(alone), ratio(replica, alone), target, met))
    for run, label in (("sequential", "1 client"), ("concurrent", f"{plan.concurrency} clients")):
        c, s = clus["backfill"][run], solo["backfill"][run]
        rows.append(
            (f"2. backfill, {label}", f"{c:,.0f} c/s", f"{s:,.0f} c/s", f"{c / s:.2f}x", ">= 0.5x", yes(c / s >= 0.5))
        )
    c, s = clus["backfill"]["replicas_paused"], solo["backfill"]["sequential"]
    rows.append(
        ("2. backfill, 1 client, replicas' klined stopped", f"{c:,.0f} c/s", f"{s:,.0f} c/s", f"{c / s:.2f}x", "-", "-")
    )
    worst = max(k.failover_s for k in kills)
    label = f"3. failover, max of {len(kills)} (lease TTL {plan.lease_ttl_s:g} s)"
    rows.append((label, f"{worst:.2f} s", "-", "-", "< 10 s", yes(worst < 10)))
    c, s = r["logs"]["cluster"], r["logs"]["standalone"]
    bad = c["unequal"] + c["duplicated"] + c["lost"]
    cells = f"{c['unequal']} / {c['duplicated']} / {c['lost']}", f"- / {s['duplicated']} / {s['lost']}"
    rows.append(("4. unequal logs / duplicated / lost candles", *cells, "-", "0", yes(bad == 0)))
    [alone] = solo["one"]["receipt"].values()
    for name, lags in clus["one"]["receipt"].items():
        label = f"5. {plan.clients} clients on {name}: writer publish -> receipt"
        rows.append((label, p50_p99(lags), p50_p99(alone), ratio(lags, alone), "-", "-"))
    return rows


def ratio(cluster: list[float], standalone: list[float]) -> str:
    """p99 over p99, when both are positive (a replica may deliver before the writer publishes)."""
    c, s = pct(cluster, 0.99), pct(standalone, 0.99)
    return f"{c / s:.2f}x" if c > 0 and s > 0 else "-"


def yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def table(rows: list[tuple[str, ...]]) -> None:
    head = ("figure", "cluster", "standalone", "ratio (p99)", "target", "met?")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def main() -> None:
    defaults = Plan()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one burst, fewer posts, batches and kills")
    parser.add_argument("--series", type=int, default=defaults.series)
    parser.add_argument("--speed", type=float, default=defaults.speed, help="the exchange clock's speed")
    parser.add_argument("--keep", type=Path, help="run in this directory and keep it (data, klined logs)")
    args = parser.parse_args()
    plan = attrs.evolve(defaults, series=args.series, speed=args.speed)
    if args.quick:
        plan = attrs.evolve(plan, bursts=1, posts=40, batches=10, kills=1)
    root = args.keep or Path(tempfile.mkdtemp(prefix="klined-bench-cluster-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        results = trio.run(run, plan, root)
        results["logs"] = {
            "standalone": check_logs([root / "standalone"], results["acked"]["standalone"]),
            "cluster": check_logs([root / n for n in ("k1", "k2", "k3")], results["acked"]["cluster"]),
        }
        results["daemon_logs"] = {p.stem: log_events(p) for p in sorted(root.glob("*.log"))}
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    report(plan, results)
    print(f"\nrun time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
