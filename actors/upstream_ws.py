"""The upstream market-stream client: one read loop in the caller's task, no reader task, wsproto behind it.

A general WebSocket client (trio-websocket) reads in a background task and hands each message to the caller
through a memory channel: a task switch and a channel hop per message, which on a busy aggTrade stream cost
more than parsing and aggregating the trade. Here the caller's own task reads: one ``receive_some`` of up to
``RECEIVE_BYTES`` returns every complete message it held (:meth:`UpstreamWebSocket.receive`), and the caller
parses and delivers them inline. Pings are answered within that same read; control messages (SUBSCRIBE, ...)
go out through :meth:`UpstreamWebSocket.send_message` from another task, serialised with pongs and closes by
a send lock.

wsproto is the engine: the handshake, everything sent, and every frame but one shape. Binance sends each
message as one unmasked text frame; framing those through wsproto's general decoder cost more than all the
rest of the read, so the loop cuts the frames itself and takes that shape (FIN, no RSV bits, text, outside a
fragmented message, valid UTF-8) directly. Any other frame (control, fragment, binary, or a protocol error) is
handed to wsproto whole, so it always sits at a frame boundary and decides as it would alone. A frame that
declares more than ``max_message_size`` is refused from its header (1009, as trio-websocket did), as is a
fragmented message growing past it, so nothing larger is ever buffered.

Messages that precede a close (or a protocol error) in the same read are handed out first and the close is
raised by the next call: a ``serverShutdown`` notice and the close frame behind it often share a read.

``ws://`` and ``wss://`` (TLS through ``trio.SSLStream``); :func:`upstream_over` runs the same client over any
``trio.abc.Stream`` (tests use memory streams). This is klined's only upstream client: trio-websocket stays
for the fake exchange and the tests' clients, where a reader task per connection costs nothing that matters.
``bench/trades.py`` measures it on loopback beside a bare wsproto reader and the trio-websocket path.
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

# One read's messages are parsed and delivered before the loop yields: this bounds how long that holds the
# event loop, while still taking dozens of frames a read in a burst.
RECEIVE_BYTES: Final = 1 << 16
MAX_MESSAGE_SIZE: Final = 1 << 20  # Binance's frames are < 1 KiB; a control answer listing 1024 streams ~40 KiB
CONNECT_TIMEOUT_S: Final = 60.0
CLOSE_TIMEOUT_S: Final = 5.0
MAX_RESPONSE_HEAD: Final = 1 << 16


class HandshakeError(Exception):
    """The server did not upgrade the connection (an HTTP status, or not HTTP at all)."""


class WebSocketClosedError(Exception):
    """The WebSocket is closed: the close code and reason (1006 when the transport ended without a close frame)."""

    def __init__(self, code: int, reason: str | None = None) -> None:
        super().__init__(f"{code} {reason or ''}".strip())
        self.code, self.reason = code, reason


class UpstreamWebSocket:
    """One open client connection. :meth:`receive` is for one task, :meth:`send_message` for any."""

    def __init__(
        self, stream: trio.abc.Stream, ws: Connection, *, unread: bytes = b"", max_message_size: int = MAX_MESSAGE_SIZE
    ) -> None:
        self._stream, self._ws = stream, ws
        self._max_message_size = max_message_size
        self._send_lock = trio.Lock()
        self._unread = unread  # bytes after the last whole frame
        self._in_message = False  # wsproto holds the first fragments of a message
        self._parts: list[str | bytes] = []
        self._part_size = 0
        self._closed: WebSocketClosedError | None = None  # found after messages that were still handed out

    async def receive(self) -> list[str | bytes]:
        """The complete messages of the next read (at least one): text as ``str``, binary as ``bytes``.

        Raises :class:`WebSocketClosedError` once the peer closes (after answering its close frame), the
        transport ends, or a message exceeds ``max_message_size`` (closed with 1009); the messages that came
        before the end in the same read are handed out first (a ``serverShutdown`` notice, say)."""
        if self._closed is not None:
            raise self._closed
        if self._unread:  # what came with the handshake's answer may hold whole frames already
            messages = await self._frames(b"")
            if messages:
                return messages
        while True:
            data = await self._stream.receive_some(RECEIVE_BYTES)
            if not data:
                self._ws.receive_data(None)
                raise WebSocketClosedError(CloseReason.ABNORMAL_CLOSURE)
            messages = await self._frames(cast(bytes, data))  # a SocketStream's are bytes
            if messages:
                return messages

    async def _frames(self, data: bytes) -> list[str | bytes]:
        """Cut ``data`` (after what is left of the last read) into frames; the messages they complete."""
        buf = self._unread + data if self._unread else data
        messages: list[str | bytes] = []
        try:
            self._unread = buf[await self._cut(buf, messages) :]
        except WebSocketClosedError as closed:
            if not messages:
                raise
            self._closed, self._unread = closed, b""
        return messages

    async def _cut(self, buf: bytes, messages: list[str | bytes]) -> int:
        """Append the messages of ``buf``'s whole frames to ``messages``; where the first partial frame starts."""
        pos, end, limit = 0, len(buf), self._max_message_size
        while end - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            size, head = second & 0x7F, 2
            if size == 126:
                if end - pos < 4:
                    break
                size, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif size == 127:
                if end - pos < 10:
                    break
                size, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if second & 0x80:
                head += 4  # masked: a server must not, and wsproto says so
            if size > limit and first & 0x08 == 0:
                await self._too_big()
            if size > 125 and first & 0x08:
                await self._to_wsproto(buf[pos:end], messages)  # an oversized control frame: wsproto refuses it
                pos = end
                break
            stop = pos + head + size
            if stop > end:
                break
            # Unmasked, its length in the fewest bytes (wsproto refuses longer encodings) and below 64 KiB.
            if first == _WHOLE_TEXT and (head == 2 or (head == 4 and size > 125)) and not self._in_message:
                try:
                    messages.append(buf[pos + head : stop].decode())
                except UnicodeDecodeError:
                    pass  # wsproto closes with 1007
                else:
                    pos = stop
                    continue
            await self._to_wsproto(buf[pos:stop], messages)
            pos = stop
        return pos

    async def _to_wsproto(self, frame: bytes, messages: list[str | bytes]) -> None:
        """One whole frame (or a header wsproto will refuse) through wsproto."""
        ws = self._ws
        ws.receive_data(frame)
        for event in ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                self._in_message = not event.message_finished
                await self._collect(event, messages)
            elif isinstance(event, Ping):
                await self._send(event.response())
            elif isinstance(event, CloseConnection):
                # The peer's close is answered; a protocol error wsproto found is ours to announce.
                await self._say_close(event.response())
                raise WebSocketClosedError(event.code, event.reason or None)

    async def _collect(self, event: TextMessage | BytesMessage, messages: list[str | bytes]) -> None:
        """Reassemble a fragmented message."""
        self._parts.append(event.data if isinstance(event, TextMessage) else bytes(event.data))
        self._part_size += len(event.data)
        if self._part_size > self._max_message_size:
            await self._too_big()
        if event.message_finished:
            parts, self._parts, self._part_size = self._parts, [], 0
            if isinstance(event, TextMessage):
                messages.append("".join(cast(list[str], parts)))
            else:
                messages.append(b"".join(cast(list[bytes], parts)))

    async def _too_big(self) -> None:
        reason = f"message over {self._max_message_size} bytes"
        await self._say_close(CloseConnection(code=CloseReason.MESSAGE_TOO_BIG, reason=reason))
        raise WebSocketClosedError(CloseReason.MESSAGE_TOO_BIG, reason)

    async def send_message(self, message: str) -> None:
        """Send a text message; dropped once the connection is closing (the reader reports how it closed)."""
        await self._send(TextMessage(data=message))

    async def aclose(self) -> None:
        """Close politely (a close frame, then the peer's within ``CLOSE_TIMEOUT_S``), even when cancelled."""
        with trio.CancelScope(shield=True):
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                await self._say_close(CloseConnection(code=CloseReason.NORMAL_CLOSURE))
                with contextlib.suppress(*_TRANSPORT_GONE):
                    data, self._unread = self._unread, b""
                    while self._ws.state is ConnectionState.LOCAL_CLOSING:
                        if data:
                            self._ws.receive_data(data)
                            for _ in self._ws.events():
                                pass  # whatever still arrives, up to the peer's close frame
                            if self._ws.state is not ConnectionState.LOCAL_CLOSING:
                                break
                        data = cast(bytes, await self._stream.receive_some(RECEIVE_BYTES))
                        if not data:
                            break
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


