"""Upstream Binance kline streams for one market: connections, subscriptions, reconnects, dispatch.

Streams are spread over combined-stream connections by :class:`protocol.upstream.StreamPlan` (at most
1024 each). Adding a series subscribes it live on an open connection (SUBSCRIBE, paced below Binance's
control-message limit); nobody is reconnected. Each connection's reader only drains, parses and hands
off, so pings are answered within the same read (:mod:`actors.upstream_ws`: wsproto read straight from the
socket, every message of one read parsed and delivered inline). A dropped connection comes back with
jittered exponential backoff, logged once per step; a ``serverShutdown`` or the 24 h mark reconnects at once.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Final

import attrs
import orjson
import structlog
import trio

from actors.upstream_ws import HandshakeError, UpstreamWebSocket, WebSocketClosedError, open_upstream
from protocol.backoff import Backoff
from protocol.binance import (
    AggTrade,
    ControlError,
    KlineUpdate,
    MalformedPayload,
    ServerShutdown,
    parse_stream_message,
    stream_name,
)
from protocol.series import Market, SeriesId
from protocol.upstream import (
    PROACTIVE_RECONNECT_S,
    ControlMessage,
    StreamPlan,
    coalesce,
    control_bucket,
)

log = structlog.get_logger(__name__)

Connector = Callable[[str], AbstractAsyncContextManager[UpstreamWebSocket]]
Deliver = Callable[[KlineUpdate | AggTrade], None]
_CONNECTION_ERRORS: Final = (WebSocketClosedError, HandshakeError, OSError, trio.BrokenResourceError, trio.TooSlowError)
MALFORMED_LOG_EVERY: Final = 100  # log the first malformed payload of every hundred, count them all


@attrs.define
class ConnectionState:
    connection: int
    connected: bool = False
    connects: int = 0
    failures: int = 0
    last_error: str | None = None
    next_retry_s: float | None = None


@attrs.define
class IngestStats:
    reconnects: int = 0
    trades: int = 0
    messages: int = 0
    klines: int = 0
    malformed: int = 0
    control_errors: int = 0
    server_shutdowns: int = 0


class UpstreamIngest:
    """Kline streams of one market (``spot`` or ``futures``) from ``ws_base`` (e.g. ``wss://.../market``)."""

    def __init__(
        self,
        *,
        exchange: str = "binance",
        market: Market,
        ws_base: str,
        deliver: Deliver,
        connect: Connector = open_upstream,
        on_connected: Callable[[list[SeriesId]], None] | None = None,
        rng: random.Random | None = None,
        stream_limit: int | None = None,
        reconnect_max_s: float = 60.0,
    ) -> None:
        self._reconnect_max_s = reconnect_max_s
        self.exchange, self.market, self.ws_base = exchange, market, ws_base.rstrip("/")
        self._deliver = deliver
        self._connect = connect
        # Told which series a connection carries each time it (re)connects: whatever closed while it was
        # down never arrives on the new one, so their actors look for the hole at once.
        self._on_connected = on_connected
        self._rng = rng or random.Random()
        self._plan = StreamPlan() if stream_limit is None else StreamPlan(stream_limit)
        self._symbols: dict[str, str] = {}
        self._series_streams: dict[SeriesId, str] = {}
        self._control: dict[int, trio.MemorySendChannel[ControlMessage]] = {}
        self._running: dict[int, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self.connections: dict[int, ConnectionState] = {}
        self.stats = IngestStats()
        self._connected = trio.Event()
        self._failed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # -- subscriptions (sync: they only queue work) -------------------------------------------------

    def add(self, series: SeriesId, *, trades: bool = False) -> None:
        """Follow ``series``' kline stream, or with ``trades`` its symbol's aggTrade stream."""
        if series in self._series_streams:
            return
        name = f"{series.symbol_id.lower()}@aggTrade" if trades else stream_name(series.symbol_id, series.timeframe)
        self._symbols[series.symbol_id] = series.symbol
        self._series_streams[series] = name
        self._route(self._plan.add([name]))

    def remove(self, series: SeriesId) -> None:
        name = self._series_streams.pop(series, None)
        if name is not None and name not in self._series_streams.values():
            self._route(self._plan.remove([name]))
            live = self._plan.connections()
            for cid, scope in self._running.items():
                if cid not in live:
                    scope.cancel()  # its last stream is gone: close it rather than keep it idle

    async def wait_failure(self) -> None:
        """Return after the next failed attempt (tests wait on this, not a timer)."""
        await self._failed.wait()

    async def wait_connected(self) -> None:
        """Return after the next connection (or reconnection) is up (tests wait on this, not a timer)."""
        await self._connected.wait()

    def statistics(self) -> dict[str, object]:
        return {
            **attrs.asdict(self.stats),
            "streams": len(self._series_streams),
            "connections": [attrs.asdict(c) for c in self.connections.values()],
        }

    def _route(self, messages: list[ControlMessage]) -> None:
        for message in messages:
            cid = message.connection
            if cid not in self._running:
                if message.method == "SUBSCRIBE":
                    self._start_connection(cid)  # it subscribes its whole plan on connect
                continue
            channel = self._control.get(cid)
            if channel is None:
                continue  # still connecting: it subscribes its whole plan once connected
            # Between sessions: the reconnect resubscribes the whole plan anyway.
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                channel.send_nowait(message)

    def _start_connection(self, cid: int) -> None:
        if self._nursery is None:
            raise RuntimeError("UpstreamIngest.run must be started before series are added")
        self._running[cid] = trio.CancelScope()
        self.connections[cid] = ConnectionState(cid)
        self._nursery.start_soon(self._connection_main, cid, name=f"upstream:{self.market}:{cid}")

    # -- one connection ---------------------------------------------------------------------------

    async def _connection_main(self, cid: int) -> None:
        state = self.connections[cid]
        backoff = Backoff(first_s=min(1.0, self._reconnect_max_s), cap_s=self._reconnect_max_s)
        try:
            with self._running[cid]:
                await self._keep_connected(cid, state, backoff)
        finally:
            self._running.pop(cid, None)
            self._control.pop(cid, None)
            self.connections.pop(cid, None)

    async def _keep_connected(self, cid: int, state: ConnectionState, backoff: Backoff) -> None:
        while cid in self._plan.connections():
            error = await self._attempt(cid, state, backoff)
            state.connected = False
            if error is None:
                continue  # a clean end (shutdown notice, 24 h mark): reconnect at once
            state.failures += 1
            state.last_error = error
            delay = backoff.next_delay(self._rng.random())
            state.next_retry_s = delay
            log.warning(
                "upstream_unreachable", market=self.market, connection=cid, error=error, retry_in_s=round(delay, 2)
            )
            self._failed.set()
            self._failed = trio.Event()
            await trio.sleep(delay)

    async def _attempt(self, cid: int, state: ConnectionState, backoff: Backoff) -> str | None:
        """One connection's life; the error that ended it, or None for a clean end."""
        url = f"{self.ws_base}/stream"
        error: str | None = None
        try:
            with trio.move_on_after(PROACTIVE_RECONNECT_S):  # before Binance's 24 h cut
                async with self._connect(url) as ws:
                    state.connected, state.connects, state.next_retry_s = True, state.connects + 1, None
                    if state.connects > 1:
                        self.stats.reconnects += 1
                    backoff.reset()
                    log.info("upstream_connected", market=self.market, connection=cid, url=url)
                    await self._session(cid, ws)
        except* _CONNECTION_ERRORS as group:  # trio groups what a nursery raises
            error = _describe(group.exceptions[0])
        return error

    async def _session(self, cid: int, ws: UpstreamWebSocket) -> None:
        send, receive = trio.open_memory_channel[ControlMessage](1000)
        self._control[cid] = send
        names: set[str] = set()
        for message in self._plan.resubscribe(cid):
            send.send_nowait(message)
            names.update(message.params)
        if self._on_connected is not None:
            self._on_connected([s for s, name in self._series_streams.items() if name in names])
        self._connected.set()
        self._connected = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_controls, ws, receive)
            try:
                await self._read(ws)
            finally:
                nursery.cancel_scope.cancel()
                send.close()

    async def _send_controls(self, ws: UpstreamWebSocket, receive: trio.MemoryReceiveChannel[ControlMessage]) -> None:
        """Paced below Binance's limit; whatever queued meanwhile is coalesced into as few frames as possible."""
        bucket = control_bucket(self.market)
        queue: list[ControlMessage] = []
        message_id = 0
        while True:
            if not queue:
                queue.append(await receive.receive())
            await trio.sleep(bucket.delay(trio.current_time()))
            with contextlib.suppress(trio.WouldBlock):
                while True:
                    queue.append(receive.receive_nowait())
            queue = coalesce(queue)
            bucket.take(trio.current_time())
            message_id += 1
            await ws.send_message(orjson.dumps(queue.pop(0).payload(message_id)).decode())

    async def _read(self, ws: UpstreamWebSocket) -> None:
        """Drain promptly: every message of a read parsed and handed off without blocking; return on a
        shutdown notice."""
        stats, deliver, exchange, market, symbols = self.stats, self._deliver, self.exchange, self.market, self._symbols
        while True:
            for raw in await ws.receive():
                stats.messages += 1
                msg = parse_stream_message(raw, exchange=exchange, market=market, symbols=symbols)
                if isinstance(msg, AggTrade):
                    stats.trades += 1
                    deliver(msg)
                elif isinstance(msg, KlineUpdate):
                    stats.klines += 1
                    deliver(msg)
                elif isinstance(msg, MalformedPayload):
                    stats.malformed += 1
                    if stats.malformed % MALFORMED_LOG_EVERY == 1:
                        log.warning(
                            "upstream_malformed", market=market, reason=msg.reason, raw=msg.raw, count=stats.malformed
                        )
                elif isinstance(msg, ServerShutdown):
                    stats.server_shutdowns += 1
                    log.info("upstream_server_shutdown", market=market)
                    return
                elif isinstance(msg, ControlError):
                    stats.control_errors += 1
                    log.warning("upstream_control_error", market=market, code=msg.code, message=msg.message)


def _describe(error: BaseException) -> str:
    if isinstance(error, WebSocketClosedError):
        return f"closed: {error.code} {error.reason or ''}".strip()
    if isinstance(error, BaseExceptionGroup) and error.exceptions:
        return _describe(error.exceptions[0])
    cause = error.__cause__ or error.__context__
    return f"{error!r} from {cause!r}" if cause is not None and not str(error) else repr(error)
