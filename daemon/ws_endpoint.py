"""``/ws/market``: one WebSocket connection (docs/protocol.md) on the shared HTTP listener (ASGI, hypercorn on trio).

Three tasks per connection: the reader (client commands -> the hub), the sender (the client's bounded
outbox -> the socket) and the closer (a slow consumer, a shutdown, a limit: the final frame and the close
code). Whatever ends the connection, the hub forgets it and its on-demand refcounts are released.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final

import structlog
import trio
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from hypercorn.trio.tcp_server import TCPServer
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from actors.fanout.connection import Connection
from actors.fanout.hub import FanOut
from actors.supervisor import CapacityError
from protocol.ws_market import BadRequest, Subscribe, error_frame, parse_client_message
from protocol.wsframe import text_frame

log = structlog.get_logger(__name__)

FINAL_FRAME_TIMEOUT_S: Final = 5.0  # a stalled client gets this long to take its last frame


class RawWebSocket:
    """The four operations the endpoint needs, straight on ASGI's ``receive``/``send``.

    Starlette's ``WebSocket`` wraps every send in its middlewares' send wrappers; at a thousand subscribers
    the fan-out pays that per frame, so ``/ws/market`` is dispatched to this before Starlette's router.
    Under hypercorn, a text frame goes further still: framed once per payload (:func:`text_frame`, shared by
    every subscriber of a publish) and written to the connection's socket under hypercorn's own send lock,
    shielded as hypercorn shields it, so that a frame is never cut in half; a live frame that finds the
    connection idle is written from the publish itself (:meth:`write_through`). Everything else (the
    handshake, pings, the close) stays hypercorn's. Where hypercorn's objects are not what this expects (another server,
    another version), every send is plain ASGI.
    """

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive, self._send = receive, send
        self._direct = DirectSend.of(send)

    def write_through(self, client: Connection) -> None:
        """Let ``client``'s live frames go to the socket from the publish itself, where that is possible."""
        if self._direct is not None:
            self._direct.on_partial = client.flush_due
            client.write_now = self._direct.write_now

    async def accept(self) -> None:
        message = await self._receive()
        if message["type"] != "websocket.connect":
            raise WebSocketDisconnect(1006)
        await self._send({"type": "websocket.accept"})

    async def receive(self) -> Message:
        return await self._receive()

    async def send_text(self, text: str) -> None:
        if (self._direct is None or not await self._direct.send(text)) and text:  # FLUSH: nothing of its own
            await self._send({"type": "websocket.send", "text": text})

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})


class DirectSend:
    """Text frames written to hypercorn's socket for one WebSocket connection (see :class:`RawWebSocket`)."""

    _last: tuple[str, bytes] = ("", text_frame(b""))  # the latest text framed: a publish's subscribers share it

    def __init__(self, stream: Any, tcp: Any) -> None:
        self._stream, self._tcp = stream, tcp  # hypercorn's WSStream and its connection's TCPServer
        self._fd: int = tcp.stream.socket.fileno()
        self._rest = b""  # what the socket has not taken yet of a frame written without waiting
        self.on_partial: Callable[[], None] = _nothing  # the sender must finish ``_rest`` (see Connection)

    @classmethod
    def of(cls, send: Send) -> DirectSend | None:
        """The direct path behind an ASGI ``send`` of hypercorn's WebSocket stream, if that is what it is."""
        stream = getattr(send, "__self__", None)
        h11 = getattr(getattr(stream, "send", None), "__self__", None)
        tcp = getattr(getattr(h11, "send", None), "__self__", None)
        if not (
            type(stream) is WSStream
            and type(tcp) is TCPServer
            and isinstance(getattr(tcp, "send_lock", None), trio.Lock)
            and type(getattr(tcp, "stream", None)) is trio.SocketStream  # plain TCP: a TLS stream frames its own
        ):
            return None
        return cls(stream, tcp)

    def _open(self) -> bool:
        return not self._stream.closed and self._stream.state is ASGIWebsocketState.CONNECTED

    def write_now(self, text: str) -> bool:
        """Hand one message to the socket without waiting: False (nothing written) if a send is in flight,
        part of a frame is still unsent, the connection is not open, or the socket takes nothing now."""
        if self._rest or self._tcp.send_lock.locked() or not self._open():
            return False
        frame = _framed(text)
        try:
            sent = os.write(self._fd, frame)
        except OSError:  # full (the sender waits for room), or a dead peer (the sender's send reports it)
            return False
        if sent < len(frame):
            self._rest = frame[sent:]
            self.on_partial()
        return True

    async def send(self, text: str) -> bool:
        """Write what is left of a frame, then one text message (none for ``FLUSH``); False (nothing written)
        unless the connection is open for messages."""
        if not self._open():
            return False
        async with self._tcp.send_lock:
            with trio.CancelScope(shield=True):  # a cancelled send must not leave half a frame on the wire
                if self._rest:
                    rest, self._rest = self._rest, b""
                    await self._tcp.stream.send_all(rest)
                if text:
                    await self._tcp.stream.send_all(_framed(text))
        return True


