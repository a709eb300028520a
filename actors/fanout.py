"""The fan-out actor: durable candles and forming candles to WebSocket subscribers (SPEC §3).

Each subscription (one connection, one series) has one ``last_sent`` cursor, and every closed candle it
receives passes :func:`protocol.ws_market.gate` against it. Catchup, healing and live share that gate:

- The live path is synchronous and never blocks. A publish is encoded once and its frames are shared by
  every subscriber for whom it passes whole (the common case: the next candle after the cursor).
- Anything that needs the log (a catchup, healing a hole before a live candle) makes the subscription
  *busy*: live publishes for it queue in its ``pending`` list, and a worker task does the I/O, then
  drains ``pending`` through the same gate, in order. So a catchup/live race can neither duplicate nor
  reorder a candle.
- Each connection has a bounded outbox. A live frame that finds it full (or too many pending publishes)
  marks the connection a slow consumer: it gets ``slow_consumer`` and is closed; nobody else waits.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Protocol

import attrs
import structlog
import trio

from actors.store import Store
from protocol.candle import Candle
from protocol.forming import FormingThrottle
from protocol.logrecords import AppendResult
from protocol.series import SeriesId
from protocol.timeframes import Timeframe
from protocol.ws_market import CandlesPiece, error_frame, forming_frame, gate, render, system_frame

log = structlog.get_logger(__name__)

CLAMP_TOLERANCE_S: Final = 2  # our exchange clock may trail the exchange's by a measurement error
PENDING_MAX: Final = 1000  # live publishes held for one busy subscription before it counts as slow
SLOW_CONSUMER: Final = "slow_consumer"
PUBLISH_TIMES_KEPT: Final = 20_000  # (series, candle_time, wall time) of recent publishes, for the debug API

Heal = Callable[[SeriesId, int, int], Awaitable[list[Candle]]]
"""(series, after, before) -> closed candles strictly between the two times (log, then the exchange)."""


class IngestControl(Protocol):
    """On-demand ingest: a subscriber holds its series' upstream (raises ``CapacityError`` when full)."""

    def acquire(self, series: SeriesId) -> bool: ...  # True when a refcount is now held

    def release(self, series: SeriesId) -> None: ...


class Publish:
    """One durable publish of one series: encoded at most once per form, shared by every subscriber."""

    __slots__ = ("_batch", "_closed", "candles", "series")

    def __init__(self, series: SeriesId, candles: tuple[Candle, ...]) -> None:
        self.series, self.candles = series, candles
        self._closed: list[str] | None = None
        self._batch: list[str] | None = None

    def first_after(self, last_sent: int | None) -> int | None:
        """The time of the first candle a subscriber at ``last_sent`` has not had (None: nothing new)."""
        return next((c[0] for c in self.candles if last_sent is None or c[0] > last_sent), None)

    def frames(self, *, batch: bool) -> list[str]:
        if batch and len(self.candles) > 1:
            if self._batch is None:
                self._batch = _text(render(str(self.series), [CandlesPiece(self.candles)], batch=True, live=True))
            return self._batch
        if self._closed is None:
            self._closed = _text(render(str(self.series), [CandlesPiece(self.candles)], batch=False, live=True))
        return self._closed


def _text(frames: list[bytes]) -> list[str]:
    return [f.decode() for f in frames]


