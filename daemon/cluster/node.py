"""One klined node of a cluster: its NATS link, and the role it plays, which the writer lease decides.

The roles, in the order a node passes through them:

- ``replica``: follow the stream into the local log (:class:`actors.replica.Replica`), project and publish
  from it. An ``auto`` node competes for the lease once it has caught up with the stream once.
- ``catching_up``: it holds the lease. Before it writes, it applies every event the stream has past its
  log; if instead its log holds events the stream lacks (a standalone data directory becoming the first
  writer, or a stream that was reset), it publishes them into the stream, idempotently.
- ``writer``: the writer term. Live ingest, on-demand series for every node, startup sync and gap repair run
  (``term``); each batch is durable in the stream before the local log commits it. The term ends when the
  lease is lost: live ingest stops, queued candles are dropped (the next writer ingests and repairs them),
  and the node follows the stream again.

A node that cannot follow the stream (its next event is gone from the stream's retention, or its log
diverged from the stream's) says so in its log and health, never takes the lease, and keeps serving what it
holds.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import nats
import orjson
import structlog
import trio
from nats.errors import Error as NatsError

from actors.pipeline import Stages
from actors.ports import StoreError
from actors.replica import Replica
from actors.store import Store
from daemon import __version__
from daemon.cluster.bridge import AsyncioThread, BridgeClosedError
from daemon.cluster.commit import StreamCommitPoint
from daemon.cluster.demand import ClusterDemand
from daemon.cluster.follower import BehindRetentionError, StreamFollower
from daemon.cluster.lease import WriterLease, open_lease_bucket
from daemon.cluster.registry import NodeRegistry, open_registry_bucket
from daemon.cluster.stream import MAX_BATCH, EventStream, StaleWriterError, StreamError
from daemon.config import Settings
from daemon.storage.eventlog import DivergedError
from protocol.backoff import Backoff
from protocol.candle import Candle
from protocol.cluster_events import ClusterEventError, decode_forming, encode_event, encode_forming
from protocol.logrecords import LogEvent
from protocol.series import SeriesId

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S: Final = 2.0
RECONNECT_WAIT_S: Final = 0.5
OPEN_RETRY_MAX_S: Final = 10.0
RETRY_PAUSE_S: Final = 0.5
BROKEN_RETRY_S: Final = 30.0  # a node that cannot follow tries again this often (an operator may have fixed it)
_UNREACHABLE: Final = (NatsError, OSError, TimeoutError, StreamError)

Term = Callable[..., Awaitable[None]]  # the writer term: started with a task_status, runs until cancelled
Forming = Callable[[SeriesId, Candle], None]
Cover = Callable[[SeriesId, int], Awaitable[None]]
COVERAGE_QUEUE: Final = 64  # readers' coverage requests waiting on the writer; more are dropped (they time out)
COVERAGE_ASK_S: Final = 6.0  # beyond the reader's own bound (the writer answers within that)


@attrs.frozen
class ClusterLink:
    """The NATS side of a node, open for the daemon's life."""

    settings: Settings
    node: str
    bridge: AsyncioThread
    nc: Any
    stream: EventStream
    follower: StreamFollower
    registry: NodeRegistry
    lease: WriterLease | None  # None: a ``replica`` node never writes
    closing: list[bool]  # made non-empty once the daemon stops: a disconnect then is no news for the operator

    @property
    def forming_subject(self) -> str:
        return f"{self.settings.cluster_name}.forming"

    @property
    def coverage_subject(self) -> str:
        return f"{self.settings.cluster_name}.coverage"


async def _connect(bridge: AsyncioThread, settings: Settings, node: str, closing: list[bool]) -> Any:
    async def disconnected() -> None:
        if closing:  # this node's own stop: no news for the operator
            log.info("cluster_nats_closed", node=node)
        else:
            log.warning("cluster_nats_disconnected", node=node)

    async def reconnected() -> None:
        log.info("cluster_nats_reconnected", node=node)

    async def error(e: Exception) -> None:
        log.warning("cluster_nats_error", node=node, error=repr(e))

    return await bridge.run(
        lambda: nats.connect(
            list(settings.cluster_nats_urls),
            name=f"klined-{node}",
            connect_timeout=CONNECT_TIMEOUT_S,
            reconnect_time_wait=RECONNECT_WAIT_S,
            max_reconnect_attempts=-1,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )
    )


