"""Three real ``klined`` nodes of one cluster, for the end-to-end cluster tests: each its own data directory,
HTTP port and control socket, all on the test's NATS cluster and fake exchange."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import orjson
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from daemon.fakex.server import FakeExchangeUrls
from daemon.klinectl import one
from tests.cluster.nats_cluster import NatsCluster
from tests.klined_process import klined

LEASE_TTL_S = 2.0  # short: a failover is the lease TTL plus catch-up, and the tests kill writers often


def cluster_env(nats: NatsCluster, node: str, **extra: str) -> dict[str, str]:
    return {
        "KLINED_CLUSTER_NATS_URLS": ",".join(nats.urls),
        "KLINED_CLUSTER_NAME": "kt",
        "KLINED_NODE_NAME": node,
        "KLINED_CLUSTER_LEASE_TTL_S": str(LEASE_TTL_S),
        **extra,
    }


@attrs.define
class KlinedNode:
    name: str
    data: Path
    proc: trio.Process
    url: str

    @property
    def socket(self) -> Path:
        return self.data / "klined.sock"

    async def control(self, cmd: str, **fields: Any) -> dict[str, Any]:
        return await trio.to_thread.run_sync(one, self.socket, {"cmd": cmd, **fields})

    async def cluster(self) -> dict[str, Any]:
        return await self.control("cluster")

    async def role(self) -> str:
        view = await self.cluster()
        return next(str(n["role"]) for n in view["nodes"] if n["node"] == self.name)


@asynccontextmanager
async def klined_node(
    root: Path, name: str, urls: FakeExchangeUrls, nats: NatsCluster, **extra: str
) -> AsyncIterator[KlinedNode]:
    data = root / name
    async with klined(data, urls, root / f"{name}.log", **cluster_env(nats, name, **extra)) as (proc, url):
        yield KlinedNode(name, data, proc, url)


async def wait_for(check: Any, what: str, timeout_s: float = 60.0, poll_s: float = 0.1) -> Any:
    """Poll ``check()`` (an async callable) until it returns something true: other processes' state has no
    event this test could wait on. Bounded: a stuck cluster fails with ``what``."""
    with trio.fail_after(timeout_s):
        while True:
            got = await check()
            if got:
                return got
            await trio.sleep(poll_s)
    raise AssertionError(what)


@attrs.define
class Chart:
    """A chart front end on one node: subscribes to ``series`` from its last candle, records every frame of
    each connection (one session per connection); reconnects whenever its node is back."""

    series: list[str]
    sessions: list[dict[str, list[dict[str, Any]]]] = attrs.field(factory=list)
    since: dict[str, int | None] = attrs.field(factory=dict)
    received: int = 0

    async def watch(self, url: str) -> None:
        """One connection, until it goes (its node killed or stopped)."""
        frames: dict[str, list[dict[str, Any]]] = {sid: [] for sid in self.series}
        self.sessions.append(frames)
        try:
            async with open_websocket_url(ws_url(url), max_message_size=64 << 20) as ws:
                for sid in self.series:
                    since = self.since.get(sid)
                    await ws.send_message(
                        orjson.dumps({"type": "subscribe", "series_id": sid, "since": since, "supports_batch": True})
                    )
                while True:
                    frame = orjson.loads(await ws.get_message())
                    sid = frame.get("series_id")
                    if sid not in frames:
                        continue
                    frames[sid].append(frame)
                    if frame["type"] == "candle_closed":
                        self.since[sid] = frame["candle"]["candle_time"]
                        self.received += 1
                    elif frame["type"] == "candles_batch":
                        self.since[sid] = frame["candles"][-1]["candle_time"]
                        self.received += len(frame["candles"])
        except (ConnectionClosed, HandshakeError, OSError):
            return


def ws_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://") + "/ws/market"
