"""``/ws/market``: one WebSocket connection of SPEC §3 on the shared HTTP listener (ASGI, hypercorn on trio).

Three tasks per connection: the reader (client commands -> the hub), the sender (the client's bounded
outbox -> the socket) and the closer (a slow consumer, a shutdown, a limit: the final frame and the close
code). Whatever ends the connection, the hub forgets it and its on-demand refcounts are released.
"""

from __future__ import annotations

from typing import Final

import structlog
import trio
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from actors.fanout.connection import Connection
from actors.fanout.hub import FanOut
from actors.supervisor import CapacityError
from protocol.ws_market import BadRequest, Subscribe, error_frame, parse_client_message

log = structlog.get_logger(__name__)

FINAL_FRAME_TIMEOUT_S: Final = 5.0  # a stalled client gets this long to take its last frame


class RawWebSocket:
    """The four operations the endpoint needs, straight on ASGI's ``receive``/``send``.

    Starlette's ``WebSocket`` wraps every send in its middlewares' send wrappers; at a thousand subscribers
    the fan-out pays that per frame, so ``/ws/market`` is dispatched to this before Starlette's router.
    """

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive, self._send = receive, send

    async def accept(self) -> None:
        message = await self._receive()
        if message["type"] != "websocket.connect":
            raise WebSocketDisconnect(1006)
        await self._send({"type": "websocket.accept"})

    async def receive(self) -> Message:
        return await self._receive()

    async def send_text(self, text: str) -> None:
        await self._send({"type": "websocket.send", "text": text})

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})


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
