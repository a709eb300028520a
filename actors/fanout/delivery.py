"""Every move of a subscription's ``last_sent``: the live gate and the catchup/heal workers, kept together
because they must agree on one cursor (a worker drains held live publishes through the same gate)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import trio

from actors.fanout.connection import Connection
from actors.fanout.frames import PublishedCandles, render_text
from actors.fanout.stats import FanOutStats
from actors.store import Store
from protocol.candle import Candle
from protocol.series import SeriesId
from protocol.timeframes import Timeframe
from protocol.ws_market import CandlesPiece, gate

CLAMP_TOLERANCE_S: Final = 2  # our exchange clock may trail the exchange's by a measurement error
PENDING_MAX: Final = 1000  # live publishes held for one busy subscription before it counts as slow

Heal = Callable[[SeriesId, int, int], Awaitable[list[Candle]]]
"""(series, after, before) -> closed candles strictly between the two times (log, then the exchange)."""


@attrs.define(eq=False)
class Subscription:
    series: SeriesId
    client: Connection
    last_sent: int | None
    batch: bool
    busy: bool = False  # a worker owns it: live publishes wait in ``pending``
    catchup: bool = False  # the worker must (re)read the catchup first
    pending: list[PublishedCandles] = attrs.field(factory=list)
    healed_until: int = -1  # holes ending at or before this time were healed already: report them
    holds_ingest: bool = False
    active: bool = True


class Delivery:
    """Closed candles to subscriptions through their gate: at once on the live path, by a worker when the
    log must be read first (a catchup, a hole before a live candle)."""

    def __init__(
        self, store: Store, stats: FanOutStats, *, now_s: Callable[[], int], catchup_limit: int, heal: Heal | None
    ) -> None:
        self._store = store
        self._stats = stats
        self._now_s = now_s
        self._catchup_limit = catchup_limit
        self.heal: Heal = heal or self._heal_from_log
        self.nursery: trio.Nursery | None = None  # the hub's, for a subscription whose client has none
        self._workers = 0
        self._quiet = trio.Event()

    def closed_through(self, tf: Timeframe) -> int:
        """The ahead clamp: the open time of the latest closed period by the exchange clock."""
        return tf.last_closed_open(self._now_s() + CLAMP_TOLERANCE_S)

    async def wait_quiet(self) -> None:
        """Return once no catchup or heal is in progress."""
        while self._workers:
            await self._quiet.wait()

    # -- the live path (synchronous) ----------------------------------------------------------------

    def hold(self, sub: Subscription, publish: PublishedCandles) -> None:
        sub.pending.append(publish)
        if len(sub.pending) > PENDING_MAX:
            sub.client.slow()

    def deliver(self, sub: Subscription, publish: PublishedCandles, closed_through: int) -> None:
        """Through the gate; a hole before the first new candle goes to a worker to heal first."""
        tf, last = sub.series.timeframe, sub.last_sent
        first_new = publish.first_after(last)
        if first_new is None:
            return
        if last is not None and first_new > tf.next_open(last) and first_new > sub.healed_until:
            self.hold(sub, publish)
            self._start_worker(sub)
            return
        pieces, sub.last_sent = gate(tf, last, publish.candles, closed_through=closed_through)
        if not pieces:
            return
        if len(pieces) == 1 and isinstance(pieces[0], CandlesPiece) and len(pieces[0].candles) == len(publish.candles):
            frames = publish.frames(batch=sub.batch)
            self._stats.frames_shared += len(frames)
        else:
            frames = render_text(sub.series, pieces, batch=sub.batch, live=True)
            self._stats.frames_custom += len(frames)
        sub.client.offer(frames)

    # -- workers (catchup and healing) --------------------------------------------------------------

    async def catch_up(self, sub: Subscription) -> None:
        """Catch ``sub`` up in this task, then drain what was held meanwhile; if a worker owns it already,
        that worker does the catchup next."""
        sub.catchup = True
        if sub.busy:
            return
        sub.busy = True
        self._workers += 1
        await self._work(sub)

    def _start_worker(self, sub: Subscription) -> None:
        if sub.busy:
            return  # the running worker picks the new work up
        sub.busy = True
        nursery = sub.client.nursery or self.nursery
        assert nursery is not None, "FanOut.run (or the client's nursery) must be running"
        self._workers += 1
        nursery.start_soon(self._work, sub)

    async def _work(self, sub: Subscription) -> None:
        try:
            while sub.active:
                if sub.catchup:
                    sub.catchup = False
                    await self._send_catchup(sub)
                elif sub.pending:
                    publish = sub.pending[0]
                    tf, last = sub.series.timeframe, sub.last_sent
                    first_new = publish.first_after(last)
                    hole = last is not None and first_new is not None and first_new > tf.next_open(last)
                    if hole and first_new is not None and first_new > sub.healed_until:
                        await self._heal(sub, first_new)
                        continue
                    sub.pending.pop(0)
                    self.deliver(sub, publish, self.closed_through(tf))
                else:
                    break
        finally:
            sub.busy = False
            self._workers -= 1
            if not self._workers:
                self._quiet.set()
                self._quiet = trio.Event()

    async def _send_catchup(self, sub: Subscription) -> None:
        """The latest ``catchup_limit`` candles after the cursor; a cut or a hole is a ``gap`` frame."""
        self._stats.catchups += 1
        series, tf = sub.series, sub.series.timeframe
        candles = await self._store.tail(series, self._catchup_limit)
        if not sub.active:
            return
        closed_through = self.closed_through(tf)
        pieces, last = gate(tf, sub.last_sent, candles, closed_through=closed_through)
        if candles:
            sub.healed_until = max(sub.healed_until, candles[-1][0])
        sub.last_sent = last
        if pieces:
            await sub.client.put(render_text(series, pieces, batch=sub.batch, live=False))

    async def _heal(self, sub: Subscription, until: int) -> None:
        """Fill (last_sent, until) before the live candle at ``until``: what is found is sent, the rest
        becomes a ``gap`` when that candle goes."""
        self._stats.heals += 1
        assert sub.last_sent is not None
        series, tf = sub.series, sub.series.timeframe
        healed = await self.heal(series, sub.last_sent, until)
        sub.healed_until = max(sub.healed_until, until)
        if not sub.active or not healed:
            return
        self._stats.healed_candles += len(healed)
        pieces, sub.last_sent = gate(tf, sub.last_sent, healed, closed_through=self.closed_through(tf))
        if pieces:
            await sub.client.put(render_text(series, pieces, batch=sub.batch, live=False))

    async def _heal_from_log(self, series: SeriesId, after: int, before: int) -> list[Candle]:
        return await self._store.range(series, after, before - 1, self._catchup_limit)