@asynccontextmanager
async def open_cluster(
    settings: Settings, on_wait: Callable[[str], object] = lambda why: None
) -> AsyncIterator[ClusterLink]:
    """Connect, open the stream and the buckets (creating them on first use), until the daemon stops. NATS
    not answering yet is waited for, with backoff and a log line each time (and ``on_wait``: systemd's
    status line): the node starts once it can."""
    node = settings.cluster_node
    async with AsyncioThread(name=f"klined-nats-{node}") as bridge:
        backoff = Backoff(first_s=RETRY_PAUSE_S, cap_s=OPEN_RETRY_MAX_S)
        nc: Any = None
        closing: list[bool] = []  # set (made non-empty) as the link closes
        while True:
            try:
                nc = nc or await _connect(bridge, settings, node, closing)
                stream = EventStream(bridge, nc, settings.cluster_name)
                await stream.open(replicas=settings.cluster_replicas, max_age_s=settings.cluster_stream_max_age_s)
                lease = None
                if settings.cluster_role == "auto":
                    kv = await open_lease_bucket(
                        bridge, nc, settings.cluster_name, settings.cluster_lease_ttl_s, settings.cluster_replicas
                    )
                    lease = WriterLease(bridge, kv, node, settings.cluster_lease_ttl_s)
                nodes_kv = await open_registry_bucket(bridge, nc, settings.cluster_name, settings.cluster_replicas)
                break
            except (*_UNREACHABLE, BridgeClosedError) as e:
                delay = backoff.next_delay(0.5)
                log.warning("cluster_open_failed", node=node, error=repr(e), retry_in_s=round(delay, 2))
                on_wait(f"waiting for NATS ({', '.join(settings.cluster_nats_urls)}): {e!r}")
                await trio.sleep(delay)
        log.info("cluster_opened", node=node, stream=stream.name, role=settings.cluster_role)
        try:
            yield ClusterLink(
                settings,
                node,
                bridge,
                nc,
                stream,
                StreamFollower(bridge, nc, stream),
                NodeRegistry(bridge, nodes_kv, node),
                lease,
                closing,
            )
        finally:
            closing.append(True)
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                try:
                    await bridge.run(nc.close)
                except (*_UNREACHABLE, BridgeClosedError):
                    pass


