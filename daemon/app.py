"""Wiring of one daemon: open the log, restore heads, serve HTTP, stop cleanly on a signal."""

from __future__ import annotations

import functools
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final, cast

import attrs
import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import ASGIFramework

from actors.clock import ExchangeClock
from actors.fanout.hub import FanOut, IngestControl
from actors.pipeline import ClosedCandleWriter, Stages
from actors.projector import Projector
from actors.store import Store
from daemon import __version__
from daemon.cluster.demand import ClusterDemand
from daemon.cluster.node import ClusterLink, ClusterNode, open_cluster
from daemon.config import ConfigError, Settings, load_settings
from daemon.control_socket import serve_control
from daemon.factor_reads import ProjectionReader
from daemon.history.exchange import CcxtSource
from daemon.history.service import History
from daemon.http.app import build_app
from daemon.listen import http_listener_bind
from daemon.live import Deriver, LiveIngest
from daemon.pins import RuntimePins
from daemon.sdnotify import Notifier
from daemon.storage.eventlog import EventLog
from daemon.storage.projection_store import ProjectionStore
from daemon.top_markets import TopMarkets
from protocol.series import SeriesId
from protocol.timeframes import parse_timeframe

log = structlog.get_logger(__name__)

GC_THRESHOLDS: Final = (10_000, 10, 1000)
# A stop ends within this, whatever a peer does: hypercorn shields its socket sends, so a subscriber that
# stopped reading with its TCP window full would hold a graceful close forever.
# By then the writer has drained (every acknowledged candle is durable), so the exit is clean.
SHUTDOWN_DEADLINE_S: Final = 4.5
STARTUP_CLOCK_S: Final = 2.0  # at most this for the exchange clock before the startup sync (else: host time)


@attrs.frozen
class Running:
    """What a started daemon tells its starter: where it listens and how to stop it."""

    http_url: str
    store: Store
    stop: trio.Event
    live: LiveIngest | None = None
    services: Wiring | None = None


