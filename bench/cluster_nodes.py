"""The cluster benchmark's three ``klined`` nodes: started on the NATS cluster and the fake exchange, watched
through their control sockets, their writer SIGKILLed while a client writes; their logs compared afterwards."""

from __future__ import annotations

import functools
import random
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from bench.fanout import candle
from daemon.fakex.server import FakeExchangeUrls
from daemon.storage.eventlog import EventLog
from protocol.logrecords import EventKind
from tests.cluster.nats_cluster import NatsCluster
from tests.cluster.nodes import KlinedNode, klined_node, wait_for

BATCH_PATH = "/api/dev/market/ingest/candles_closed_batch"
ACK = "binance:spot:ACK/USDT:1m"  # only the failover's client writes it
ACK_BATCH = 5
ACK_PAUSE_S = 0.05


@attrs.define
class ClusterNodes:
    """Three ``klined`` nodes, each in its own task of ``nursery`` until its process ends."""

    root: Path
    urls: FakeExchangeUrls
    nats: NatsCluster
    env: dict[str, str]
    nursery: trio.Nursery
    alive: dict[str, KlinedNode] = attrs.field(factory=dict)

    async def start(self, name: str) -> KlinedNode:
        node: KlinedNode = await self.nursery.start(self._run, name)
        return node

    async def _run(self, name: str, task_status: trio.TaskStatus[KlinedNode] = trio.TASK_STATUS_IGNORED) -> None:
        async with klined_node(self.root, name, self.urls, self.nats, **self.env) as node:
            self.alive[name] = node
            task_status.started(node)
            await node.proc.wait()
        if self.alive.get(name) is node:
            del self.alive[name]

    async def views(self) -> dict[str, dict[str, Any]]:
        """Each live node's own view of itself, from its control socket."""
        out = {}
        for name, node in list(self.alive.items()):
            with suppress(OSError, ValueError):
                view = await node.cluster()
                own = next((n for n in view["nodes"] if n["node"] == name), None)
                if own is not None:
                    out[name] = own
        return out

    async def writer(self, other_than: str = "") -> tuple[str, int] | None:
        """The one node whose role is ``writer``, and its applied seq."""
        writers = [(n, int(v["applied_seq"])) for n, v in (await self.views()).items() if v["role"] == "writer"]
        return writers[0] if len(writers) == 1 and writers[0][0] != other_than else None

    async def wrote_past(self, name: str, seq: int) -> bool:
        view = (await self.views()).get(name)
        return view is not None and view["role"] == "writer" and int(view["applied_seq"]) > seq

    async def in_step(self) -> bool:
        """Every node up, one writer, and each replica at (or past) the writer's seq as just read."""
        found = await self.writer()
        if found is None or len(self.alive) < 3:
            return False
        views = await self.views()
        return len(views) == 3 and all(int(v["applied_seq"]) >= found[1] for v in views.values())

    async def settled(self) -> bool:
        """Every node at one seq that no longer moves."""
        before = {int(v["applied_seq"]) for v in (await self.views()).values()}
        await trio.sleep(1.0)
        views = await self.views()
        return len(views) == 3 and len(before) == 1 and {int(v["applied_seq"]) for v in views.values()} == before

    async def stop(self) -> None:
        for node in list(self.alive.values()):
            node.proc.terminate()
        await wait_for(self.none_alive, "every node stopped", timeout_s=60)

    async def none_alive(self) -> bool:
        return not self.alive


@attrs.frozen
class Kill:
    killed: str
    new_writer: str
    failover_s: float  # SIGKILL -> the new writer's first appended event (control sockets)
    first_ack_s: float  # SIGKILL -> the client's first acknowledged batch from another node


@attrs.define
class Client:
    """Small batches of ACK to whichever node writes, as an application would: a 409 names the writer."""

    nodes: ClusterNodes
    acked: list[tuple[str, list[int]]]
    acks: list[tuple[float, str]] = attrs.field(factory=list)  # (monotonic, node) of each acknowledged batch
    refused: dict[str, int] = attrs.field(factory=dict)  # answers other than 200 and 409, by status

    async def run(self) -> None:
        target, t = "", 60
        async with httpx.AsyncClient(timeout=10) as http:
            while True:
                await trio.sleep(ACK_PAUSE_S)
                node = self.nodes.alive.get(target) or random.choice(list(self.nodes.alive.values()))
                times = list(range(t, t + 60 * ACK_BATCH, 60))
                t += 60 * ACK_BATCH  # acknowledged or not, the next batch holds new candles
                body = {"series_id": ACK, "candles": [candle(x) for x in times], "publish_ws": False}
                try:
                    r = await http.post(node.url + BATCH_PATH, json=body)
                except httpx.HTTPError:
                    target = ""  # the node died under us: not acknowledged
                    continue
                if r.status_code == 200:
                    self.acked.append((ACK, times))
                    self.acks.append((time.monotonic(), node.name))
                elif r.status_code == 409:
                    target = r.json().get("writer") or ""
                else:
                    key = f"{r.status_code} {r.text[:80]}"
                    self.refused[key] = self.refused.get(key, 0) + 1

    async def acked_since(self, at: float, not_by: str) -> float | None:
        """The first acknowledgement after ``at`` by a node other than ``not_by``."""
        return next((t for t, n in self.acks if t > at and n != not_by), None)


async def failovers(nodes: ClusterNodes, kills_wanted: int, acked: list[tuple[str, list[int]]]) -> dict[str, Any]:
    """Kill the writer ``kills_wanted`` times, each once the three nodes are in step; the killed node restarts."""
    client = Client(nodes, acked)
    kills = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        for _ in range(kills_wanted):
            await wait_for(nodes.in_step, "three nodes in step", timeout_s=120)
            await trio.sleep(random.uniform(0.5, 2.0))  # the exchange and the client write on: any point will do
            name, _ = await wait_for(nodes.writer, "a writer")
            killed_at = time.monotonic()
            nodes.alive[name].proc.kill()
            new, seq = await wait_for(functools.partial(nodes.writer, name), "a new writer", poll_s=0.05)
            await wait_for(functools.partial(nodes.wrote_past, new, seq), "its first append", poll_s=0.05)
            failover_s = time.monotonic() - killed_at
            first_ack = await wait_for(functools.partial(client.acked_since, killed_at, name), "an acknowledgement")
            kills.append(Kill(name, new, failover_s, first_ack - killed_at))
            await nodes.start(name)  # back, as a replica
        await wait_for(nodes.in_step, "three nodes in step", timeout_s=120)
        nursery.cancel_scope.cancel()
    return {"kills": kills, "refused": client.refused, "acked": len(client.acks)}


def check_logs(datas: list[Path], acked: list[tuple[str, list[int]]]) -> dict[str, Any]:
    """Figure 4: the logs equal seq by seq, no (series, candle_time) appended twice, no acknowledged candle lost."""
    logs = []
    for data in datas:
        with EventLog(data / "eventlog") as log:
            logs.append(log.events_since(0))
    first = logs[0]
    closed = [(e.series_id, e.candle.candle_time) for e in first if e.kind is EventKind.CANDLE_CLOSED]
    stored = set(closed)
    return {
        "events": [len(x) for x in logs],
        "unequal": sum(x != first for x in logs[1:]),
        "duplicated": len(closed) - len(stored),
        "corrected": len(first) - len(closed),
        "acked": sum(len(times) for _, times in acked),
        "lost": sum((s, t) not in stored for s, times in acked for t in times),
    }