class ClusterNode:
    """The role machine of one node (see the module's text); health and ``klinectl cluster`` read it."""

    def __init__(self, link: ClusterLink) -> None:
        self.link = link
        self.node = link.node
        self.role = "starting"
        self.broken: str | None = None  # why this node cannot follow the stream, when it cannot
        self.fenced: dict[str, Any] | None = None  # the last time a stale write of this node was refused
        self.stream_seq = 0  # the stream's last seq, as last asked
        self.stream_first_seq = 0  # and its first (retention moves it on)
        self.http_url = ""
        self.commit_point = StreamCommitPoint(
            link.stream,
            self.node,
            self.may_write,
            writer=self.writer_name,
            on_fenced=self._fenced,
            on_behind=self._behind,
        )
        self._store: Store | None = None
        self._stages = Stages()
        self._demand: ClusterDemand | None = None
        self._forming_out: Forming | None = None
        self._cover: Cover | None = None
        self._coverage_send, self._coverage_asked = trio.open_memory_channel[Any](COVERAGE_QUEUE)
        self._replica: Replica | None = None
        self._behind_event = trio.Event()
        self._term_scope: trio.CancelScope | None = None
        self._stopping = False
        # Appends are this node's from its writer term's start until it steps down, and also through a
        # shutdown's drain (the term is over, the lease still held): queued candles are made durable.
        self._appending = False
        self._synced = False  # it has been at the stream's tip once since it started or stepped down
        self._at_tip_at = time.time()  # when this node last held every event of the stream
        self._changed = trio.Event()
        if link.lease is not None:
            link.lease.eligible = self._eligible

    def attach(
        self, store: Store, replica_stages: Stages, demand: ClusterDemand, forming: Forming, cover: Cover
    ) -> None:
        """The parts of the daemon the node drives (they need its commit point first, hence not in ``__init__``).
        ``cover(series, n)`` is the writer's tail coverage for a reader, asked by the replicas."""
        self._store, self._stages, self._demand, self._forming_out = store, replica_stages, demand, forming
        self._cover = cover

    # -- what the rest of the daemon asks ----------------------------------------------------------

    def may_write(self) -> bool:
        lease = self.link.lease
        return self._appending and lease is not None and lease.held()

    def writer_name(self) -> str | None:
        """The writer as this node last saw it: the lease's holder, else the node whose heartbeat says so."""
        lease = self.link.lease
        if lease is not None and lease.holder and (lease.holder != self.node or lease.held()):
            return lease.holder  # (this node's own name in the key, not held: its previous life's, expiring)
        for name, entry in self.link.registry.nodes.items():
            if entry.get("role") == "writer":
                return name
        return None

    async def wait_role(self, role: str) -> None:
        """Return once this node plays ``role`` (tests and tools wait on this, not a timer)."""
        while self.role != role:
            await self._changed.wait()

    def relay_forming(self, series: SeriesId, candle: Candle) -> None:
        """The writer's forming candles: to its own subscribers, and to every replica's over core NATS
        (display only: never stored, dropped when NATS is away)."""
        if self._forming_out is not None:
            self._forming_out(series, candle)
        if self.role == "writer":
            self.link.bridge.submit(
                self.link.nc.publish, self.link.forming_subject, encode_forming(str(series), candle)
            )

    def describe(self) -> dict[str, Any]:
        """This node as its heartbeat, health and ``klinectl cluster`` show it."""
        applied = self._store.log.last_seq() if self._store is not None else 0
        self.stream_seq = max(self.stream_seq, applied)  # what this node applied is in the stream (its own appends too)
        lag_events = self.stream_seq - applied
        now = time.time()
        if lag_events == 0:
            self._at_tip_at = now
        lag_s = now - self._at_tip_at  # how long it has been behind the stream (0 while at its tip)
        lease = self.link.lease
        return {
            "role": self.role,
            "cluster_role": self.link.settings.cluster_role,
            "writer": self.writer_name(),
            "lease_held": self.may_write(),
            "lease_renewals": lease.stats.renewals if lease else 0,
            "lease_failures": lease.stats.failures if lease else 0,
            "applied_seq": applied,
            "stream_seq": self.stream_seq,
            "stream_first_seq": self.stream_first_seq,
            "lag_events": lag_events,
            "lag_s": round(lag_s, 3),
            "broken": self.broken,
            "fenced": self.fenced,
            "http_url": self.http_url,
            "demand": self._demand.wanted_here() if self._demand else [],
            "version": __version__,
        }

    def stop_ingest(self) -> None:
        """Shutdown, first step: the writer term ends (no new candles), the lease is kept until the queued
        ones are durable; cancelling :meth:`run` then releases it."""
        self._stopping = True
        self.link.closing.append(True)
        if self._term_scope is not None:
            self._term_scope.cancel()

    # -- the role machine --------------------------------------------------------------------------

    async def run(self, term: Term, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self._store is not None, "attach() first"
        async with trio.open_nursery() as nursery:
            if self.link.lease is not None:
                await nursery.start(self.link.lease.run)
            await nursery.start(self.link.registry.run, self.describe)
            nursery.start_soon(self._watch_cluster)
            nursery.start_soon(self._answer_coverage)
            await self._subscribe_forming()
            await self._subscribe_coverage()
            task_status.started()
            while not self._stopping:
                await self._follow_until_lease()
                if not self._stopping and await self._catch_up():
                    await self._write_while_held(term)
            if not self._appending:
                self._set_role("stopping")  # a writer stays one while the shutdown drains its queue
            await trio.sleep_forever()

    def _set_role(self, role: str) -> None:
        if role != self.role:
            log.info("cluster_role", node=self.node, role=role, previous=self.role)
            self.role = role
            self._changed.set()
            self._changed = trio.Event()

    def _eligible(self) -> bool:
        return self.broken is None and not self._stopping and self._synced

    def _lease_held(self) -> bool:
        return self.link.lease is not None and self.link.lease.held()

    async def _follow_until_lease(self) -> None:
        """Replica: follow the stream until this node holds the lease (never, for a ``replica`` node)."""
        assert self._store is not None
        self._set_role("replica" if self.broken is None else "broken")
        while not self._stopping:
            replica = self._replica = Replica(self._store, _Tracked(self), self._stages)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._cancel_when_held, nursery.cancel_scope)
                try:
                    await replica.run()
                except (BehindRetentionError, DivergedError) as e:
                    self._broke(str(e))
                    await trio.sleep(BROKEN_RETRY_S)
                except (StoreError, *_UNREACHABLE, BridgeClosedError) as e:
                    log.warning("cluster_follow_failed", node=self.node, error=repr(e))
                    await trio.sleep(RETRY_PAUSE_S)
                nursery.cancel_scope.cancel()  # the replica stopped on an error: the watcher goes with it
            if self._lease_held():
                return

    async def _cancel_when_held(self, scope: trio.CancelScope) -> None:
        lease = self.link.lease
        if lease is None:
            await trio.sleep_forever()
            return
        while not lease.held():
            await lease.wait_changed()
        scope.cancel()

    def _read_ok(self, events: int) -> None:
        """A read of the stream succeeded: a node that could not follow can again; at its tip, it may write."""
        if self.broken is not None:
            log.info("cluster_node_following_again", node=self.node, was=self.broken)
            self.broken = None
            self._set_role("replica")
        if events == 0 or (self._store is not None and self._store.log.last_seq() >= self.stream_seq):
            self._synced = True  # nothing newer, or at the tip the last heartbeat saw (a stream always busy)

    def _broke(self, why: str) -> None:
        if self.broken != why:
            log.error("cluster_node_cannot_follow", node=self.node, reason=why)
        self.broken = why
        self._set_role("broken")

    async def _catch_up(self) -> bool:
        """Holding the lease: make the local log the stream's tip (apply, or publish what only it holds).
        True when it is, and still holding; False when the lease went first or the logs diverged."""
        assert self._store is not None
        self._set_role("catching_up")
        while self._lease_held() and not self._stopping:
            try:
                self.stream_seq = tip = await self.link.stream.last_seq()
                local = self._store.log.last_seq()
                if local == tip:
                    self.broken = None
                    return True
                if local < tip:
                    await self._apply_from_stream(local)
                else:
                    await self._publish_local(tip, local)
            except (DivergedError, BehindRetentionError) as e:
                self._broke(str(e))
                await self._hand_over()  # another node may be able to write: never hold a lease it cannot use
                return False
            except (StoreError, *_UNREACHABLE, BridgeClosedError) as e:
                log.warning("cluster_catch_up_failed", node=self.node, error=repr(e))
                await trio.sleep(RETRY_PAUSE_S)
        return False

    async def _hand_over(self) -> None:
        if self.link.lease is not None:
            await self.link.lease.release()

    async def hand_over(self) -> None:
        """Shutdown, once the writer has drained: give the lease up now, not when the node's run ends (the
        subscribers' goodbyes and the listeners' close come after), so the next writer starts at once."""
        self._appending = False
        await self._hand_over()

    async def _apply_from_stream(self, after: int) -> None:
        assert self._store is not None
        events = await self.link.follower.read(after, max_events=MAX_BATCH, wait_s=0.5)
        if events:
            for result in await self._store.apply(events):
                await self._stages.after_append(result)

    async def _publish_local(self, tip: int, local: int) -> None:
        """This log holds events past the stream's tip: publish them, once it is certain they continue the
        stream (the event at the tip is the same in both; a stream that is empty takes the whole log)."""
        assert self._store is not None
        log_ = self._store.log
        if tip > 0:
            await self._check_continues(tip)
        log.info("cluster_publishing_local_log", node=self.node, stream_seq=tip, local_seq=local)
        after = tip
        while after < local and self._lease_held():
            events = await trio.to_thread.run_sync(log_.events_since, after, MAX_BATCH)
            bodies = [encode_event(e.kind, e.series_id, e.candle, e.previous) for e in events]
            try:
                after = await self.link.stream.append(
                    bodies, expected_last=after, batch_id=f"{self.node}-seed-{after + 1}"
                )
            except StaleWriterError:
                return  # someone else appended (or an earlier try of this batch landed): look at the tip again
            self.stream_seq = after
        log.info("cluster_published_local_log", node=self.node, stream_seq=after)

    async def _check_continues(self, tip: int) -> None:
        """This log holds more than the stream: raise ``DivergedError`` unless the event at the stream's tip
        is the same here (the log then continues the stream: it was published from a log like it)."""
        assert self._store is not None
        mine = self._store.log.events_since(tip - 1, 1)
        body = encode_event(mine[0].kind, mine[0].series_id, mine[0].candle, mine[0].previous)
        if await self.link.stream.message(tip) != body:
            raise DivergedError(tip, "this node's log and the stream hold different events there")

    async def _write_while_held(self, term: Term) -> None:
        assert self._demand is not None
        self._set_role("writer")
        self._appending = True
        try:
            async with trio.open_nursery() as nursery:
                self._term_scope = nursery.cancel_scope
                if self._stopping:
                    nursery.cancel_scope.cancel()
                await nursery.start(term)
                nursery.start_soon(self._catch_up_when_behind)
                lease = self.link.lease
                assert lease is not None
                while lease.held():
                    await lease.wait_changed()
                log.warning("cluster_writer_stepping_down", node=self.node, holder=lease.holder)
                nursery.cancel_scope.cancel()
        finally:
            self._term_scope = None
            self._demand.writing(None)
            if not self._stopping:
                self._appending = self._synced = False
                self._set_role("replica")

    def _behind(self, events: int) -> None:
        """The stream refused a batch while this node holds the lease: a writer that lost it appended after
        this node caught up. Apply those events; the writer retries its batch."""
        log.warning("cluster_writer_behind", node=self.node, events=events)
        self._behind_event.set()

    def _fenced(self, events: int) -> None:
        self.fenced = {"at_ms": int(time.time() * 1000), "events_rolled_back": events}
        log.warning(
            "cluster_fenced",
            node=self.node,
            events_rolled_back=events,
            writer=self.writer_name(),
            detail="the stream refused this node's batch after it lost the lease: rolled back, now a replica",
        )

    async def _catch_up_when_behind(self) -> None:
        assert self._store is not None
        while True:
            await self._behind_event.wait()
            self._behind_event = trio.Event()
            try:
                tip = await self.link.stream.last_seq()
                while self._store.log.last_seq() < tip:
                    await self._apply_from_stream(self._store.log.last_seq())
            except (StoreError, *_UNREACHABLE, BridgeClosedError) as e:
                log.warning("cluster_catch_up_failed", node=self.node, error=repr(e))

    async def _watch_cluster(self) -> None:
        """After each heartbeat read: the stream's tip (lag), and the other nodes' demand (the writer's to serve)."""
        assert self._demand is not None
        assert self._store is not None
        while True:
            await self.link.registry.wait_seen()
            self._demand.set_remote(self.link.registry.demand())
            try:
                local = self._store.log.last_seq()  # first: the stream's tip, read after, is never older
                self.stream_first_seq, self.stream_seq = await self.link.stream.bounds()
                if self.role == "replica" and local > self.stream_seq > 0:
                    await self._check_continues(self.stream_seq)
            except DivergedError as e:
                self._broke(str(e))
            except (*_UNREACHABLE, BridgeClosedError):
                pass

    async def cover_elsewhere(self, series: SeriesId, target: int) -> None:
        """A reader on this replica wants ``target`` candles of ``series``: the writer covers its tail (its
        freqtrade files, derivation, the exchange), and this returns once the local log holds what it wrote.
        Bounded by the caller; a writer that does not answer leaves the reader with what is stored."""
        assert self._store is not None
        body = orjson.dumps({"s": str(series), "n": target})
        try:
            reply = await self.link.bridge.run(
                lambda: self.link.nc.request(self.link.coverage_subject, body, timeout=COVERAGE_ASK_S)
            )
            seq = int(orjson.loads(reply.data)["seq"])
        except (*_UNREACHABLE, BridgeClosedError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            log.info("cluster_coverage_unanswered", series_id=str(series), error=repr(e))
            return
        while self._store.log.last_seq() < seq:
            await self._store.wait_appended()

    async def _subscribe_coverage(self) -> None:
        token = trio.lowlevel.current_trio_token()

        async def asked(msg: Any) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._queue_coverage, msg)

        try:
            await self.link.bridge.run(lambda: self.link.nc.subscribe(self.link.coverage_subject, cb=asked))
        except (*_UNREACHABLE, BridgeClosedError) as e:
            log.warning("cluster_coverage_unsubscribed", node=self.node, error=repr(e))

    def _queue_coverage(self, msg: Any) -> None:
        """A trio callback: only the writer answers (the others stay silent: the asker takes the first reply)."""
        if self.role != "writer":
            return
        with contextlib.suppress(trio.WouldBlock):
            self._coverage_send.send_nowait(msg)

    async def _answer_coverage(self) -> None:
        async with trio.open_nursery() as nursery:
            async for msg in self._coverage_asked:
                nursery.start_soon(self._answer_one, msg)

    async def _answer_one(self, msg: Any) -> None:
        assert self._store is not None
        assert self._cover is not None
        try:
            asked = orjson.loads(msg.data)
            series, target = SeriesId.parse(asked["s"]), int(asked["n"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            log.warning("cluster_coverage_invalid", error=repr(e))
            return
        await self._cover(series, target)
        reply = orjson.dumps({"seq": self._store.log.last_seq()})
        with contextlib.suppress(*_UNREACHABLE, BridgeClosedError):
            await self.link.bridge.run(msg.respond, reply)

    async def _subscribe_forming(self) -> None:
        token = trio.lowlevel.current_trio_token()

        async def received(msg: Any) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._forming_in, msg.data)

        try:
            await self.link.bridge.run(lambda: self.link.nc.subscribe(self.link.forming_subject, cb=received))
        except (*_UNREACHABLE, BridgeClosedError) as e:
            log.warning("cluster_forming_unsubscribed", node=self.node, error=repr(e))

    def _forming_in(self, data: bytes) -> None:
        """Runs as a trio callback (``run_sync_soon``): nothing may escape it, or trio itself stops."""
        try:
            self._relay_in(data)
        except Exception as e:  # display only: a forming candle lost is no harm, a crashed daemon is
            log.warning("cluster_forming_failed", error=repr(e))

    def _relay_in(self, data: bytes) -> None:
        if self.role == "writer" or self._forming_out is None:
            return  # its own relay: its subscribers had it first hand
        try:
            sid, candle = decode_forming(data)
            series = SeriesId.parse(sid)
        except (ClusterEventError, ValueError) as e:
            log.warning("cluster_forming_invalid", error=str(e))
            return
        self._forming_out(series, candle)


class _Tracked:
    """The stream as the replica reads it, telling the node of each successful read."""

    def __init__(self, node: ClusterNode) -> None:
        self._node = node

    async def read(self, after_seq: int, *, max_events: int = 1000, wait_s: float = 1.0) -> list[LogEvent]:
        events = await self._node.link.follower.read(after_seq, max_events=max_events, wait_s=wait_s)
        self._node._read_ok(len(events))
        return events