class Client:
    """One WebSocket connection's side of the hub: its subscriptions and its bounded outbox.

    The outbox is a deque with a wake-up event rather than a memory channel: a channel costs its reader
    two trips through the scheduler per frame, and a thousand subscribers of one publish make that the
    fan-out's hot path.
    """

    def __init__(self, hub: Hub, client_id: int, queue_frames: int) -> None:
        self.hub, self.client_id = hub, client_id
        self.subs: dict[SeriesId, Subscription] = {}
        self._frames: deque[str] = deque()
        self._max_frames = queue_frames
        self._wakeup = trio.Event()  # set when a frame is queued (or the client closes)
        self._room = trio.Event()  # set when the sender has drained below half the bound
        self.closing = trio.Event()  # set with close_code/close_reason: the endpoint closes the socket
        self.close_code = 1000
        self.close_reason = ""
        self.final_frame: str | None = None  # sent after the outbox is abandoned (slow consumer)
        self.nursery: trio.Nursery | None = None  # where the endpoint runs this client's workers

    @property
    def queued(self) -> int:
        return len(self._frames)

    def offer(self, frames: Sequence[str]) -> None:
        """Live frames: queued at once or the client is a slow consumer (it never blocks the hub)."""
        if self.closing.is_set():
            return
        if len(self._frames) + len(frames) > self._max_frames:
            self.slow()
            return
        self._frames.extend(frames)
        self._wakeup.set()

    async def put(self, frames: Sequence[str]) -> None:
        """Catchup frames: wait for room (a pull the client paces by reading)."""
        for frame in frames:
            while len(self._frames) >= self._max_frames and not self.closing.is_set():
                self._room = trio.Event()
                await self._room.wait()
            if self.closing.is_set():
                return
            self._frames.append(frame)
            self._wakeup.set()

    async def next_frame(self) -> str | None:
        """The next frame to send; None once the client is closing and (for a slow consumer) abandoned."""
        while True:
            if self.final_frame is not None:
                return None  # a slow consumer's queued frames are abandoned
            if self._frames:
                frame = self._frames.popleft()
                if len(self._frames) < self._max_frames // 2:
                    self._room.set()
                return frame
            if self.closing.is_set():
                return None  # a shutdown's goodbyes went out first
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    def drain_nowait(self) -> list[str]:
        """Every queued frame (tests)."""
        frames = list(self._frames)
        self._frames.clear()
        return frames

    def send_error(self, code: str, message: str, series: SeriesId | None = None) -> None:
        self.offer([error_frame(code, message, str(series) if series else None).decode()])

    def slow(self) -> None:
        if self.closing.is_set():
            return
        self.hub.stats.slow_consumers += 1
        log.warning("ws_slow_consumer", client=self.client_id, subscriptions=len(self.subs))
        self.final_frame = error_frame(SLOW_CONSUMER, "send queue overflowed; closing").decode()
        self.close(1008, SLOW_CONSUMER)

    def close(self, code: int, reason: str) -> None:
        """Ask the endpoint to close: the sender wakes, sends what is due and the close code."""
        if not self.closing.is_set():
            self.close_code, self.close_reason = code, reason
            self.closing.set()
            self._wakeup.set()
            self._room.set()


@attrs.define(eq=False)
class Subscription:
    series: SeriesId
    client: Client
    last_sent: int | None
    batch: bool
    busy: bool = False  # a worker owns it: live publishes wait in ``pending``
    catchup: bool = False  # the worker must (re)read the catchup first
    pending: list[Publish] = attrs.field(factory=list)
    healed_until: int = -1  # holes ending at or before this time were healed already: report them
    holds_ingest: bool = False
    active: bool = True


@attrs.define
class HubStats:
    subscriptions: int = 0
    publishes: int = 0
    frames_shared: int = 0
    frames_custom: int = 0
    catchups: int = 0
    heals: int = 0
    healed_candles: int = 0
    slow_consumers: int = 0
    forming_sent: int = 0


