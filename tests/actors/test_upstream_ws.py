"""The upstream WebSocket client against a wsproto server the test drives frame by frame: pings, fragments,
the message size bound, close frames, the handshake, and TLS on a real loopback socket."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
import trio
import trio.testing
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import FrameProtocol

from actors.upstream_ws import (
    CLOSE_TIMEOUT_S,
    HandshakeError,
    WebSocketClosedError,
    open_upstream,
    upstream_over,
)
from tests.actors.ws_peer import Peer


def pair() -> tuple[trio.abc.Stream, Peer]:
    client, server = trio.testing.memory_stream_pair()
    return client, Peer(server)


async def test_messages_of_one_read_come_back_together(autojump_clock: trio.testing.MockClock) -> None:
    client, peer = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.accept)
        async with upstream_over(client, "exchange.test", "/stream?streams=a") as conn:
            assert peer.requests[0].target == "/stream?streams=a"
            assert peer.requests[0].host == "exchange.test"
            frames = FrameProtocol(client=False, extensions=[])
            await peer.stream.send_all(b"".join(frames.send_data(f'{{"n":{i}}}', fin=True) for i in range(3)))
            assert await conn.receive() == ['{"n":0}', '{"n":1}', '{"n":2}']


async def test_ping_is_answered_within_the_read(autojump_clock: trio.testing.MockClock) -> None:
    client, peer = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.accept)
        async with upstream_over(client, "exchange.test", "/stream") as conn:
            await peer.send(Ping(payload=b"heartbeat"))
            await peer.send(TextMessage(data="after"))
            assert await conn.receive() == ["after"]
            assert await peer.next_event() == Pong(payload=b"heartbeat")


async def test_fragmented_message_is_reassembled(autojump_clock: trio.testing.MockClock) -> None:
    client, peer = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.accept)
        async with upstream_over(client, "exchange.test", "/stream") as conn:
            await peer.send(TextMessage(data='{"price":', message_finished=False))
            await peer.send(Ping(payload=b"between"))  # control frames may come between fragments
            await peer.send(TextMessage(data='"1.5"}', message_finished=True))
            assert await conn.receive() == ['{"price":"1.5"}']
            assert await peer.next_event() == Pong(payload=b"between")
            # One frame split across two reads is one message too.
            wire = FrameProtocol(client=False, extensions=[]).send_data("x" * 300, fin=True)
            await peer.stream.send_all(wire[:100])
            with trio.move_on_after(1):
                await conn.receive()
                pytest.fail("half a frame is not a message")
            await peer.stream.send_all(wire[100:])
            assert await conn.receive() == ["x" * 300]


@pytest.mark.parametrize("fragments", [1, 4])
async def test_oversized_message_closes_with_1009(autojump_clock: trio.testing.MockClock, fragments: int) -> None:
    client, peer = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.accept)
        async with upstream_over(client, "exchange.test", "/stream", max_message_size=100) as conn:
            await peer.send(TextMessage(data="y" * 100))  # at the bound: fine
            assert await conn.receive() == ["y" * 100]
            for i in range(fragments):
                await peer.send(TextMessage(data="z" * (101 // fragments + 1), message_finished=i == fragments - 1))
            with pytest.raises(WebSocketClosedError) as closed:
                await conn.receive()
            assert closed.value.code == 1009
            close = await peer.next_event()
            assert isinstance(close, CloseConnection)
            assert close.code == 1009
            await peer.send(close.response())


async def test_peer_close_is_answered_and_reported(autojump_clock: trio.testing.MockClock) -> None:
    client, peer = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.accept)
        async with upstream_over(client, "exchange.test", "/stream") as conn:
            await peer.send(CloseConnection(code=1011, reason="dropped"))
            with pytest.raises(WebSocketClosedError) as closed:
                await conn.receive()
            assert (closed.value.code, closed.value.reason) == (1011, "dropped")
            assert await peer.next_event() == CloseConnection(code=1011, reason="dropped")
            await conn.send_message("too late")  # closed: nothing more goes out
        assert await peer.stream.receive_some() == b""  # and the transport is closed


async def test_transport_end_is_an_abnormal_closure(autojump_clock: trio.testing.MockClock) -> None:
    client, peer = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.accept)
        async with upstream_over(client, "exchange.test", "/stream") as conn:
            await peer.stream.aclose()
            with pytest.raises(WebSocketClosedError) as closed:
                await conn.receive()
            assert closed.value.code == 1006


async def test_control_messages_go_out_beside_the_reader(autojump_clock: trio.testing.MockClock) -> None:
    client, peer = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.accept)
        async with upstream_over(client, "exchange.test", "/stream") as conn:
            got: list[str | bytes] = []

            async def read() -> None:
                got.extend(await conn.receive())

            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            await conn.send_message('{"method":"SUBSCRIBE","params":["btcusdt@aggTrade"],"id":1}')
            event = await peer.next_event()
            assert isinstance(event, TextMessage)
            assert event.data.startswith('{"method":"SUBSCRIBE"')
            await peer.send(TextMessage(data='{"result":null,"id":1}'))
            await trio.testing.wait_all_tasks_blocked()
            assert got == ['{"result":null,"id":1}']


async def test_leaving_closes_with_1000_and_waits_for_the_peer(autojump_clock: trio.testing.MockClock) -> None:
    client, peer = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.accept)
        async with upstream_over(client, "exchange.test", "/stream"):
            pass
        close = await peer.next_event()
        assert close == CloseConnection(code=1000, reason="")
    # A peer that never answers the close is waited for at most CLOSE_TIMEOUT_S, cancelled or not.
    client, peer = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.accept)
        start = trio.current_time()
        with trio.CancelScope() as scope:
            async with upstream_over(client, "exchange.test", "/stream"):
                scope.cancel()
                await trio.sleep_forever()
        assert trio.current_time() - start == pytest.approx(CLOSE_TIMEOUT_S)


async def test_refused_handshake(autojump_clock: trio.testing.MockClock) -> None:
    client, peer = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.reject, 503)
        with pytest.raises(HandshakeError, match="HTTP 503"):
            async with upstream_over(client, "exchange.test", "/stream"):
                pass
    client, server = trio.testing.memory_stream_pair()
    await server.send_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    with pytest.raises(HandshakeError, match="not a WebSocket upgrade"):
        async with upstream_over(client, "exchange.test", "/stream"):
            pass


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (the certificate is its own CA)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "klined test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_wss_over_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    served: list[str] = []

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        peer = Peer(stream)
        await peer.accept()
        served.append(peer.requests[0].target)
        await peer.send(Ping(payload=b"tls"))
        await peer.send(TextMessage(data='{"over":"tls"}'))
        assert await peer.next_event() == Pong(payload=b"tls")
        close = await peer.next_event()
        assert isinstance(close, CloseConnection)
        await peer.send(close.response())

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_ssl_over_tcp, handler, 0, server_context)
            port = listeners[0].transport_listener.socket.getsockname()[1]
            async with open_upstream(f"wss://127.0.0.1:{port}/ws?x=1", ssl_context=client_context) as conn:
                assert await conn.receive() == ['{"over":"tls"}']
            with pytest.raises(trio.BrokenResourceError):  # our own CA only: the system's store does not know it
                async with open_upstream(f"wss://127.0.0.1:{port}/ws"):
                    pass
            nursery.cancel_scope.cancel()
    assert served == ["/ws?x=1"]


def frame(first: int, payload: bytes, *, length_bytes: int = 0, mask: bool = False) -> bytes:
    """A frame built by hand: ``first`` is FIN, RSV and the opcode; the length as asked, even if not minimal."""
    size = len(payload)
    if length_bytes == 0 and size < 126:
        head = bytes([first, size | (0x80 if mask else 0)])
    elif length_bytes in (0, 2) and size < 1 << 16:
        head = bytes([first, 126 | (0x80 if mask else 0)]) + size.to_bytes(2, "big")
    else:
        head = bytes([first, 127 | (0x80 if mask else 0)]) + size.to_bytes(8, "big")
    return head + (b"\0\0\0\0" if mask else b"") + payload


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (frame(0x81, b"{}", mask=True), 1002),  # a server's frames are never masked
        (frame(0xC1, b"{}"), 1002),  # RSV1 without an extension that owns it
        (frame(0x81, b"{}", length_bytes=2), 1002),  # a length in more bytes than it needs
        (frame(0x81, b'{"a":"\xff"}'), 1007),  # not UTF-8
        (frame(0x83, b"{}"), 1002),  # a reserved opcode
        (frame(0x01, b'{"a":') + frame(0x81, b"1}"), 1002),  # a new message inside a fragmented one
        (frame(0x89, b"p" * 126, length_bytes=2)[:4], 1002),  # a control frame over 125 bytes: refused by its header
        (frame(0x81, b"z" * 2000)[:4], 1009),  # over the bound: refused by its header, before its payload
    ],
)
async def test_protocol_errors_close_the_connection(
    autojump_clock: trio.testing.MockClock, wire: bytes, code: int
) -> None:
    client, peer = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.accept)
        async with upstream_over(client, "exchange.test", "/stream", max_message_size=1000) as conn:
            await peer.stream.send_all(frame(0x81, b'{"ok":1}') + wire)
            assert await conn.receive() == ['{"ok":1}']
            with pytest.raises(WebSocketClosedError) as closed:
                await conn.receive()
            assert closed.value.code == code
            close = await peer.next_event()
            assert isinstance(close, CloseConnection)
            assert close.code == code


async def test_frames_of_every_length_and_with_the_handshake_answer(autojump_clock: trio.testing.MockClock) -> None:
    client, peer = pair()
    texts = ["s" * 125, "m" * 126, "l" * 65535, "h" * 65536, "é" * 10]
    wire = b"".join(frame(0x81, t.encode()) for t in texts)

    async def accept_and_send_at_once() -> None:
        await peer._expect(Request)
        await peer.stream.send_all(peer.ws.send(AcceptConnection()) + wire)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_and_send_at_once)
        async with upstream_over(client, "exchange.test", "/stream") as conn:
            got: list[str | bytes] = []
            while len(got) < len(texts):
                got += await conn.receive()
            assert got == texts
            await peer.send(BytesMessage(data=b"\x00binary"))
            assert await conn.receive() == [b"\x00binary"]
