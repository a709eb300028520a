"""Hostile peers of every klined listener (issue 16), shared by the matrix test and the chaos run.

A :class:`Listener` says how to reach one listener (control socket, ``/ws/market``, an ordinary HTTP route,
the SSE stream) and what a whole and a partial request look like there. Each peer below does one hostile
thing and returns what the daemon did to it, as a short word for the report: ``closed`` (the daemon ended the
connection), ``answered`` (it answered, then ended or kept it), ``reset`` (the peer reset it) or ``open``
(nothing happened within the bound: a failure for the peers that must be cut).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import orjson
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

GARBAGE: Final = b"\x00\xff garbage {{{\n" * 50
ETH: Final = "binance:spot:ETH/USDT:1m"


@attrs.frozen
class Listener:
    name: str
    unix_path: str | None = None  # the control socket, else TCP
    port: int = 0
    request: bytes = b""  # a whole request that gets a long (or endless) answer
    partial: bytes = b""  # the first part of a request, never finished

    async def connect(self) -> trio.SocketStream:
        if self.unix_path is not None:
            return await trio.open_unix_socket(self.unix_path)
        return await trio.open_tcp_stream("127.0.0.1", self.port)


def listeners(control_path: str, port: int) -> list[Listener]:
    host = f"127.0.0.1:{port}"

    def get(target: str) -> bytes:
        return f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n".encode()

    ws = WSConnection(ConnectionType.CLIENT)
    upgrade = ws.send(Request(host=host, target="/ws/market"))
    candles = get(f"/api/market/candles?series_id={ETH}&limit=5000")
    sse = get("/api/market/top_markets/stream?interval_s=0.2")
    return [
        Listener("control", unix_path=control_path, request=b'{"cmd": "health"}\n', partial=b'{"cmd": "hea'),
        Listener("ws_market", port=port, request=upgrade, partial=upgrade[: len(upgrade) // 2]),
        Listener("http", port=port, request=candles, partial=candles[: len(candles) // 2]),
        Listener("sse", port=port, request=sse, partial=sse[: len(sse) // 2]),
    ]


async def open_market_socket(stream: trio.SocketStream, port: int) -> WSConnection:
    """Upgrade ``stream`` to ``/ws/market`` by hand (wsproto), so the test owns the raw socket."""
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=f"127.0.0.1:{port}", target="/ws/market")))
    head = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(4096)
            assert chunk, "the upgrade was refused"
            head += chunk
    ws.receive_data(head)
    assert any(isinstance(e, AcceptConnection) for e in ws.events()), head
    return ws


def _reset(stream: trio.SocketStream) -> None:
    """Close with SO_LINGER 0: the kernel sends RST, the daemon's next read or write fails."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


async def _outcome(stream: trio.SocketStream, within: float) -> str:
    """Read until the daemon ends the connection or ``within`` passes."""
    answer = b""
    with trio.move_on_after(within):
        try:
            while chunk := await stream.receive_some(65536):
                answer = answer or chunk
        except trio.BrokenResourceError:
            return "reset"
        return f"answered {_first_line(answer)}, closed" if answer else "closed"
    return "open"


def _first_line(answer: bytes) -> str:
    """What the daemon said, for the report: an HTTP status line or the control socket's error code."""
    line = answer.split(b"\n", 1)[0].strip().decode(errors="replace")
    if line.startswith("{"):
        try:
            return str(orjson.loads(line).get("code", line[:40]))
        except orjson.JSONDecodeError:
            pass
    return line[:40]


async def garbage_then_close(listener: Listener, cut_s: float) -> str:
    stream = await listener.connect()
    await stream.send_all(GARBAGE)
    await stream.aclose()  # before reading a byte of the answer
    return "closed"


async def reset_mid_request(listener: Listener, cut_s: float) -> str:
    stream = await listener.connect()
    await stream.send_all(listener.partial)
    await trio.sleep(0.05)  # the daemon has read the partial request and waits for the rest
    _reset(stream)
    return "reset"


async def reset_mid_answer(listener: Listener, cut_s: float) -> str:
    stream = await listener.connect()
    await _send_request(stream, listener)
    with trio.fail_after(10):
        first = await stream.receive_some(512)  # the answer has begun
    assert first, f"{listener.name}: no answer to a whole request"
    _reset(stream)
    return "reset"


