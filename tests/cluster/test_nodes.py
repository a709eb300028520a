"""Real ``klined`` nodes of one cluster (real NATS, the fake exchange): what a replica serves and refuses, how
the operator sees the cluster, a replica's restart, a node seeded from another's backup once the stream's
retention has passed it, and a standalone data directory becoming the first writer of a new cluster."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio
from trio_websocket import open_websocket_url

from daemon.fakex.market import Market
from daemon.fakex.server import FakeExchange, exchange_clock
from daemon.storage.eventlog import EventLog
from protocol.logrecords import LogEvent
from tests.cluster.nats_cluster import NatsCluster, write_configs
from tests.cluster.nodes import LEASE_TTL_S, KlinedNode, klined_node, wait_for, ws_url
from tests.klined_process import BIN, klined

SPEED = 120.0  # a 1m period closes every 0.5 s
BTC = "binance:spot:BTC/USDT:1m"
ETH = "binance:spot:ETH/USDT:1m"  # not whitelisted: on demand only
SOL = "binance:spot:SOL/USDT:1m"  # not whitelisted: read over HTTP only
ENV = {
    "KLINED_WHITELIST": BTC,
    "KLINED_DEV_CLOCK_SPEED": str(SPEED),
    "KLINED_ENABLE_DEBUG_API": "1",
    "KLINED_ENABLE_ONDEMAND_INGEST": "1",
    "KLINED_ENABLE_KLINE_HEALTH": "1",
}


def events(data: Path) -> list[LogEvent]:
    with EventLog(data / "eventlog") as log:
        return log.events_since(0)


async def own_view(node: KlinedNode) -> dict[str, Any]:
    view = await node.cluster()
    return next(n for n in view["nodes"] if n["node"] == node.name)


async def role_is(node: KlinedNode, role: str) -> bool:
    return (await own_view(node))["role"] == role


async def applied(node: KlinedNode) -> int:
    return int((await own_view(node))["applied_seq"])


async def same_seq(a: KlinedNode, b: KlinedNode) -> bool:
    """Both at the stream's tip, the same seq: ``b`` has applied everything ``a`` had a moment before."""
    seq = await applied(a)
    return seq > 0 and await applied(b) >= seq