class Hub:
    """Subscriptions by series; the writer's publish stage and the forming path feed it."""

    def __init__(
        self,
        store: Store,
        *,
        now_s: Callable[[], int],
        catchup_limit: int = 5000,
        queue_frames: int = 4096,
        forming_interval_s: float = 0.25,
        heal: Heal | None = None,
        ingest: IngestControl | None = None,
    ) -> None:
        self._store = store
        self._now_s = now_s
        self._catchup_limit = catchup_limit
        self._queue_frames = queue_frames
        self._forming_interval_s = forming_interval_s
        self.heal: Heal = heal or self._heal_from_log
        self.ingest = ingest
        self._subs: dict[SeriesId, dict[Subscription, None]] = {}
        self._clients: dict[int, Client] = {}
        self._next_client = 0
        self._all_closed = trio.Event()
        self._workers = 0
        self._quiet = trio.Event()
        self._throttles: dict[SeriesId, FormingThrottle] = {}
        self._forming_scheduled: set[SeriesId] = set()
        self.publish_times: deque[tuple[SeriesId, int, float]] = deque(maxlen=PUBLISH_TIMES_KEPT)
        self._nursery: trio.Nursery | None = None
        self.stats = HubStats()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # -- connections --------------------------------------------------------------------------------

    @property
    def connection_count(self) -> int:
        return len(self._clients)

    def connect(self) -> Client:
        self._next_client += 1
        client = Client(self, self._next_client, self._queue_frames)
        self._clients[client.client_id] = client
        return client

    def disconnect(self, client: Client) -> None:
        """The connection is gone: drop its subscriptions and release every on-demand refcount it held."""
        for series in list(client.subs):
            self.unsubscribe(client, series)
        self._clients.pop(client.client_id, None)
        if not self._clients:
            self._all_closed.set()
            self._all_closed = trio.Event()

    async def wait_quiet(self) -> None:
        """Return once no catchup or heal is in progress (tests wait on this, not on a timer)."""
        while self._workers:
            await self._quiet.wait()

    async def wait_all_closed(self) -> None:
        if self._clients:
            await self._all_closed.wait()

    def publish_system(self, series: SeriesId, event: str, message: str, data: dict[str, Any]) -> None:
        """A ``system`` frame to every subscriber of ``series`` (e.g. ``factor.rebuild``); no cursor moves."""
        frame = system_frame(str(series), event, message, data)
        for sub in list(self._subs.get(series, ())):
            sub.client.offer([frame])

    def shutdown(self) -> None:
        """Every connection: a ``system`` goodbye per subscription, then close code 1001 server_shutdown."""
        for client in list(self._clients.values()):
            client.offer(
                [
                    system_frame(str(series), "server_shutdown", "klined is shutting down; reconnect later")
                    for series in client.subs
                ]
            )
            client.close(1001, "server_shutdown")

    # -- subscriptions ------------------------------------------------------------------------------

    async def subscribe(self, client: Client, series: SeriesId, since: int | None, batch: bool) -> None:
        """Register first, then catch up: live publishes meanwhile wait in ``pending``. Returns once the
        catchup is queued, so a connection's commands take effect in order.

        Raises ``CapacityError`` (on-demand ingest full): nothing is registered, no frame will follow.
        """
        since = since or None  # 0: "from the first stored candle", no cursor (no gap before it)
        sub = client.subs.get(series)
        if sub is None:
            holds = self.ingest.acquire(series) if self.ingest is not None else False
            sub = Subscription(series, client, since, batch, holds_ingest=holds)
            client.subs[series] = sub
            self._subs.setdefault(series, {})[sub] = None
            self.stats.subscriptions += 1
        else:  # a repeated subscribe keeps the cursor at max(since, last_sent)
            sub.batch = batch
            if since is not None and (sub.last_sent is None or since > sub.last_sent):
                sub.last_sent = since
        sub.catchup = True
        if sub.busy:
            return  # a heal is running: its worker does the catchup next
        sub.busy = True
        self._workers += 1
        await self._work(sub)

    def unsubscribe(self, client: Client, series: SeriesId) -> None:
        sub = client.subs.pop(series, None)
        if sub is None:
            return  # never subscribed: a silent no-op
        sub.active = False
        sub.pending.clear()
        subs = self._subs.get(series)
        if subs is not None:
            subs.pop(sub, None)
            if not subs:
                del self._subs[series]
        self.stats.subscriptions -= 1
        if sub.holds_ingest and self.ingest is not None:
            self.ingest.release(series)

    def holders(self, upstream: Callable[[SeriesId], SeriesId], series: SeriesId) -> int:
        """Subscriptions that hold an on-demand refcount on ``series`` (through ``upstream``'s mapping)."""
        return sum(
            1 for subs in self._subs.values() for sub in subs if sub.holds_ingest and upstream(sub.series) == series
        )

    def max_outbox_depth(self) -> int:
        return max((c.queued for c in self._clients.values()), default=0)

    def active_series(self) -> list[SeriesId]:
        return list(self._subs)

    def subscriber_count(self, series: SeriesId) -> int:
        return len(self._subs.get(series, ()))

    # -- the live path (synchronous) ----------------------------------------------------------------

    async def publish_stage(self, result: AppendResult) -> None:
        """The writer's last stage: what the append changed, after it is durable."""
        for series, candles in result.changed.items():
            self.publish(series, candles)

    def publish(self, series: SeriesId, candles: Sequence[Candle]) -> None:
        subs = self._subs.get(series)
        if not subs or not candles:
            return
        self.stats.publishes += 1
        publish = Publish(series, tuple(sorted(candles, key=lambda c: c[0])))
        now = time.time()  # wall clock: the benchmark compares it with its clients' arrival times
        self.publish_times.extend((series, c[0], now) for c in publish.candles)
        closed_through = self._closed_through(series.timeframe)
        for sub in list(subs):
            if sub.busy:
                self._hold(sub, publish)
            else:
                self._deliver(sub, publish, closed_through)

    def _hold(self, sub: Subscription, publish: Publish) -> None:
        sub.pending.append(publish)
        if len(sub.pending) > PENDING_MAX:
            sub.client.slow()

    def _deliver(self, sub: Subscription, publish: Publish, closed_through: int) -> None:
        """Through the gate; a hole before the first new candle goes to a worker to heal first."""
        tf, last = sub.series.timeframe, sub.last_sent
        first_new = publish.first_after(last)
        if first_new is None:
            return
        if last is not None and first_new > tf.next_open(last) and first_new > sub.healed_until:
            self._hold(sub, publish)
            self._start_worker(sub)
            return
        pieces, sub.last_sent = gate(tf, last, publish.candles, closed_through=closed_through)
        if not pieces:
            return
        if len(pieces) == 1 and isinstance(pieces[0], CandlesPiece) and len(pieces[0].candles) == len(publish.candles):
            frames = publish.frames(batch=sub.batch)
            self.stats.frames_shared += len(frames)
        else:
            frames = _text(render(str(sub.series), pieces, batch=sub.batch, live=True))
            self.stats.frames_custom += len(frames)
        sub.client.offer(frames)

    def publish_forming(self, series: SeriesId, candle: Candle) -> None:
        """Display only: throttled per series, sent where its time is after the cursor; never moves it."""
        throttle = self._throttles.get(series)
        if throttle is None:
            throttle = self._throttles[series] = FormingThrottle(self._forming_interval_s)
        out = throttle.offer(candle, trio.current_time())
        if out is not None:
            self._send_forming(series, out)
        elif self._nursery is not None and series not in self._forming_scheduled:
            self._forming_scheduled.add(series)  # one timer per series: the held candle is replaced, not queued
            self._nursery.start_soon(self._forming_later, series, throttle)

    async def _forming_later(self, series: SeriesId, throttle: FormingThrottle) -> None:
        try:
            deadline = throttle.deadline
            if deadline is None:
                return
            await trio.sleep_until(deadline)
            out = throttle.due(trio.current_time())  # the latest held candle wins
            if out is not None:
                self._send_forming(series, out)
        finally:
            self._forming_scheduled.discard(series)

    def _send_forming(self, series: SeriesId, candle: Candle) -> None:
        subs = self._subs.get(series)
        if not subs:
            return
        frame: str | None = None
        for sub in subs:
            if sub.busy or (sub.last_sent is not None and candle[0] <= sub.last_sent):
                continue
            if frame is None:
                frame = forming_frame(str(series), candle).decode()
            sub.client.offer([frame])
            self.stats.forming_sent += 1

    # -- workers (catchup and healing) --------------------------------------------------------------

    def _start_worker(self, sub: Subscription) -> None:
        if sub.busy:
            return  # the running worker picks the new work up
        sub.busy = True
        nursery = sub.client.nursery or self._nursery
        assert nursery is not None, "Hub.run (or the client's nursery) must be running"
        self._workers += 1
        nursery.start_soon(self._work, sub)

    async def _work(self, sub: Subscription) -> None:
        try:
            while sub.active:
                if sub.catchup:
                    sub.catchup = False
                    await self._catch_up(sub)
                elif sub.pending:
                    publish = sub.pending[0]
                    tf, last = sub.series.timeframe, sub.last_sent
                    first_new = publish.first_after(last)
                    hole = last is not None and first_new is not None and first_new > tf.next_open(last)
                    if hole and first_new is not None and first_new > sub.healed_until:
                        await self._heal(sub, first_new)
                        continue
                    sub.pending.pop(0)
                    self._deliver(sub, publish, self._closed_through(tf))
                else:
                    break
        finally:
            sub.busy = False
            self._workers -= 1
            if not self._workers:
                self._quiet.set()
                self._quiet = trio.Event()

    async def _catch_up(self, sub: Subscription) -> None:
        """The latest ``catchup_limit`` candles after the cursor; a cut or a hole is a ``gap`` frame."""
        self.stats.catchups += 1
        series, tf = sub.series, sub.series.timeframe
        candles = await self._store.tail(series, self._catchup_limit)
        if not sub.active:
            return
        closed_through = self._closed_through(tf)
        pieces, last = gate(tf, sub.last_sent, candles, closed_through=closed_through)
        if candles:
            sub.healed_until = max(sub.healed_until, candles[-1][0])
        sub.last_sent = last
        if pieces:
            await sub.client.put(_text(render(str(series), pieces, batch=sub.batch, live=False)))

    async def _heal(self, sub: Subscription, until: int) -> None:
        """Fill (last_sent, until) before the live candle at ``until``: what is found is sent, the rest
        becomes a ``gap`` when that candle goes."""
        self.stats.heals += 1
        assert sub.last_sent is not None
        series, tf = sub.series, sub.series.timeframe
        healed = await self.heal(series, sub.last_sent, until)
        sub.healed_until = max(sub.healed_until, until)
        if not sub.active or not healed:
            return
        self.stats.healed_candles += len(healed)
        pieces, sub.last_sent = gate(tf, sub.last_sent, healed, closed_through=self._closed_through(tf))
        if pieces:
            await sub.client.put(_text(render(str(series), pieces, batch=sub.batch, live=False)))

    async def _heal_from_log(self, series: SeriesId, after: int, before: int) -> list[Candle]:
        return await self._store.range(series, after, before - 1, self._catchup_limit)

    # -- helpers ------------------------------------------------------------------------------------

    def _closed_through(self, tf: Timeframe) -> int:
        """The ahead clamp: the open time of the latest closed period by the exchange clock."""
        return tf.last_closed_open(self._now_s() + CLAMP_TOLERANCE_S)

    def statistics(self) -> dict[str, object]:
        return {**attrs.asdict(self.stats), "connections": len(self._clients), "series": len(self._subs)}
