"""Three real ``klined`` nodes of one cluster, for the end-to-end cluster tests: each its own data directory,
HTTP port and control socket, all on the test's NATS cluster and fake exchange."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

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