_WHOLE_TEXT: Final = 0x81  # FIN, no RSV bits, opcode 1: a whole text message in one frame
_TRANSPORT_GONE: Final = (trio.BrokenResourceError, trio.ClosedResourceError, RemoteProtocolError, OSError)


async def _open(stream: trio.abc.Stream, host: str, target: str, max_message_size: int) -> UpstreamWebSocket:
    try:
        ws, unread = await _handshake(stream, host, target)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return UpstreamWebSocket(stream, ws, unread=unread, max_message_size=max_message_size)


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


async def _handshake(stream: trio.abc.Stream, host: str, target: str) -> tuple[Connection, bytes]:
    """The upgrade; the open connection and the bytes that came after the answer's head (frames already)."""
    client = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(client.send(Request(host=host, target=target)))
    received = b""
    while (head_end := received.find(b"\r\n\r\n")) < 0:
        if len(received) > MAX_RESPONSE_HEAD:
            raise HandshakeError("not a WebSocket upgrade: no end to the answer's head")
        data = await stream.receive_some(RECEIVE_BYTES)
        if not data:
            raise HandshakeError("the server closed the connection during the handshake")
        received += data
    # Only the head goes to wsproto: the frames after it are read by the connection's own loop.
    try:
        client.receive_data(received[: head_end + 4])
        for event in client.events():
            if isinstance(event, AcceptConnection):
                assert client.connection is not None  # wsproto sets it with the accept
                return client.connection, received[head_end + 4 :]
            if isinstance(event, RejectConnection):
                raise HandshakeError(f"rejected: HTTP {event.status_code}")
    except RemoteProtocolError as e:
        raise HandshakeError(f"not a WebSocket upgrade: {e}") from e
    raise HandshakeError("not a WebSocket upgrade: an answer without a status")
