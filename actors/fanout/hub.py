"""The ``FanOut``: connections and subscriptions by series, and each publish fanned out to them; the one
object the daemon wires (the writer's publish stage, the forming path, the endpoint, metrics)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import attrs
import trio

from actors.fanout.connection import Connection
from actors.fanout.delivery import Delivery, Heal, Subscription
from actors.fanout.frames import PublishedCandles
from actors.fanout.stats import FanOutStats
from actors.store import Store
from protocol.candle import Candle
from protocol.forming import FormingThrottle
from protocol.logrecords import AppendResult
from protocol.series import SeriesId
from protocol.ws_market import forming_frame, system_frame

PUBLISH_TIMES_KEPT: Final = 20_000  # (series, candle_time, wall time) of recent publishes, for the debug API


class IngestControl(Protocol):
    """On-demand ingest: a subscriber holds its series' upstream (raises ``CapacityError`` when full)."""

    def acquire(self, series: SeriesId) -> bool: ...  # True when a refcount is now held

    def release(self, series: SeriesId) -> None: ...


class FanOut:
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
        self.stats = FanOutStats()
        self._delivery = Delivery(store, self.stats, now_s=now_s, catchup_limit=catchup_limit, heal=heal)
        self._queue_frames = queue_frames
        self._forming_interval_s = forming_interval_s
        self.ingest = ingest
        self._subs: dict[SeriesId, dict[Subscription, None]] = {}
        self._clients: dict[int, Connection] = {}
        self._next_client = 0
        self._all_closed = trio.Event()
        self._throttles: dict[SeriesId, FormingThrottle] = {}
        self._forming_scheduled: set[SeriesId] = set()
        self.publish_times: deque[tuple[SeriesId, int, float]] = deque(maxlen=PUBLISH_TIMES_KEPT)
        self._nursery: trio.Nursery | None = None

    async def run(
        self,
        *,
        ingest: IngestControl | None = None,
        heal: Heal | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled. On-demand ingest and gap repair are handed over here, not at construction:
        both are built after the hub, since they publish through it."""
        if ingest is not None:
            self.ingest = ingest
        if heal is not None:
            self._delivery.heal = heal
        async with trio.open_nursery() as nursery:
            self._nursery = self._delivery.nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # -- connections --------------------------------------------------------------------------------

    @property
    def connection_count(self) -> int:
        return len(self._clients)

    def connect(self) -> Connection:
        self._next_client += 1
        client = Connection(self.stats, self._next_client, self._queue_frames)
        self._clients[client.client_id] = client
        return client

    def disconnect(self, client: Connection) -> None:
        """The connection is gone: drop its subscriptions and release every on-demand refcount it held."""
        for series in list(client.subs):
            self.unsubscribe(client, series)
        self._clients.pop(client.client_id, None)
        if not self._clients:
            self._all_closed.set()
            self._all_closed = trio.Event()

    async def wait_quiet(self) -> None:
        """Return once no catchup or heal is in progress (tests wait on this, not on a timer)."""
        await self._delivery.wait_quiet()

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

    async def subscribe(self, client: Connection, series: SeriesId, since: int | None, batch: bool) -> None:
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
        await self._delivery.catch_up(sub)

    def unsubscribe(self, client: Connection, series: SeriesId) -> None:
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

    # -- publishing (synchronous: the writer and the forming path never wait for a subscriber) --------

    async def publish_stage(self, result: AppendResult) -> None:
        """The writer's last stage: what the append changed, after it is durable."""
        for series, candles in result.changed.items():
            self.publish(series, candles)

    def publish(self, series: SeriesId, candles: Sequence[Candle]) -> None:
        subs = self._subs.get(series)
        if not subs or not candles:
            return
        self.stats.publishes += 1
        publish = PublishedCandles(series, tuple(sorted(candles, key=lambda c: c[0])))
        now = time.time()  # wall clock: the benchmark compares it with its clients' arrival times
        self.publish_times.extend((series, c[0], now) for c in publish.candles)
        closed_through = self._delivery.closed_through(series.timeframe)
        for sub in list(subs):
            if sub.busy:
                self._delivery.hold(sub, publish)
            else:
                self._delivery.deliver(sub, publish, closed_through)

    def publish_forming(self, series: SeriesId, candle: Candle) -> None:
        """Display only: throttled per series, sent where its time is after the cursor; never moves it."""
        throttle = self._throttles.get(series)
        if throttle is None:
            throttle = self._throttles[series] = FormingThrottle(self._forming_interval_s)
        out = throttle.offer(candle, trio.current_time())
        if out is not None:
            self._send_forming(series, out)
        elif self._nursery is not None and series not in self._forming_scheduled:
            try:
                self._nursery.start_soon(self._forming_later, series, throttle)
            except RuntimeError:  # shutting down: the hub's nursery takes nothing new, and forming is display only
                return
            self._forming_scheduled.add(series)  # one timer per series: the held candle is replaced, not queued

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

    def statistics(self) -> dict[str, object]:
        return {**attrs.asdict(self.stats), "connections": len(self._clients), "series": len(self._subs)}
