"""The writer lease: one replicated JetStream KV key, taken by create-if-absent, renewed by compare-and-set.

Every ``auto`` node runs a :class:`WriterLease`. The bucket's TTL is the lease's: a holder that stops
renewing (killed, partitioned, stopped by SIGSTOP) loses the key ``ttl_s`` after its last renewal reached the
servers, and another node's ``create`` then succeeds. A renewal carries the revision it last saw, so a node
that was away while another took over is refused and learns it lost. The holder acts as the writer only
while :class:`protocol.lease.LeaseClock` says it may: a margin inside the TTL, counted from when the renewal
was sent. That alone is not fencing: the stream's expected last sequence is (``docs/design.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import attrs
import structlog
import trio
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from daemon.cluster.bridge import AsyncioThread, BridgeClosedError
from daemon.cluster.buckets import open_kv
from protocol.lease import LeaseClock

log = structlog.get_logger(__name__)

LEASE_KEY: Final = "writer"
OPEN_TRIES: Final = 6
_REFUSED: Final = (KeyWrongLastSequenceError,)
_UNREACHABLE: Final = (NatsError, OSError, TimeoutError, BridgeClosedError)


@attrs.define
class LeaseStats:
    taken: int = 0
    lost: int = 0
    renewals: int = 0
    failures: int = 0
    last_error: str | None = None


class WriterLease:
    """This node's side of the lease over one bound KV bucket (``kv`` is nats-py's, used on the bridge)."""

    def __init__(
        self, bridge: AsyncioThread, kv: Any, node: str, ttl_s: float, *, now: Callable[[], float] = trio.current_time
    ) -> None:
        self._bridge, self._kv, self.node = bridge, kv, node
        self._clock = LeaseClock(ttl_s)
        self._now = now
        self._revision = 0
        self.holder: str | None = None  # the node holding the lease, as last seen
        # Taken by this process. Not ``holder == node``: a restarted node finds the key its previous life
        # left, with its own name in it, and must wait for that key's TTL like any other node.
        self._holding = False
        self.stats = LeaseStats()
        self._changed = trio.Event()
        # Whether this node may take the lease now: not while it cannot follow the stream (behind its
        # retention, diverged) nor before it has caught up once (a failover then prefers an up-to-date node).
        self.eligible: Callable[[], bool] = lambda: True

    def held(self) -> bool:
        """Whether this node may act as the writer now."""
        return self._holding and self._clock.held(self._now())

    async def wait_changed(self) -> None:
        """Return after the next gain or loss of the lease (or a new holder seen)."""
        await self._changed.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await self._attempt()
                deadline = self._clock.next_attempt(self._now())
                if self._holding:  # wake when the lease would go void, to say so, if renewals fail
                    deadline = min(deadline, (self._clock.sent_at or 0) + self._clock.ttl_s)
                await trio.sleep_until(deadline)
                if self._holding and not self._clock.held(self._now()):
                    self._lose("unrenewed")
        finally:
            with trio.CancelScope(shield=True):
                await self._release()

    async def _attempt(self) -> None:
        sent = self._now()
        value = self.node.encode()
        try:
            if self._holding:
                self._revision = await self._bridge.run(self._kv.update, LEASE_KEY, value, self._revision)
                self._clock.granted(sent)
                self.stats.renewals += 1
            elif self.eligible():
                self._revision = await self._bridge.run(self._kv.create, LEASE_KEY, value)
                self._clock.granted(sent)
                self._gain()
            else:
                await self._look()
        except _REFUSED:
            if self._holding:
                self._lose("taken")
            await self._look()
        except _UNREACHABLE as e:
            self.stats.failures += 1
            self.stats.last_error = repr(e)

    async def _look(self) -> None:
        """Who holds it now (a refused take or renewal)."""
        try:
            entry = await self._bridge.run(self._kv.get, LEASE_KEY)
        except KeyNotFoundError:
            holder = None
        except _UNREACHABLE:
            return
        else:
            holder = bytes(entry.value or b"").decode() or None
        if holder != self.holder:
            self.holder = holder
            self._notify()

    def _gain(self) -> None:
        self.holder = self.node
        self._holding = True
        self.stats.taken += 1
        log.info("cluster_lease_taken", node=self.node, revision=self._revision)
        self._notify()

    def _lose(self, why: str) -> None:
        self._clock.void()
        self._holding = False
        self.holder = None
        self.stats.lost += 1
        log.warning("cluster_lease_lost", node=self.node, reason=why)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def release(self) -> None:
        """Give the lease up now (this node cannot use it: another may); it may take it again later."""
        await self._release()

    async def _release(self) -> None:
        """A clean stop hands the lease on at once instead of after its TTL."""
        if not self._holding:
            return
        self._clock.void()
        self._holding = False
        self.holder = None
        self._notify()
        with trio.move_on_after(2):
            try:
                await self._bridge.run(self._kv.delete, LEASE_KEY, self._revision)
                log.info("cluster_lease_released", node=self.node)
            except (*_REFUSED, *_UNREACHABLE):
                pass  # lost already, or unreachable: the TTL hands it on


async def open_lease_bucket(bridge: AsyncioThread, nc: Any, cluster_name: str, ttl_s: float, replicas: int) -> Any:
    """The cluster's lease bucket (created on first use; its TTL is the lease TTL)."""
    return await open_kv(bridge, nc, f"{cluster_name}_lease", ttl_s=ttl_s, replicas=replicas)