async def half_close_after_partial(listener: Listener, cut_s: float) -> str:
    stream = await listener.connect()
    async with stream:
        await stream.send_all(listener.partial)
        await stream.send_eof()  # shutdown(SHUT_WR): the request will never be finished
        return await _outcome(stream, cut_s + 5)


async def never_sends(listener: Listener, cut_s: float) -> str:
    stream = await listener.connect()
    async with stream:
        return await _outcome(stream, cut_s + 5)


async def trickles(listener: Listener, cut_s: float) -> str:
    """A byte of a request head a second, as slowloris does, until the daemon cuts the connection."""
    stream = await listener.connect()
    async with stream:
        deadline = trio.current_time() + cut_s + 5
        for byte in listener.request:
            try:
                await stream.send_all(bytes([byte]))
            except trio.BrokenResourceError:
                return "reset"
            outcome = await _outcome(stream, 1.0)
            if outcome != "open":
                return outcome
            if trio.current_time() > deadline:
                break
        return "open"


async def stops_reading(listener: Listener, cut_s: float) -> str:
    """Asks for an answer that never ends (or is large), then reads nothing: its window closes. The daemon
    must cut it (``http_send_timeout_s``) rather than hold its connection and the answer's bytes forever."""
    sock = trio.socket.socket(socket.AF_UNIX if listener.unix_path else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a window that fills at once
    await sock.connect(listener.unix_path or ("127.0.0.1", listener.port))
    async with trio.SocketStream(sock) as stream:
        await _send_request(stream, listener)
        await trio.sleep(cut_s + 3)  # reading nothing, as a dead or hostile client
        try:
            with trio.move_on_after(10):  # a live connection streams (SSE, catchup) or idles: no end
                while await stream.receive_some(65536):
                    pass
                return "closed"
        except trio.BrokenResourceError:
            return "reset"
        return "open"


async def _send_request(stream: trio.SocketStream, listener: Listener) -> None:
    if listener.name == "ws_market":  # a catchup of thousands of frames, one by one
        ws = await open_market_socket(stream, listener.port)
        body = f'{{"type":"subscribe","series_id":"{ETH}","since":0,"supports_batch":false}}'
        await stream.send_all(ws.send(TextMessage(data=body)))
    else:
        await stream.send_all(listener.request)


Peer = Callable[[Listener, float], Awaitable[str]]
PEERS: Final[dict[str, Peer]] = {
    "garbage_then_close": garbage_then_close,
    "reset_mid_request": reset_mid_request,
    "reset_mid_answer": reset_mid_answer,
    "half_close_after_partial": half_close_after_partial,
    "never_sends": never_sends,
    "trickles": trickles,
    "stops_reading": stops_reading,
}
MUST_BE_CUT: Final = frozenset({"half_close_after_partial", "never_sends", "trickles", "stops_reading"})


def must_be_cut(listener: str, kind: str) -> bool:
    """Whether the daemon must end this peer's connection within the test's bound.

    A peer that stops reading is cut once data it does not acknowledge has waited ``http_send_timeout_s``.
    The SSE stream sends ~40 bytes a second of pings once its first event is out, so a stopped reader's window
    takes minutes to close; until then the kernel acknowledges for it and holding it costs a few KB. The
    same listening socket, and so the same cut, is shown on ``/ws/market`` and the HTTP route.
    """
    return kind in MUST_BE_CUT and not (listener == "sse" and kind == "stops_reading")


async def crowd(listener: Listener, cut_s: float, count: int = 200) -> dict[str, int]:
    """``count`` hostile peers at once, every kind in turn; what happened to them, counted."""
    outcomes: dict[str, int] = {}

    async def one(kind: str) -> None:
        try:
            result = await PEERS[kind](listener, cut_s)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as e:
            result = type(e).__name__
        key = f"{kind}:{result}"
        outcomes[key] = outcomes.get(key, 0) + 1

    kinds = list(PEERS)
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, kinds[i % len(kinds)])
    outcomes["elapsed_ms"] = round((time.monotonic() - started) * 1000)
    return outcomes