@asynccontextmanager
async def open_eventlog(settings: Settings) -> AsyncIterator[EventLog]:
    started = time.perf_counter()
    eventlog = await trio.to_thread.run_sync(
        functools.partial(EventLog, settings.eventlog_path, map_size=settings.lmdb_map_size_mb << 20)
    )
    try:
        heads = await trio.to_thread.run_sync(eventlog.heads)
        log.info(
            "eventlog_opened",
            path=str(settings.eventlog_path),
            series=len(heads),
            last_seq=eventlog.last_seq(),
            elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        yield eventlog
    finally:
        eventlog.close()
        log.info("eventlog_closed", path=str(settings.eventlog_path))


@asynccontextmanager
async def open_projections(settings: Settings) -> AsyncIterator[ProjectionStore]:
    pstore = await trio.to_thread.run_sync(ProjectionStore, settings.data_path / "projections")
    try:
        yield pstore
    finally:
        pstore.close()


@attrs.frozen
class Wiring:
    """The long-lived parts every front (HTTP, WebSocket, live ingest) shares, wired once by
    :func:`build_services` and never re-pointed (frozen): the one wiring object."""

    settings: Settings
    eventlog: EventLog  # the storage itself, for what only the daemon does with it (backup, statistics)
    projections: ProjectionStore
    store: Store
    clock: ExchangeClock
    hub: FanOut
    writer: ClosedCandleWriter
    deriver: Deriver
    live: LiveIngest | None
    top_markets: TopMarkets
    history: History
    pins: RuntimePins
    projector: Projector
    cluster: ClusterNode | None = None  # None: standalone
    demand: ClusterDemand | None = None  # a cluster's on-demand ingest (every node's subscribers)
    started_at: float = attrs.field(factory=time.time)

    def require_writer(self) -> None:
        """Raise ``NotWriterError`` (HTTP 409, naming the writer) on a node that may not write now."""
        if self.cluster is not None and not self.cluster.may_write():
            raise self.cluster.commit_point.refusal()

    def projection_reader(self) -> ProjectionReader:
        """The factor read models' view: the stores themselves, and the projector's failed series."""
        return ProjectionReader(self.eventlog, self.projections, self.projector.classes, self.projector.failed)

    def whitelist(self) -> list[SeriesId]:
        """The effective whitelist: the config's, with the operator's run-time pins and unpins."""
        return self.pins.effective()

    def sync_series(self) -> list[SeriesId]:
        """What the startup sync covers: the whitelist and its derived timeframes. A derived bucket whose base
        candles were appended just before a crash never got derived; the sync's derivation level builds it."""
        whitelist = self.whitelist()
        return list(dict.fromkeys([*whitelist, *(d for s in whitelist for d in self.deriver.derived_of(s))]))

    def active_series(self) -> list[SeriesId]:
        """What health, status and metrics cover: the whitelist, subscribed series, running actors."""
        live = self.live
        return list(dict.fromkeys([*self.whitelist(), *self.hub.active_series(), *(live.actors if live else ())]))

    def apply_whitelist(self) -> None:
        if self.live is not None and self.settings.enable_whitelist_ingest:
            live = self.live
            demand = self.demand
            holders = demand.holders if demand is not None else lambda s: self.hub.holders(live.upstream_series, s)
            live.apply_whitelist(self.whitelist(), holders)


def build_services(
    settings: Settings, eventlog: EventLog, pstore: ProjectionStore, link: ClusterLink | None = None
) -> Wiring:
    """Every part, wired once. In a cluster (``link``), appends go through the stream first, and the node's
    role decides who ingests (:class:`daemon.cluster.node.ClusterNode`)."""
    node = ClusterNode(link) if link is not None else None
    store = Store(eventlog, commit_point=node.commit_point if node is not None else None)
    clock = ExchangeClock(speed=settings.dev_clock_speed)
    hub = FanOut(
        store,
        now_s=clock.now_s,
        catchup_limit=settings.market_ws_catchup_limit,
        queue_frames=settings.market_ws_queue_frames,
        forming_interval_s=settings.market_forming_min_interval_ms / 1000,
    )
    base = parse_timeframe(settings.derived_base_timeframe)
    derived = [parse_timeframe(t) for t in settings.derived_timeframes] if settings.enable_derived_timeframes else []
    bases = {s for s in settings.whitelist_series if s.timeframe == base} if derived else set()
    projector = Projector(
        store.log,
        pstore,
        settings={"pivot": {"major_window": settings.pivot_window_major, "minor_window": settings.pivot_window_minor}},
        notify=hub.publish_system,
        max_in_memory=settings.projection_max_series_in_memory,
    )
    deriver = Deriver(store, base, derived, bases, after=Stages(project=projector.stage, publish=hub.publish_stage))
    writer = ClosedCandleWriter(
        store,
        batch_max=settings.binance_ws_batch_max,
        stages=Stages(derive=deriver, project=projector.stage, publish=hub.publish_stage),
        now_ms=clock.now_ms,
    )
    top = TopMarkets(settings.binance_spot_rest_url, settings.binance_futures_rest_url)
    history = History(
        settings,
        store,
        source=CcxtSource(settings.binance_spot_rest_url, settings.binance_futures_rest_url),
        derive_stage=deriver,
        base=base,
        derived=derived,
        now_s=clock.now_s,
    )
    pins = RuntimePins(settings.data_path / "pins.json", settings.whitelist_series)
    live: LiveIngest | None = None
    if settings.enable_whitelist_ingest or settings.enable_ondemand_ingest:
        live = LiveIngest(
            settings,
            store,
            writer=writer,
            clock=clock,
            deriver=deriver,
            broadcast_forming=node.relay_forming if node is not None else hub.publish_forming,
            whitelist=pins.effective(),
            trade_symbols=pins.trade_symbols,
            on_listed=pins.listed,
            repair_hole=history.repair_hole,  # holes the actors find (reconnects, late closes)
        )
    demand: ClusterDemand | None = None
    if node is not None:
        ingest_live = live
        demand = ClusterDemand(ingest_live.upstream_series if ingest_live is not None else lambda s: s)
        # A replica's events include the writer's derived candles: it projects and publishes, never derives.
        replica_stages = Stages(project=projector.stage, publish=hub.publish_stage)
        node.attach(store, replica_stages, demand, hub.publish_forming, history.tail_for_read)
        history.may_write = node.may_write
        history.coverage_elsewhere = node.cover_elsewhere
    return Wiring(
        settings,
        eventlog,
        pstore,
        store,
        clock,
        hub,
        writer,
        deriver,
        live,
        top,
        history,
        pins,
        projector,
        node,
        demand,
    )


async def serve_daemon(
    settings: Settings,
    *,
    notifier: Notifier | None = None,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until ``Running.stop`` is set; ``started`` (and systemd's READY=1) means the log is open, heads
    restored, startup sync done (or its bounded wait over) and every listener bound. The steps: open the
    stores, start the actors, serve, and, once stopped, shut down in order."""
    stop = trio.Event()
    notifier = notifier or Notifier()
    async with (
        open_eventlog(settings) as eventlog,
        open_projections(settings) as pstore,
        maybe_cluster(settings, notifier) as link,
        trio.open_nursery() as nursery,
    ):
        services = build_services(settings, eventlog, pstore, link)
        live_scope = trio.CancelScope()
        await start_actors(services, nursery, notifier, live_scope)
        http = await serve_http(services, nursery)
        if services.cluster is not None:
            services.cluster.http_url = http.url
        announce_ready(services, notifier, http.url)
        nursery.start_soon(notifier.watchdog)
        task_status.started(
            Running(http_url=http.url, store=services.store, stop=stop, live=services.live, services=services)
        )
        await stop.wait()
        await shut_down(services, notifier, live_scope, http)
        nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            await services.top_markets.aclose()


@asynccontextmanager
async def maybe_cluster(settings: Settings, notifier: Notifier) -> AsyncIterator[ClusterLink | None]:
    """The NATS link in cluster mode; nothing standalone."""
    if not settings.cluster:
        yield None
        return
    async with open_cluster(settings, lambda why: notifier.send(f"STATUS={why}")) as link:
        yield link


async def start_actors(
    services: Wiring, nursery: trio.Nursery, notifier: Notifier, live_scope: trio.CancelScope
) -> None:
    """The hub, projections, writer, repairs and the control socket; the startup sync; then live ingest
    (inside ``live_scope``, which shutdown cancels first)."""
    settings, projector, live = services.settings, services.projector, services.live
    ingest: IngestControl | None = live if live is not None and settings.enable_ondemand_ingest else None
    if services.demand is not None and ingest is not None:
        ingest = services.demand  # every node's subscribers, served by whichever node writes
    # Holes before a live candle: the log, then a bounded gap backfill when on.
    await nursery.start(functools.partial(services.hub.run, ingest=ingest, heal=services.history.heal))
    if projector.needs_rebuild():
        nursery.start_soon(projector.start)  # a rebuild from the log, in the background: candles keep flowing
    else:
        await projector.start()
    await nursery.start(projector.follow, services.store.wait_appended)
    await nursery.start(services.writer.run)
    await nursery.start(services.history.run)
    await nursery.start(serve_control, services, settings.control_socket_path)
    if services.cluster is not None:
        if settings.enable_ccxt_backfill and settings.cluster_role == "auto":
            nursery.start_soon(services.history.source.warm_up)  # before this node may write
        if live is not None:
            # Every node, writer or not, tells closed periods by the exchange's clock (the fan-out's gate).
            with trio.move_on_after(STARTUP_CLOCK_S):
                await live.measure_clock()
            nursery.start_soon(live.keep_clock_measured)
        await nursery.start(services.cluster.run, functools.partial(writer_term, services))
        return
    whitelist = services.sync_series()
    if settings.enable_startup_kline_sync and whitelist:
        notifier.send(f"STATUS=startup sync of {len(whitelist)} series")
        if live is not None:
            with trio.move_on_after(STARTUP_CLOCK_S):  # its window ends at the exchange's last closed period
                await live.measure_clock()
        # Before READY, but bounded: an unreachable exchange never holds READY.
        await services.history.startup_sync_before_ready(whitelist, settings.startup_kline_sync_wait_s)
    if live is not None:

        async def run_live(task_status: trio.TaskStatus[None]) -> None:
            with live_scope:  # stopped first at shutdown: no new candle once the writer drains
                await live.run(task_status=task_status)

        await nursery.start(run_live)


async def writer_term(services: Wiring, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """A cluster node's writer term, until cancelled (the lease lost, or shutdown): the startup sync, then live
    ingest with every node's on-demand series. As at a standalone start, the sync comes first: each series
    actor then starts from the synced head, and the hole the handover left before its first live close is
    one it detects and repairs, as after any reconnect."""
    settings, live, demand = services.settings, services.live, services.demand
    whitelist = services.sync_series()
    if settings.enable_startup_kline_sync and whitelist:
        # Bounded as before READY: an unreachable exchange never holds live ingest back (the sync goes on).
        await services.history.startup_sync_before_ready(whitelist, settings.startup_kline_sync_wait_s)
    async with trio.open_nursery() as nursery:
        if live is not None:
            await nursery.start(live.run)
            if demand is not None and settings.enable_ondemand_ingest:
                demand.writing(live)
        task_status.started()
        await trio.sleep_forever()


@attrs.frozen
class HttpServer:
    url: str
    shutdown: trio.Event  # set: hypercorn stops accepting and drains
    served: trio.Event  # set once hypercorn has returned


def hypercorn_config(settings: Settings) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [
        http_listener_bind(settings.http_host, settings.http_port, send_timeout_s=settings.http_send_timeout_s)
    ]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # a Logger: hypercorn adds no handler of its own
    config.graceful_timeout = 3.0
    # Chart clients and bots keep connections; a short idle cut races their next request on a pooled
    # connection ("server disconnected without a response"), as nginx's default 75 s avoids. hypercorn's
    # idle timer also runs from accept until a whole request head arrives, so the same limit cuts a peer
    # that never sends and one that trickles its header (its task and socket are freed then).
    config.keep_alive_timeout = settings.http_idle_timeout_s
    # Frames over our limit get a bad_request and the connection stays; far over it, hypercorn closes.
    config.websocket_max_message_size = max(4 * settings.market_ws_max_message_bytes, 1 << 20)
    return config


async def serve_http(services: Wiring, nursery: trio.Nursery) -> HttpServer:
    """HTTP and ``/ws/market`` on one listener, until the returned server's ``shutdown`` is set."""
    config = hypercorn_config(services.settings)
    app = cast(ASGIFramework, build_app(services))  # Starlette is ASGI 3; the types differ only nominally
    shutdown, served = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await hypercorn_serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)
        finally:
            served.set()

    binds = await nursery.start(run)
    return HttpServer(binds[0], shutdown, served)


def announce_ready(services: Wiring, notifier: Notifier, http_url: str) -> None:
    # Start-up objects live for the whole run: moving them out of the collector's generations keeps
    # full collections short, so they stop showing in read latencies (docs/design.md, "Garbage collection").
    gc.collect()
    gc.freeze()
    # A young collection every 10,000 allocations instead of 700: the fan-out makes a few dozen
    # short-lived objects per frame, and at the default the collector ran hundreds of times a second.
    gc.set_threshold(*GC_THRESHOLDS)
    log.info("daemon_ready", version=__version__, http_url=http_url, data_dir=str(services.settings.data_path))
    notifier.send("READY=1", f"MAINPID={os.getpid()}", f"STATUS={status_line(services)} on {http_url}")


async def shut_down(services: Wiring, notifier: Notifier, live_scope: trio.CancelScope, http: HttpServer) -> None:
    """Within the 5 s a stop may take: no new candles, every queued closed candle durable, subscribers told
    (a ``system`` goodbye, then 1001 server_shutdown), then the listeners; the caller closes the log."""
    log.info("daemon_stopping")
    notifier.send("STOPPING=1", "STATUS=stopping: flushing closed candles, closing subscribers")
    live_scope.cancel()
    if services.cluster is not None:
        services.cluster.stop_ingest()  # the lease is kept until the writer has drained
    http.shutdown.set()  # hypercorn stops accepting
    with trio.move_on_after(2.0):
        await services.writer.close()
    if services.cluster is not None:
        with trio.move_on_after(1.0):  # every queued candle is in the stream: the next writer may start now
            await services.cluster.hand_over()
    with trio.move_on_after(1.0):
        await services.projector.snapshot_all()  # a restart then resumes each series without replaying its tail
    services.hub.shutdown()
    with trio.move_on_after(1.5):
        await services.hub.wait_all_closed()
    with trio.move_on_after(1.0):
        await http.served.wait()  # hypercorn drains open requests; the nursery's cancel ends whatever remains


def status_line(services: Wiring) -> str:
    live = services.live
    actors = len(live.actors) if live else 0
    return f"serving: {actors} live series, {services.hub.connection_count} WebSocket connections"


async def run_until_signal(settings: Settings, config_path: str | None = None) -> None:
    """The ``klined run`` main: serve until SIGTERM or SIGINT, then shut down in order. SIGHUP re-reads the
    config's whitelist (logs go to stdout, journald's: there is no file to reopen)."""
    deadline: threading.Timer | None = None
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                running: Running = await nursery.start(serve_daemon, settings)
                async for signum in signals:
                    log.info("signal_received", signal=signal.Signals(signum).name)
                    if signum == signal.SIGHUP:
                        reload_whitelist(running, config_path)
                        continue
                    deadline = start_stop_deadline()
                    running.stop.set()
                    break
    finally:
        if deadline is not None:
            deadline.cancel()


def start_stop_deadline(before_exit: Callable[[], object] | None = None) -> threading.Timer:
    """Arm :data:`SHUTDOWN_DEADLINE_S` for a stop just asked for; cancel the timer once the stop is done.
    ``before_exit`` runs first if the deadline passes (the demo removes its temporary data directory)."""
    deadline = threading.Timer(SHUTDOWN_DEADLINE_S, _exit_at_deadline, args=(before_exit,))
    deadline.daemon = True
    deadline.start()
    return deadline


def _exit_at_deadline(before_exit: Callable[[], object] | None) -> None:
    """The shutdown deadline passed (a peer holds a socket): leave now; the log is already durable."""
    log.warning("shutdown_forced", deadline_s=SHUTDOWN_DEADLINE_S)
    if before_exit is not None:
        before_exit()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


def reload_whitelist(running: Running, config_path: str | None) -> None:
    services = running.services
    assert services is not None
    try:
        fresh = load_settings(config_path)
    except ConfigError as e:  # a bad edit keeps the running whitelist; the operator is told
        log.warning("reload_failed", error=str(e))
        return
    services.pins.reload(fresh.whitelist_series)
    services.apply_whitelist()
    log.info("whitelist_reloaded", series=[str(s) for s in services.whitelist()])
