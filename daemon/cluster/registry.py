"""Who is in the cluster: each node's heartbeat in a replicated KV bucket, read by every node.

A node puts its own entry (role, applied seq, replication lag, where it serves, the series its subscribers
want) every :data:`HEARTBEAT_S`; the bucket's TTL drops a node that stopped. ``klinectl cluster``, the
health view and ``/metrics`` read the entries; the writer reads the other nodes' demand from them, so a
replica's subscriber to a series nobody ingests gets it started on the writer (and again on a new writer
after a failover, with no replica having to notice).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from typing import Any, Final

import orjson
import structlog
import trio
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError, NoKeysError

from daemon.cluster.bridge import AsyncioThread, BridgeClosedError
from daemon.cluster.buckets import open_kv

log = structlog.get_logger(__name__)

HEARTBEAT_S: Final = 1.0
ENTRY_TTL_S: Final = 10.0  # a node not heard of for this long is gone from the list
OPEN_TRIES: Final = 6
_UNREACHABLE: Final = (NatsError, OSError, TimeoutError, BridgeClosedError)


def node_key(node: str) -> str:
    """A KV key for a node name (keys allow letters, digits, ``-_=./``)."""
    return re.sub(r"[^A-Za-z0-9_=./-]", "_", node) or "_"


class NodeRegistry:
    """This node's heartbeat, and the last view of every node's."""

    def __init__(self, bridge: AsyncioThread, kv: Any, node: str) -> None:
        self._bridge, self._kv, self.node = bridge, kv, node
        self.nodes: dict[str, dict[str, Any]] = {}  # node -> its last entry (with ``age_s``), this one included
        self._seen = trio.Event()

    async def wait_seen(self) -> None:
        """Return after the next read of every entry (tests wait on this)."""
        await self._seen.wait()

    async def run(
        self, describe: Callable[[], dict[str, Any]], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Beat until cancelled: put this node's ``describe()``, then read everyone's."""
        task_status.started()
        try:
            while True:
                await self.beat(describe())
                await self.read_all()
                await trio.sleep(HEARTBEAT_S)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0), contextlib.suppress(*_UNREACHABLE):
                await self._bridge.run(self._kv.delete, node_key(self.node))  # a clean stop leaves the list now

    async def beat(self, entry: dict[str, Any]) -> None:
        body = orjson.dumps({**entry, "node": self.node, "beat_ms": int(time.time() * 1000)})
        try:
            await self._bridge.run(self._kv.put, node_key(self.node), body)
        except _UNREACHABLE as e:
            log.debug("cluster_heartbeat_failed", error=repr(e))

    async def read_all(self) -> None:
        try:
            entries = await self._bridge.run(self._read_all)
        except _UNREACHABLE as e:
            log.debug("cluster_registry_unreadable", error=repr(e))
            return
        now_ms = time.time() * 1000
        for entry in entries.values():
            entry["age_s"] = round(max(0.0, now_ms - entry.get("beat_ms", now_ms)) / 1000, 1)
        self.nodes = entries
        self._seen.set()
        self._seen = trio.Event()

    async def _read_all(self) -> dict[str, dict[str, Any]]:
        try:
            keys = await self._kv.keys()
        except NoKeysError:
            return {}
        entries: dict[str, dict[str, Any]] = {}
        for key in keys:
            try:
                got = await self._kv.get(key)
            except KeyNotFoundError:
                continue
            try:
                entry = orjson.loads(got.value or b"")
            except orjson.JSONDecodeError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("node"), str):
                entries[entry["node"]] = entry
        return entries

    def demand(self, *, others_only: bool = True) -> set[str]:
        """The series ids the nodes' subscribers want (other nodes': this node knows its own first hand)."""
        wanted: set[str] = set()
        for node, entry in self.nodes.items():
            if others_only and node == self.node:
                continue
            wanted.update(s for s in entry.get("demand", ()) if isinstance(s, str))
        return wanted


async def open_registry_bucket(bridge: AsyncioThread, nc: Any, cluster_name: str, replicas: int) -> Any:
    return await open_kv(bridge, nc, f"{cluster_name}_nodes", ttl_s=ENTRY_TTL_S, replicas=replicas)