async def test_a_replica_serves_refuses_writes_and_starts_series_on_the_writer(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    fake = FakeExchange(Market.default(spot=["BTCUSDT", "ETHUSDT", "SOLUSDT"]), exchange_clock(speed=SPEED))
    env = {
        **ENV,
        "KLINED_ENABLE_MARKET_AUTO_TAIL_BACKFILL": "1",
        "KLINED_ENABLE_CCXT_BACKFILL": "1",
        "KLINED_ENABLE_CCXT_BACKFILL_ON_READ": "1",
        "KLINED_MARKET_HISTORY_SOURCE": "ccxt",
    }
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(fake.serve)
        async with klined_node(tmp_path, "k1", urls, cluster, **env) as k1:
            await wait_for(lambda: role_is(k1, "writer"), "k1 writes")
            async with klined_node(tmp_path, "k2", urls, cluster, **env) as k2:
                await wait_for(lambda: role_is(k2, "replica"), "k2 follows")

                # A write to the replica: 409, naming the writer.
                async with httpx.AsyncClient(base_url=k2.url, timeout=10) as http:
                    candle = {"candle_time": 60, "open": 1, "high": 2, "low": 0.5, "close": 1.5, "volume": 1}
                    r = await http.post("/api/market/ingest/candle_closed", json={"series_id": BTC, "candle": candle})
                    assert r.status_code == 409
                    assert r.json() == {
                        "code": "not_writer",
                        "detail": "node k2 is a replica: the writer is node k1",
                        "writer": "k1",
                    }
                    # A reader on the replica wants 50 candles nobody stored: the writer fetches them, and the
                    # replica answers once its log holds them.
                    params: dict[str, str | int] = {"series_id": SOL, "limit": 50}
                    tail = (await http.get("/api/market/candles", params=params)).json()["candles"]
                    assert len(tail) == 50
                    metrics = (await http.get("/metrics")).text
                    assert 'klined_cluster_role{role="replica"} 1.0' in metrics
                    assert "klined_cluster_replication_lag_events" in metrics

                # A chart on the replica asks for a series nobody ingests: the writer starts it, and its closed
                # candles reach the replica through the stream, its forming ones over core NATS.
                async with open_websocket_url(ws_url(k2.url)) as ws:
                    await ws.send_message(orjson.dumps({"type": "subscribe", "series_id": ETH, "since": None}))
                    seen: set[str] = set()
                    with trio.fail_after(60):
                        while not {"candle_closed", "candle_forming"} <= seen:
                            frame = orjson.loads(await ws.get_message())
                            if frame.get("series_id") == ETH:
                                seen.add(frame["type"])

                # The operator's view, through the real klinectl on the replica's socket.
                shown = await trio.run_process(
                    [str(BIN / "klinectl"), "--socket", str(k2.socket), "cluster"], capture_stdout=True
                )
                text = shown.stdout.decode()
                assert "writer k1" in text
                assert "k2" in text
                assert "replica" in text
                as_json = json.loads(
                    (
                        await trio.run_process(
                            [str(BIN / "klinectl"), "--socket", str(k2.socket), "--json", "cluster"],
                            capture_stdout=True,
                        )
                    ).stdout
                )
                assert {n["node"]: n["role"] for n in as_json["nodes"]} == {"k1": "writer", "k2": "replica"}
                await wait_for(lambda: same_seq(k1, k2), "k2 at k1's seq")
        nursery.cancel_scope.cancel()
    writer_log, replica_log = events(tmp_path / "k1"), events(tmp_path / "k2")
    assert replica_log == writer_log[: len(replica_log)]
    assert len(replica_log) >= len(writer_log) - 2  # stopped one after the other, while candles arrive


async def test_a_restarted_replica_catches_up_and_one_past_retention_is_seeded_from_a_backup(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    fake = FakeExchange(Market.default(spot=["BTCUSDT"]), exchange_clock(speed=SPEED))
    env = {**ENV, "KLINED_CLUSTER_STREAM_MAX_AGE_S": "3"}  # the stream forgets events after 3 s
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(fake.serve)
        async with klined_node(tmp_path, "k1", urls, cluster, **env) as k1:
            await wait_for(lambda: role_is(k1, "writer"), "k1 writes")
            async with klined_node(tmp_path, "k2", urls, cluster, **env) as k2:
                await wait_for(lambda: same_seq(k1, k2), "k2 follows")
            # k2 stopped; k1 writes on; k2 restarted resumes from its own last seq.
            stopped_at = await applied(k1)
            await wait_for(lambda: applied_past(k1, stopped_at + 3), "k1 wrote on")
            async with klined_node(tmp_path, "k2", urls, cluster, **env) as k2:
                await wait_for(lambda: same_seq(k1, k2), "k2 caught up after its restart")

                # k3 starts empty once the stream no longer holds event 1: it says so, and never writes.
                await wait_for(lambda: first_expired(k1), "the stream's retention passed event 1", poll_s=0.5)
                async with klined_node(tmp_path, "k3", urls, cluster, **env) as k3:
                    view = await wait_for(lambda: broken(k3), "k3 reports it cannot follow")
                    assert "klinectl backup" in view["broken"]
                    async with httpx.AsyncClient(base_url=k3.url, timeout=10) as http:
                        r = await http.get("/api/market/health")
                    assert r.json()["cluster"]["status"] == "red"
                # Seeded from k2's backup, k3 follows.
                backup = tmp_path / "k2.tar"
                await trio.run_process([str(BIN / "klinectl"), "--socket", str(k2.socket), "backup", str(backup)])
                await trio.run_process(
                    [str(BIN / "klinectl"), "restore", str(backup), "--data-dir", str(tmp_path / "k3.seeded")]
                )
                seeded = await trio.to_thread.run_sync(seed_into, tmp_path / "k3.seeded", tmp_path / "k3")
                assert seeded > 0
                async with klined_node(tmp_path, "k3", urls, cluster, **env) as k3:
                    await wait_for(lambda: same_seq(k1, k3), "k3 follows from the backup's seq")
                    assert (await own_view(k3))["broken"] is None
        nursery.cancel_scope.cancel()
    ref = events(tmp_path / "k1")
    for name in ("k2", "k3"):
        got = events(tmp_path / name)
        assert got == ref[: len(got)], name


def seed_into(restored: Path, data: Path) -> int:
    """The operator's step: the node's data directory replaced by the restored one (the node stopped)."""
    subprocess.run(["rm", "-rf", str(data)], check=True)
    restored.rename(data)
    with EventLog(data / "eventlog") as log:
        return log.last_seq()


async def applied_past(node: KlinedNode, seq: int) -> bool:
    return await applied(node) > seq


async def first_expired(node: KlinedNode) -> bool:
    """Whether the stream's first event is past 1 (asked of the node's health: its stream seq is current)."""
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
        r = await http.get("/api/market/health")
    return bool(r.json()["cluster"]["stream_first_seq"] > 1)


async def broken(node: KlinedNode) -> dict[str, Any] | None:
    view = await own_view(node)
    return view if view["broken"] else None


async def test_a_standalone_data_directory_becomes_the_first_writer(cluster: NatsCluster, tmp_path: Path) -> None:
    fake = FakeExchange(Market.default(spot=["BTCUSDT"]), exchange_clock(speed=SPEED))
    standalone = {"KLINED_WHITELIST": BTC, "KLINED_DEV_CLOCK_SPEED": str(SPEED)}
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(fake.serve)
        async with (
            klined(tmp_path / "k1", urls, tmp_path / "k1.log", **standalone) as (_, url),
            httpx.AsyncClient(base_url=url, timeout=10) as http,
        ):
            await wait_for(lambda: stored(http, 5), "a standalone log of a few candles")
        before = events(tmp_path / "k1")
        async with klined_node(tmp_path, "k1", urls, cluster, **ENV) as k1:
            await wait_for(lambda: role_is(k1, "writer"), "k1 writes, its log published first")
            async with klined_node(tmp_path, "k2", urls, cluster, **ENV) as k2:
                await wait_for(lambda: same_seq(k1, k2), "k2 holds k1's log")
        # Again: already in the stream, nothing is published twice (the stream's seqs are the log's).
        async with klined_node(tmp_path, "k1", urls, cluster, **ENV) as k1:
            await wait_for(lambda: role_is(k1, "writer"), "k1 writes again")
            async with klined_node(tmp_path, "k2", urls, cluster, **ENV) as k2:
                await wait_for(lambda: same_seq(k1, k2), "k2 follows")
        nursery.cancel_scope.cancel()
    after, replica = events(tmp_path / "k1"), events(tmp_path / "k2")
    assert after[: len(before)] == before
    assert replica == after[: len(replica)]
    assert len({(e.series_id, e.candle.candle_time) for e in after}) == len(after)  # nothing stored twice


async def stored(http: httpx.AsyncClient, n: int) -> bool:
    r = await http.get("/api/market/candles", params={"series_id": BTC, "since": 0, "limit": 100})
    return len(r.json()["candles"]) >= n


async def test_a_clean_stop_of_the_writer_ends_in_time_and_hands_over_at_once(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    """SIGTERM: the writer drains, releases the lease and exits 0 within 5 s; the other node takes over in
    less than the lease's TTL (a released lease is taken at the next try, not when it would have expired)."""
    fake = FakeExchange(Market.default(spot=["BTCUSDT"]), exchange_clock(speed=SPEED))
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(fake.serve)
        async with klined_node(tmp_path, "k1", urls, cluster, **ENV) as k1:
            await wait_for(lambda: role_is(k1, "writer"), "k1 writes")
            async with klined_node(tmp_path, "k2", urls, cluster, **ENV) as k2:
                await wait_for(lambda: same_seq(k1, k2), "k2 follows")
                k1.proc.terminate()
                stopped = trio.current_time()
                with trio.fail_after(10):
                    code = await k1.proc.wait()
                took = trio.current_time() - stopped
                await wait_for(lambda: role_is(k2, "writer"), "k2 writes")
                handed_over = trio.current_time() - stopped
        nursery.cancel_scope.cancel()
    assert code == 0
    assert took < 5.0
    assert handed_over < LEASE_TTL_S, handed_over  # not left to expire: the take's poll (a quarter TTL), a catch-up
    said = (tmp_path / "k1.log").read_text()
    assert '"cluster_lease_released"' in said
    assert '"cluster_nats_disconnected"' not in said  # its own stop is no warning for the operator


async def test_a_node_started_before_nats_waits_for_it_and_then_serves(tmp_path: Path) -> None:
    """NATS is not up yet (a VPS boot where klined starts first): the node says so and retries, and starts
    as soon as the servers answer."""
    nats = NatsCluster(write_configs(tmp_path / "nats"))
    fake = FakeExchange(Market.default(spot=["BTCUSDT"]), exchange_clock(speed=SPEED))
    try:
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(fake.serve)

            async def start_nats_once_klined_waits() -> None:
                log = tmp_path / "k1.log"
                await wait_for(lambda: said(log, "cluster_nats_error"), "klined retrying NATS")
                for server in nats.nodes:
                    server.start()
                await trio.to_thread.run_sync(nats.wait_ready)

            nursery.start_soon(start_nats_once_klined_waits)
            async with klined_node(tmp_path, "k1", urls, nats, **ENV) as k1:
                await wait_for(lambda: role_is(k1, "writer"), "k1 writes")
            nursery.cancel_scope.cancel()
    finally:
        for server in nats.nodes:
            server.kill()


async def said(log: Path, event: str) -> bool:
    text = await trio.Path(log).read_text() if await trio.Path(log).exists() else ""
    return f'"{event}"' in text
