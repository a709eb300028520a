"""The upstream market-stream client: wsproto driven straight from the socket, one read loop, no reader task.

A general WebSocket client (trio-websocket) reads in a background task and hands each message to the caller
through a memory channel: a task switch and a channel hop per message, which on a busy aggTrade stream cost
more than parsing and aggregating the trade. Here the caller's own task reads: one ``receive_some`` of up to
``RECEIVE_BYTES``, fed to wsproto, returns every complete message it held (:meth:`UpstreamWebSocket.receive`),
and the caller parses and delivers them inline. Pings are answered within that same read, before the batch is
handed back; control messages (SUBSCRIBE, ...) go out through :meth:`UpstreamWebSocket.send_message` from
another task, serialised with the pongs by a send lock.

``ws://`` and ``wss://`` (TLS through ``trio.SSLStream``); :func:`upstream_over` runs the same client over any
``trio.abc.Stream`` (tests use memory streams). A message over ``max_message_size`` closes the connection
with 1009, as trio-websocket did.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, cast
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

RECEIVE_BYTES: Final = 1 << 18  # one read takes whatever the kernel holds, up to this: a whole burst at a time
MAX_MESSAGE_SIZE: Final = 1 << 20  # Binance's frames are < 1 KiB; a control answer listing 1024 streams ~40 KiB
CONNECT_TIMEOUT_S: Final = 60.0
CLOSE_TIMEOUT_S: Final = 5.0


class HandshakeError(Exception):
    """The server did not upgrade the connection (an HTTP status, or not HTTP at all)."""


class WebSocketClosedError(Exception):
    """The WebSocket is closed: the close code and reason (1006 when the transport ended without a close frame)."""

    def __init__(self, code: int, reason: str | None = None) -> None:
        super().__init__(f"{code} {reason or ''}".strip())
        self.code, self.reason = code, reason


class UpstreamWebSocket:
    """One open client connection. :meth:`receive` is for one task, :meth:`send_message` for any."""

    def __init__(self, stream: trio.abc.Stream, ws: Connection, *, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self._stream, self._ws = stream, ws
        self._max_message_size = max_message_size
        self._send_lock = trio.Lock()
        self._parts: list[str | bytes] = []  # a message still arriving in pieces
        self._part_size = 0

    async def receive(self) -> list[str | bytes]:
        """The complete messages of the next read (at least one): text as ``str``, binary as ``bytes``.

        Raises :class:`WebSocketClosedError` once the peer closes (after answering its close frame), the
        transport ends, or a message exceeds ``max_message_size`` (closed with 1009)."""
        ws, limit = self._ws, self._max_message_size
        while True:
            data = await self._stream.receive_some(RECEIVE_BYTES)
            if not data:
                ws.receive_data(None)
                raise WebSocketClosedError(CloseReason.ABNORMAL_CLOSURE)
            ws.receive_data(cast(bytes, data))  # a SocketStream's are bytes
            messages: list[str | bytes] = []
            for event in ws.events():
                if isinstance(event, TextMessage):
                    if event.message_finished and not self._parts and len(event.data) <= limit:
                        messages.append(event.data)
                    else:
                        await self._collect(event, messages)
                elif isinstance(event, BytesMessage):
                    await self._collect(event, messages)
                elif isinstance(event, Ping):
                    await self._send(event.response())
                elif isinstance(event, CloseConnection):
                    # The peer's close is answered; a protocol error wsproto found is ours to announce.
                    await self._say_close(event.response())
                    raise WebSocketClosedError(event.code, event.reason or None)
            if messages:
                return messages

    async def _collect(self, event: TextMessage | BytesMessage, messages: list[str | bytes]) -> None:
        """Reassemble a fragmented message (wsproto also hands out a frame split across reads in pieces)."""
        self._parts.append(event.data if isinstance(event, TextMessage) else bytes(event.data))
        self._part_size += len(event.data)
        if self._part_size > self._max_message_size:
            reason = f"message over {self._max_message_size} bytes"
            await self._say_close(CloseConnection(code=CloseReason.MESSAGE_TOO_BIG, reason=reason))
            raise WebSocketClosedError(CloseReason.MESSAGE_TOO_BIG, reason)
        if event.message_finished:
            parts, self._parts, self._part_size = self._parts, [], 0
            if isinstance(event, TextMessage):
                messages.append("".join(cast(list[str], parts)))
            else:
                messages.append(b"".join(cast(list[bytes], parts)))

    async def send_message(self, message: str) -> None:
        """Send a text message; dropped once the connection is closing (the reader reports how it closed)."""
        await self._send(TextMessage(data=message))

    async def aclose(self) -> None:
        """Close politely (a close frame, then the peer's within ``CLOSE_TIMEOUT_S``), even when cancelled."""
        with trio.CancelScope(shield=True):
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                await self._say_close(CloseConnection(code=CloseReason.NORMAL_CLOSURE))
                with contextlib.suppress(*_TRANSPORT_GONE):
                    while self._ws.state is ConnectionState.LOCAL_CLOSING:
                        data = await self._stream.receive_some(RECEIVE_BYTES)
                        self._ws.receive_data(cast(bytes, data) or None)
                        for _ in self._ws.events():
                            pass  # whatever still arrives, up to the peer's close frame
            await trio.aclose_forcefully(self._stream)

    async def _say_close(self, close: CloseConnection) -> None:
        """Send ``close`` if it is still ours to send; a transport already gone has nothing to tell."""
        with contextlib.suppress(*_TRANSPORT_GONE):
            await self._send(close)

    async def _send(self, event: Event) -> None:
        """Send ``event`` unless the connection's state no longer allows it (closing: nothing more to say).
        The bytes are made under the lock, so nothing can follow a close frame onto the wire."""
        async with self._send_lock:
            try:
                data = self._ws.send(event)
            except LocalProtocolError:
                return
            await self._stream.send_all(data)


_TRANSPORT_GONE: Final = (trio.BrokenResourceError, trio.ClosedResourceError, RemoteProtocolError, OSError)


async def _open(stream: trio.abc.Stream, host: str, target: str, max_message_size: int) -> UpstreamWebSocket:
    try:
        ws = await _handshake(stream, host, target)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return UpstreamWebSocket(stream, ws, max_message_size=max_message_size)


@asynccontextmanager
async def upstream_over(
    stream: trio.abc.Stream, host: str, target: str, *, max_message_size: int = MAX_MESSAGE_SIZE
) -> AsyncIterator[UpstreamWebSocket]:
    """The client over an open transport: the opening handshake, then the connection until the block ends."""
    conn = await _open(stream, host, target, max_message_size)
    try:
        yield conn
    finally:
        await conn.aclose()


@asynccontextmanager
async def open_upstream(
    url: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = MAX_MESSAGE_SIZE,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> AsyncIterator[UpstreamWebSocket]:
    """Connect to ``ws://`` or ``wss://`` ``url``; the whole opening (TCP, TLS, upgrade) within the timeout."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    secure = parts.scheme == "wss"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    with trio.fail_after(connect_timeout_s):
        stream: trio.abc.Stream = await trio.open_tcp_stream(parts.hostname, parts.port or (443 if secure else 80))
        if secure:  # the TLS handshake runs with the first bytes sent
            context = ssl_context or ssl.create_default_context()
            stream = trio.SSLStream(stream, context, server_hostname=parts.hostname, https_compatible=True)
        conn = await _open(stream, host, target, max_message_size)
    try:
        yield conn
    finally:
        await conn.aclose()


async def _handshake(stream: trio.abc.Stream, host: str, target: str) -> Connection:
    client = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(client.send(Request(host=host, target=target)))
    while True:
        data = await stream.receive_some(RECEIVE_BYTES)
        try:
            client.receive_data(cast(bytes, data) or None)
            for event in client.events():
                if isinstance(event, AcceptConnection):
                    assert client.connection is not None  # wsproto sets it with the accept
                    return client.connection
                if isinstance(event, RejectConnection):
                    raise HandshakeError(f"rejected: HTTP {event.status_code}")
        except RemoteProtocolError as e:
            raise HandshakeError(f"not a WebSocket upgrade: {e}") from e
        if not data:
            raise HandshakeError("the server closed the connection during the handshake")
