"""Live ingest wiring: exchange clock, writer, upstream connections, supervisor and series actors.

The router hands each parsed update to its series actor synchronously (``SeriesActor.deliver`` never
blocks a connection's reader and contains its own failures).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

import attrs
import structlog
import trio

from actors.clock import ExchangeClock
from actors.ingest import UpstreamIngest
from actors.pipeline import ClosedCandleWriter, Stages
from actors.rest import BinanceRest, RestError
from actors.series import BroadcastForming, RepairHole, SeriesActor
from actors.store import Store
from actors.supervisor import Supervisor
from actors.trade_series import TradeSeriesActor
from daemon.config import Settings
from protocol.aggregate import aggregate_bucket
from protocol.binance import AggTrade, KlineUpdate
from protocol.candle import Candle
from protocol.logrecords import AppendResult
from protocol.series import Market, SeriesId
from protocol.timeframes import Timeframe, can_derive, parse_timeframe

log = structlog.get_logger(__name__)

CLOCK_REMEASURE_S: Final = 1800.0
RETRY_MEASURE_S: Final = 60.0


@attrs.define
class RouterStats:
    delivered: int = 0
    unrouted: int = 0


class Router:
    """Series id -> kline actor; (market, symbol id) -> trade actor."""

    def __init__(self) -> None:
        self._actors: dict[SeriesId, SeriesActor] = {}
        self._trade_actors: dict[tuple[Market, str], TradeSeriesActor] = {}
        self.stats = RouterStats()

    def register(self, series: SeriesId, actor: SeriesActor) -> None:
        self._actors[series] = actor

    def unregister(self, series: SeriesId) -> None:
        self._actors.pop(series, None)

    def register_trades(self, market: Market, symbol_id: str, actor: TradeSeriesActor | None) -> None:
        if actor is None:
            self._trade_actors.pop((market, symbol_id), None)
        else:
            self._trade_actors[market, symbol_id] = actor

    def deliver(self, update: KlineUpdate | AggTrade, market: Market = "spot") -> None:
        if isinstance(update, AggTrade):
            trade_actor = self._trade_actors.get((market, update.symbol_id))
            if trade_actor is None:
                self.stats.unrouted += 1
                return
            self.stats.delivered += 1
            trade_actor.deliver(update)
            return
        actor = self._actors.get(update.series_id)
        if actor is None:
            self.stats.unrouted += 1  # unsubscribed a moment ago: the stream has not stopped yet
            return
        self.stats.delivered += 1
        actor.deliver(update)


class Deriver:
    """The derive stage: after base candles are durable, build the complete derived buckets they touch."""

    def __init__(
        self,
        store: Store,
        base: Timeframe,
        targets: Sequence[Timeframe],
        bases: set[SeriesId],
        after: Stages = Stages(),  # noqa: B008 (a frozen value)
    ) -> None:
        self._store = store
        self._after = after  # derived candles are projected, then published, as any other append
        self.base = base
        self._targets = [t for t in targets if can_derive(base, t)]
        self._bases = bases  # the base series that have derived timeframes
        self.derived = 0

    def derived_of(self, series: SeriesId) -> list[SeriesId]:
        """The derived series built from ``series`` (none unless it is of the base timeframe)."""
        return [series.with_timeframe(t) for t in self._targets] if series.timeframe == self.base else []

    def derives(self, series: SeriesId) -> bool:
        """Whether ``series`` is one this stage builds (from its base timeframe), never an upstream stream."""
        return series.timeframe != self.base and series.timeframe in self._targets

    def add_base(self, series: SeriesId) -> None:
        """Derive from ``series`` from now on (an on-demand subscriber asked for one of its timeframes)."""
        self._bases.add(series)

    async def __call__(self, result: AppendResult) -> None:
        batch: dict[SeriesId, list[Candle]] = {}
        for series, candles in result.changed.items():
            if series not in self._bases or series.timeframe != self.base:
                continue
            for target in self._targets:
                buckets = sorted({target.floor(c.candle_time) for c in candles})
                out = batch.setdefault(series.with_timeframe(target), [])
                for bucket in buckets:
                    base = await self._store.range(series, bucket - 1, target.next_open(bucket) - 1, None)
                    derived = aggregate_bucket(self.base, target, bucket, base)
                    if derived is not None:
                        out.append(derived)
        batch = {s: c for s, c in batch.items() if c}
        if batch:
            written = await self._store.append(batch)
            self.derived += written.appended + written.corrected
            await self._after.after_append(written)


def _no_forming_broadcast(series: SeriesId, candle: Candle) -> None:
    """No subscribers (tests of ingest alone)."""


class LiveIngest:
    """Everything that follows the market live, started as one service."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        writer: ClosedCandleWriter,
        clock: ExchangeClock,
        deriver: Deriver,
        broadcast_forming: BroadcastForming = _no_forming_broadcast,
        whitelist: Sequence[SeriesId] | None = None,
        trade_symbols: Iterable[str] = (),
        on_listed: Callable[[SeriesId], None] | None = None,
        repair_hole: RepairHole | None = None,
    ) -> None:
        """``whitelist`` defaults to the configured one; ``trade_symbols`` adds to ``trade_sources``;
        ``on_listed`` hears of each discovered listing; ``repair_hole`` fills the holes the actors find."""
        self.settings = settings
        self.store = store
        self.whitelist: list[SeriesId] = list(settings.whitelist_series if whitelist is None else whitelist)
        self.clock = clock
        self.deriver = deriver
        self.writer = writer
        self._broadcast_forming = broadcast_forming
        self.repair_hole = repair_hole
        self.rest = self._rest_clients()
        self.actors: dict[SeriesId, SeriesActor] = {}
        self.trade_actors: dict[SeriesId, TradeSeriesActor] = {}
        self.trade_symbols: set[str] = {*settings.trade_sources, *trade_symbols}
        self.on_listed = on_listed
        self._discovery_polled = trio.Event()
        self._actor_started = trio.Event()
        self.router: Router | None = None
        self.ingest: dict[Market, UpstreamIngest] = {}
        self.supervisor = Supervisor(
            self._actor_main,
            max_jobs=settings.ondemand_max_jobs,
            idle_ttl_s=settings.ondemand_idle_ttl_s,
            wall=time.time,  # what ingest_state reports (started_at, last_zero_at): Unix seconds, not monotonic
        )

    def _rest_clients(self) -> dict[Market, BinanceRest]:
        return {
            "spot": BinanceRest(self.settings.binance_spot_rest_url, futures=False),
            "futures": BinanceRest(self.settings.binance_futures_rest_url, futures=True),
        }

    # -- on-demand ingest (the fan-out's IngestControl) ---------------------------------------------

    def trade_built(self, series: SeriesId) -> bool:
        """Whether ``series``' symbol is built from its trades (``trade_sources``, or a discovered listing)."""
        return f"{series.exchange}:{series.market}:{series.symbol}" in self.trade_symbols

    async def _discover_listings(self, spec: str) -> None:
        """Watch ``exchange:market:QUOTE`` for symbols that start trading; follow each from its trades at once."""
        exchange, market_name, quote = spec.split(":")  # checked by the config: exchange:spot|futures:QUOTE
        market: Market = "futures" if market_name == "futures" else "spot"
        if exchange != "binance":
            log.warning("trade_discover_unsupported", spec=spec)
            return
        rest = self.rest[market]
        known: set[str] | None = None
        while True:
            try:
                listed = await rest.trading_symbols(quote)
            except (RestError, OSError) as e:
                log.warning("trade_discover_failed", spec=spec, error=repr(e))
            else:
                if known is not None:  # the first answer is the baseline: only what appears later is new
                    for symbol_id in sorted(set(listed) - known):
                        series = SeriesId.parse(f"{exchange}:{market}:{listed[symbol_id]}:1m")
                        log.info("listing_discovered", series_id=str(series))
                        self.add_listing(series)
                known = set(listed)
            self._discovery_polled.set()
            self._discovery_polled = trio.Event()
            await trio.sleep(self.settings.trade_discover_interval_s)

    async def wait_discovery_poll(self) -> None:
        """Return after the next listing poll (tests wait on this, not a timer)."""
        await self._discovery_polled.wait()

    def add_listing(self, series: SeriesId) -> None:
        """Follow a newly listed symbol from its trades now (its actor sends a seed candle at once)."""
        self.trade_symbols.add(f"{series.exchange}:{series.market}:{series.symbol}")
        if series not in self.whitelist:
            self.whitelist.append(series)
        self.supervisor.pin(series)
        if self.on_listed is not None:
            self.on_listed(series)  # persisted: a restart keeps following it

    def upstream_series(self, series: SeriesId) -> SeriesId:
        """The series whose actor and stream serve ``series``: a derived timeframe maps to its base, and
        every timeframe of a trade-built symbol to the symbol's one trade actor (keyed by its 1m series)."""
        if self.trade_built(series):
            return series.with_timeframe(parse_timeframe("1m"))
        return series.with_timeframe(self.deriver.base) if self.deriver.derives(series) else series

    def acquire(self, series: SeriesId) -> bool:
        """One more subscriber of ``series``: its actor starts on the first (raises ``CapacityError``)."""
        upstream = self.upstream_series(series)
        self.supervisor.acquire(upstream)
        if upstream != series and not self.trade_built(series):
            self.deriver.add_base(upstream)
        return True

    def release(self, series: SeriesId) -> None:
        self.supervisor.release(self.upstream_series(series))

    # -- the whitelist at run time (klinectl pin / unpin, SIGHUP) -----------------------------------

    def apply_whitelist(self, whitelist: Sequence[SeriesId], holders: Callable[[SeriesId], int] | None = None) -> None:
        """Pin ``whitelist``; what it no longer holds becomes on demand (kept while subscribers hold it)."""
        wanted = {self.upstream_series(s): s for s in whitelist}
        for upstream, series in wanted.items():
            self.supervisor.pin(upstream)
            if upstream != series and not self.trade_built(series):
                self.deriver.add_base(upstream)
        for upstream in {self.upstream_series(s) for s in self.whitelist} - set(wanted):
            self.supervisor.unpin(upstream, holders(upstream) if holders else 0)
        self.whitelist = list(whitelist)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.router = Router()
                ws_base: Mapping[Market, str] = {
                    "spot": self.settings.binance_spot_ws_url,
                    "futures": self.settings.binance_futures_ws_url,
                }
                for market in ("spot", "futures"):
                    self.ingest[market] = UpstreamIngest(
                        market=market,
                        ws_base=ws_base[market],
                        deliver=functools.partial(self.router.deliver, market=market),
                        on_connected=self._streams_resumed,
                        reconnect_max_s=self.settings.binance_ws_reconnect_max_s,
                    )
                    await nursery.start(self.ingest[market].run)
                # Measured in the background: series start from their stored heads with no exchange call,
                # on the host's (NTP) time; a measured offset re-aims every ticker when it arrives.
                nursery.start_soon(self.keep_clock_measured)
                for spec in self.settings.trade_discover:
                    nursery.start_soon(self._discover_listings, spec)
                await nursery.start(self.supervisor.run)
                if self.settings.enable_whitelist_ingest:
                    self.apply_whitelist(self.whitelist)
                task_status.started()
        finally:
            closed, self.rest = self.rest, self._rest_clients()  # a next run (a cluster's next writer term)
            for rest in closed.values():
                with trio.CancelScope(shield=True):
                    await rest.aclose()

    async def measure_clock(self) -> None:
        """Measure the exchange clock's offset now (start-up: the startup sync's window ends at the exchange's
        last closed period, not the host's idea of it)."""
        await self._measure_clock()

    async def _measure_clock(self) -> None:
        try:
            await self.clock.measure(self.rest["spot"].server_time_ms)
        except (RestError, OSError) as e:
            log.warning("clock_offset_unmeasured", error=repr(e), offset_ms=self.clock.offset_ms)

    async def keep_clock_measured(self) -> None:
        while True:
            await self._measure_clock()
            await trio.sleep(CLOCK_REMEASURE_S if self.clock.last_sample else RETRY_MEASURE_S)

    async def _actor_main(self, series: SeriesId) -> None:
        if self.trade_built(series):
            await self._trade_actor_main(series)
            return
        assert self.router is not None
        head = await self.store.head(series)
        rest = self.rest[series.market]
        actor = SeriesActor(
            series,
            head_time=head.head_time if head else None,
            writer=self.writer,
            broadcast_forming=self._broadcast_forming,
            fetch_closed=lambda s, first, last: rest.closed_klines(s, first, last),
            clock=self.clock,
            grace_s=self.settings.market_close_grace_s,
            repair_hole=self.repair_hole if self.settings.enable_market_gap_backfill else None,
        )
        self.actors[series] = actor
        self.router.register(series, actor)
        self.ingest[series.market].add(series)
        self._actor_started.set()
        self._actor_started = trio.Event()
        try:
            await actor.run()
        finally:
            self.router.unregister(series)
            self.ingest[series.market].remove(series)
            self.actors.pop(series, None)

    async def _trade_actor_main(self, key: SeriesId) -> None:
        """One symbol from its trades: 1m, every whitelisted timeframe of it, and the derived ones."""
        assert self.router is not None
        timeframes = {key.timeframe, *(s.timeframe for s in self.whitelist if self.upstream_series(s) == key)}
        if self.settings.enable_derived_timeframes:
            timeframes |= {parse_timeframe(t) for t in self.settings.derived_timeframes}
        series = [key.with_timeframe(tf) for tf in sorted(timeframes, key=lambda tf: tf.seconds)]
        heads: dict[SeriesId, Candle | None] = {}
        for s in series:
            tail = await self.store.tail(s, 1)
            heads[s] = tail[-1] if tail else None
        rest = self.rest[key.market]
        actor = TradeSeriesActor(
            series,
            heads=heads,
            writer=self.writer,
            broadcast_forming=self._broadcast_forming,
            fetch_closed=lambda s, first, last: rest.closed_klines(s, first, last),
            clock=self.clock,
            grace_s=min(self.settings.market_close_grace_s, 2.0),
            read_recent=self.store.tail,
            forming_interval_s=self.settings.market_forming_min_interval_ms / 1000,  # the fan-out's throttle
        )
        self.trade_actors[key] = actor
        self.router.register_trades(key.market, key.symbol_id, actor)
        self.ingest[key.market].add(key, trades=True)
        self._actor_started.set()
        self._actor_started = trio.Event()
        try:
            await actor.run()
        finally:
            self.router.register_trades(key.market, key.symbol_id, None)
            self.ingest[key.market].remove(key)
            self.trade_actors.pop(key, None)

    def _streams_resumed(self, series: list[SeriesId]) -> None:
        for s in series:
            actor = self.actors.get(s)
            if actor is not None:
                actor.stream_resumed()
            trade_actor = self.trade_actors.get(s)
            if trade_actor is not None:
                trade_actor.stream_resumed()

    async def wait_actor_started(self) -> None:
        """Return after the next series actor registers (start-up tests wait on this, not a timer)."""
        await self._actor_started.wait()

    def statistics(self) -> dict[str, object]:
        return {
            "writer": self.writer.statistics(),
            "supervisor": self.supervisor.statistics(),
            "router": attrs.asdict(self.router.stats) if self.router else {},
            "ingest": {m: i.statistics() for m, i in self.ingest.items()},
            "derived_written": self.deriver.derived,
            # Known holes per series (detected after a reconnect or from a late close), newest last.
            "holes": {
                str(s): [attrs.asdict(h) for h in a.state.holes] for s, a in self.actors.items() if a.state.holes
            },
            "clock_offset_ms": self.clock.offset_ms,
        }
