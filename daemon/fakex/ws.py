"""The fake exchange's WebSocket market streams, as Binance serves them.

Paths: spot ``/ws/<stream>[/<stream>...]`` (raw), ``/stream?streams=a/b`` (combined, enveloped) and a bare
``/ws`` or ``/stream`` joined later with ``SUBSCRIBE``; USD-M futures the same under ``/market`` (Binance
moved its futures market streams there in 2026). Control methods SUBSCRIBE / UNSUBSCRIBE /
LIST_SUBSCRIPTIONS answer as Binance does; more than the incoming-message limit per second, or more than
1024 streams, closes the connection. Every stream sends its forming kline every 2 s and, at each period
end, the final kline (``x: true``). Faults are switched on through :class:`Faults`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final
from urllib.parse import parse_qs, urlsplit

import attrs
import orjson
import structlog
import trio
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
    wrap_client_stream,
    wrap_server_stream,
)

from daemon.fakex.market import Market
from protocol.binance import AggTrade, agg_trade_event, kline_event
from protocol.candle import Candle
from protocol.series import Market as MarketType
from protocol.series import SeriesId
from protocol.timeframes import TIMEFRAMES, Timeframe
from protocol.upstream import CONTROL_RATE, MAX_STREAMS_PER_CONNECTION

log = structlog.get_logger(__name__)

UPDATE_INTERVAL_S: Final = 2.0
PING_INTERVAL_S: Final = {"spot": 20.0, "futures": 180.0}
PONG_TIMEOUT_S: Final = {"spot": 60.0, "futures": 600.0}
MALFORMED: Final = (b"{not json", b'{"e":"kline","E":1,"s":"BTCUSDT","k":{"t":"soon"}}', b'{"e":"kline"}', b"[]")


@attrs.define
class Faults:
    """Switches a test flips; the streaming loop reads them."""

    silent_until_ms: int = 0
    resend_closed: int = 0  # send the next N final klines twice
    swap_next_closed: bool = False  # send the next two final klines of a stream in reverse order
    replay_after_close: tuple[int, ...] = ()  # open times re-sent as finals, in this order, after the next close
    malformed: int = 0  # inject N malformed frames before the next updates
    drop_generation: int = 0  # bumped to drop every open connection
    refuse_until_ms: int = 0  # handshakes before this exchange time are refused (HTTP 503): an outage
    shutdown_generation: int = 0  # bumped to send serverShutdown then close


@attrs.define
class _TradeStream:
    name: str  # btcusdt@aggTrade
    symbol_id: str
    sent_through_ms: int  # trades up to this exchange time have gone out


@attrs.define
class _Stream:
    name: str
    symbol_id: str
    timeframe: Timeframe
    next_close: int  # open time of the period whose final kline is due next
    series: SeriesId
    held: bytes | None = None  # a final held back by swap_next_closed


class FakeStreams:
    """Serves kline streams for ``market`` with exchange time ``now_ms``."""

    def __init__(self, market: Market, now_ms: Callable[[], int]) -> None:
        self.market = market
        self.now_ms = now_ms
        self.faults = Faults()
        self.connections = 0
        self.accepted = 0
        self.closed_by_limit = 0
        self.refused = 0
        self.pongs = 0
        # (stream, open ms, E ms) of every closed kline sent, when a benchmark asks for its send instants.
        self.sent_closes: list[tuple[str, int, int]] | None = None
        self._accepted_event = trio.Event()

    async def wait_accepted(self) -> None:
        """Return after the next connection is accepted (a demo waits on this for a reconnect, not a timer)."""
        await self._accepted_event.wait()

    async def handle(self, request: WebSocketRequest) -> None:
        """trio-websocket handler: one connection's life. Whatever its peer does ends this connection only (an
        escaping error would end trio-websocket's server, and every other connection with it)."""
        try:
            await self._handle(request)
        except* (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away (trio groups it from the nursery): a normal end
        except* Exception as group:  # a defect: this connection fails, the exchange goes on
            log.exception("fakex_ws_connection_failed", error=repr(group.exceptions[0]))

    async def _handle(self, request: WebSocketRequest) -> None:
        if self.now_ms() < self.faults.refuse_until_ms:
            self.refused += 1
            await request.reject(503, body=b'{"code":-1,"msg":"service unavailable"}')
            return
        parts = urlsplit(request.path)
        path = parts.path
        market: MarketType = "spot"
        if path.startswith("/market/"):
            market, path = "futures", path[len("/market") :]
        combined = path.startswith("/stream")
        names: list[str] = []
        if path.startswith("/ws/"):
            names = [n for n in path[len("/ws/") :].split("/") if n]
        elif combined:
            names = [n for n in parse_qs(parts.query).get("streams", [""])[0].split("/") if n]
        elif path != "/ws":
            await request.reject(404, body=b'{"code":-1,"msg":"unknown path"}')
            return
        conn = await request.accept()
        self.connections += 1
        self.accepted += 1
        self._accepted_event.set()
        self._accepted_event = trio.Event()
        try:
            await _Connection(self, conn, market, combined, names).run()
        finally:
            self.connections -= 1


class _Connection:
    def __init__(
        self, server: FakeStreams, conn: WebSocketConnection, market: MarketType, combined: bool, names: list[str]
    ) -> None:
        self.server, self.conn, self.market, self.combined = server, conn, market, combined
        self.streams: dict[str, _Stream] = {}
        self.trade_streams: dict[str, _TradeStream] = {}
        self.message_times: list[float] = []
        self.drop_generation = server.faults.drop_generation
        self.shutdown_generation = server.faults.shutdown_generation
        for name in names:
            self._add(name)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_control, nursery.cancel_scope)
            nursery.start_soon(self._ping, nursery.cancel_scope)
            await self._pump()
            nursery.cancel_scope.cancel()

    def _add(self, name: str) -> str | None:
        """Subscribe ``name``; the reason it is invalid, if it is."""
        if name.endswith("@aggTrade"):
            return self._add_trades(name)
        symbol, _, rest = name.partition("@kline_")
        tf = TIMEFRAMES.get(rest)
        symbols = self.server.market.symbols(self.market)
        if tf is None or symbol.upper() not in symbols or symbol != symbol.lower():
            return f"Invalid request: unknown stream {name!r}"
        if name not in self.streams and self._count() >= MAX_STREAMS_PER_CONNECTION:
            return "too many streams"
        if name not in self.streams:
            now = self.server.now_ms() // 1000
            sym = symbols[symbol.upper()]
            series = SeriesId.parse(f"binance:{self.market}:{sym.symbol}:{tf.name}")
            self.streams[name] = _Stream(name, symbol.upper(), tf, tf.floor(now), series)
        return None

    def _count(self) -> int:
        return len(self.streams) + len(self.trade_streams)

    def _add_trades(self, name: str) -> str | None:
        symbol = name.removesuffix("@aggTrade")
        if symbol.upper() not in self.server.market.symbols(self.market) or symbol != symbol.lower():
            return f"Invalid request: unknown stream {name!r}"
        if name not in self.trade_streams:
            if self._count() >= MAX_STREAMS_PER_CONNECTION:
                return "too many streams"
            self.trade_streams[name] = _TradeStream(name, symbol.upper(), self.server.now_ms())
        return None

    async def _trades(self, stream: _TradeStream, now_ms: int) -> None:
        """Every trade of the symbol stamped after the last pump and up to ``now_ms``, in order."""
        symbol = self.server.market.symbols(self.market)[stream.symbol_id]
        first_minute = stream.sent_through_ms // 60_000 * 60
        for minute in range(max(first_minute, symbol.listed_at), now_ms // 60_000 * 60 + 60, 60):
            for t, price, qty in symbol.trades_1m(minute):
                if stream.sent_through_ms < t <= now_ms:
                    trade = AggTrade(stream.symbol_id, t, price, qty, t, self.server.now_ms(), False)
                    event = agg_trade_event(stream.symbol_id, trade)
                    payload = {"stream": stream.name, "data": event} if self.combined else event
                    await self.conn.send_message(orjson.dumps(payload).decode())
        stream.sent_through_ms = now_ms

    async def _read_control(self, scope: trio.CancelScope) -> None:
        limit = CONTROL_RATE[self.market]
        while True:
            raw = await self.conn.get_message()
            now = trio.current_time()
            self.message_times = [t for t in self.message_times if now - t < 1.0] + [now]
            if len(self.message_times) > limit:
                self.server.closed_by_limit += 1
                log.info("fakex_rate_limit_close", market=self.market)
                await self.conn.aclose(code=1008, reason="Too many requests")
                scope.cancel()
                return
            await self._control(raw)

    async def _control(self, raw: str | bytes) -> None:
        try:
            msg = orjson.loads(raw)
            method, msg_id = msg["method"], msg.get("id")
        except (orjson.JSONDecodeError, TypeError, KeyError):
            await self._send_json({"error": {"code": 2, "msg": "Invalid request: malformed JSON"}, "id": None})
            return
        params = msg.get("params", [])
        if method == "LIST_SUBSCRIPTIONS":
            await self._send_json({"result": sorted([*self.streams, *self.trade_streams]), "id": msg_id})
            return
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE") or not isinstance(params, list):
            await self._send_json({"error": {"code": 2, "msg": f"Invalid request: method {method!r}"}, "id": msg_id})
            return
        for name in params:
            if method == "UNSUBSCRIBE":
                self.streams.pop(str(name), None)
                self.trade_streams.pop(str(name), None)
                continue
            error = self._add(str(name))
            if error == "too many streams":
                await self.conn.aclose(code=1008, reason="Too many streams")
                return
            if error:
                await self._send_json({"error": {"code": 2, "msg": error}, "id": msg_id})
                return
        await self._send_json({"result": None, "id": msg_id})

    async def _ping(self, scope: trio.CancelScope) -> None:
        while True:
            await trio.sleep(PING_INTERVAL_S[self.market])
            with trio.move_on_after(PONG_TIMEOUT_S[self.market]) as waited:
                await self.conn.ping()
                self.server.pongs += 1
            if waited.cancelled_caught:
                await self.conn.aclose(code=1008, reason="pong timeout")
                scope.cancel()
                return

    async def _pump(self) -> None:
        faults = self.server.faults
        while True:
            now_ms = self.server.now_ms()
            # Updates every UPDATE_INTERVAL_S of exchange time: a fast clock (tests, demos) sends them faster.
            speed = getattr(self.server.now_ms, "speed", 1.0)
            await trio.sleep((UPDATE_INTERVAL_S * 1000 - now_ms % (UPDATE_INTERVAL_S * 1000)) / 1000 / speed)
            if faults.drop_generation != self.drop_generation:
                await self.conn.aclose(code=1011, reason="dropped")
                return
            if faults.shutdown_generation != self.shutdown_generation:
                await self._send_json({"e": "serverShutdown", "E": self.server.now_ms()})
                await self.conn.aclose(code=1001, reason="server shutdown")
                return
            now_ms = self.server.now_ms()
            if now_ms < faults.silent_until_ms:
                continue
            while faults.malformed:
                faults.malformed -= 1
                await self.conn.send_message(MALFORMED[faults.malformed % len(MALFORMED)].decode())
            # Like Binance at a period's end: every stream's closed kline goes out before the forming ones.
            streams = list(self.streams.values())
            closed = 0
            for stream in streams:
                closed += await self._closes(stream, now_ms)
            if closed:
                faults.replay_after_close = ()  # replayed after this round's closes: done
            for stream in streams:
                await self._forming(stream, now_ms)
            for trades in list(self.trade_streams.values()):
                await self._trades(trades, now_ms)

    async def _closes(self, stream: _Stream, now_ms: int) -> int:
        """Send the closed klines of the periods that ended by ``now_ms``, stamped as they go out; how many."""
        faults = self.server.faults
        sent = 0
        symbol = self.server.market.symbols(self.market)[stream.symbol_id]
        tf, now = stream.timeframe, now_ms // 1000
        while tf.next_open(stream.next_close) <= now:
            final = self._frame(stream, symbol.candle(tf, stream.next_close), True)
            stream.next_close = tf.next_open(stream.next_close)
            sent += 1
            if faults.swap_next_closed and stream.held is None:
                stream.held = final
                continue
            await self.conn.send_message(final.decode())
            if stream.held is not None:
                await self.conn.send_message(stream.held.decode())
                stream.held = None
                faults.swap_next_closed = False
            if faults.resend_closed:
                faults.resend_closed -= 1
                await self.conn.send_message(final.decode())
        for open_time in faults.replay_after_close if sent else ():  # late, out of order: periods long closed
            await self.conn.send_message(self._frame(stream, symbol.candle(tf, open_time), True).decode())
        return sent

    async def _forming(self, stream: _Stream, now_ms: int) -> None:
        symbol = self.server.market.symbols(self.market)[stream.symbol_id]
        forming = symbol.forming(stream.timeframe, now_ms)
        await self.conn.send_message(self._frame(stream, forming, False).decode())

    def _frame(self, stream: _Stream, candle: Candle, final: bool) -> bytes:
        # E is stamped per frame: a thousand frames take the fake a while to write, and that is not klined's time.
        sent_ms = self.server.now_ms()
        event = kline_event(stream.series, candle, is_final=final, event_time_ms=sent_ms)
        if final and self.server.sent_closes is not None:
            self.server.sent_closes.append((stream.name, candle.candle_time * 1000, sent_ms))
        return orjson.dumps({"stream": stream.name, "data": event} if self.combined else event)

    async def _send_json(self, obj: object) -> None:
        await self.conn.send_message(orjson.dumps(obj).decode())


async def serve_streams(
    streams: FakeStreams,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve on a real socket; ``started`` reports the ``ws://host:port`` base URL."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, streams.handle, host, port, None)
        task_status.started(f"ws://{host}:{server.port}")


def serve_in_memory(nursery: trio.Nursery, streams: FakeStreams) -> trio.abc.Stream:
    """The client's end of a memory stream pair that ``streams`` serves: no sockets, so MockClock tests stay exact."""
    client, server = trio.testing.memory_stream_pair()

    async def serve_one() -> None:
        await streams.handle(await wrap_server_stream(nursery, server))

    nursery.start_soon(serve_one)
    return client


async def connect_in_memory(nursery: trio.Nursery, streams: FakeStreams, path: str) -> WebSocketConnection:
    """A trio-websocket client connection to ``streams`` over memory streams."""
    return await wrap_client_stream(nursery, serve_in_memory(nursery, streams), "fakex", path)  # type: ignore[arg-type]