def _framed(text: str) -> bytes:
    """The frame of ``text``; the latest is kept, as every subscriber of a publish sends the same text."""
    last_text, frame = DirectSend._last
    if text is not last_text:
        frame = text_frame(text.encode())
        DirectSend._last = (text, frame)
    return frame


def _nothing() -> None:
    pass


class MarketSocket:
    """The endpoint's settings and its hub; :meth:`serve` serves one connection."""

    def __init__(self, hub: FanOut, *, max_connections: int, max_subscriptions: int, max_message_bytes: int) -> None:
        self.hub = hub
        self.max_connections = max_connections
        self.max_subscriptions = max_subscriptions
        self.max_message_bytes = max_message_bytes

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.serve(RawWebSocket(receive, send))

    async def serve(self, websocket: RawWebSocket) -> None:
        await websocket.accept()
        if self.hub.connection_count >= self.max_connections:
            await websocket.send_text(error_frame("capacity", "too many connections").decode())
            await websocket.close(1013, "capacity")
            return
        client = self.hub.connect()
        websocket.write_through(client)
        try:
            async with trio.open_nursery() as nursery:
                client.nursery = nursery
                nursery.start_soon(self._send_loop, websocket, client, nursery.cancel_scope)
                nursery.start_soon(self._enforce_close, client, nursery.cancel_scope)
                await self._read_loop(websocket, client)
                nursery.cancel_scope.cancel()
        except* (WebSocketDisconnect, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away: nothing to tell it
        finally:
            self.hub.disconnect(client)

    async def _read_loop(self, websocket: RawWebSocket, client: Connection) -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            command = parse_client_message(data, max_bytes=self.max_message_bytes)
            if isinstance(command, BadRequest):
                client.send_error("bad_request", command.message)
            elif isinstance(command, Subscribe):
                await self._subscribe(client, command)
            else:
                self.hub.unsubscribe(client, command.series)
            await trio.lowlevel.checkpoint()  # a burst of commands never starves the sender

    async def _subscribe(self, client: Connection, command: Subscribe) -> None:
        series = command.series
        if series not in client.subs and len(client.subs) >= self.max_subscriptions:
            client.send_error("capacity", f"at most {self.max_subscriptions} subscriptions per connection", series)
            return
        try:
            await self.hub.subscribe(client, series, command.since, command.supports_batch)
        except CapacityError as e:
            client.send_error(e.code, str(e), series)

    async def _send_loop(self, websocket: RawWebSocket, client: Connection, scope: trio.CancelScope) -> None:
        """Frames in order; once the client is closing, the final frame (if any) and the close code."""
        while (frame := await client.next_frame()) is not None:
            await websocket.send_text(frame)
        if client.final_frame is not None:
            await websocket.send_text(client.final_frame)
        await websocket.close(client.close_code, client.close_reason)
        scope.cancel()

    async def _enforce_close(self, client: Connection, scope: trio.CancelScope) -> None:
        """A client that does not even take its final frame is cut off."""
        await client.closing.wait()
        await trio.sleep(FINAL_FRAME_TIMEOUT_S)
        log.info("ws_close_forced", client=client.client_id, reason=client.close_reason)
        scope.cancel()
