"""The upstream ingest against the fake exchange: one connection for many series, live subscribe,
reconnects with backoff, serverShutdown, malformed payloads, the stream limit, and a real socket."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import orjson
import structlog.testing
import trio
import trio.testing
from wsproto.events import CloseConnection, TextMessage

from actors.clock import system_wall_ms, trio_wall_ms
from actors.ingest import Connector, UpstreamIngest
from actors.upstream_ws import UpstreamWebSocket, upstream_over
from daemon.fakex.market import Market
from daemon.fakex.ws import FakeStreams, serve_in_memory, serve_streams
from protocol.binance import KlineUpdate, kline_event
from protocol.candle import Candle
from protocol.series import SeriesId
from tests.actors.ws_peer import Peer

BTC = SeriesId.parse("binance:spot:BTC/USDT:1m")
ETH = SeriesId.parse("binance:spot:ETH/USDT:1m")
BTC5 = SeriesId.parse("binance:spot:BTC/USDT:5m")
START_MS = 1_700_000_040_000 + 5_000


def memory_connector(
    nursery: trio.Nursery,
    streams: FakeStreams,
    attempts: list[float] | None = None,
    fail: Callable[[], bool] = lambda: False,
) -> Connector:
    @asynccontextmanager
    async def connect(url: str) -> AsyncIterator[UpstreamWebSocket]:
        if attempts is not None:
            attempts.append(trio.current_time())
        if fail():
            raise OSError(101, "Network is unreachable")
        async with upstream_over(serve_in_memory(nursery, streams), "fakex", urlsplit(url).path) as conn:
            yield conn

    return connect


async def start(nursery: trio.Nursery, streams: FakeStreams, got: list[KlineUpdate], **kw: object) -> UpstreamIngest:
    ingest = UpstreamIngest(
        market="spot",
        ws_base="ws://fakex",
        deliver=got.append,
        connect=kw.pop("connect", memory_connector(nursery, streams)),  # type: ignore[arg-type]
        rng=random.Random(7),
        **kw,  # type: ignore[arg-type]
    )
    await nursery.start(ingest.run)
    return ingest


async def test_many_series_share_one_connection_and_join_live(autojump_clock: trio.testing.MockClock) -> None:
    streams = FakeStreams(Market.default(), trio_wall_ms(START_MS))
    got: list[KlineUpdate] = []
    async with trio.open_nursery() as nursery:
        ingest = await start(nursery, streams, got)
        ingest.add(BTC)
        ingest.add(ETH)
        await trio.sleep(70)
        ingest.add(BTC5)  # joins the open connection by SUBSCRIBE
        await trio.sleep(60 * 5)
        assert streams.accepted == 1
        assert ingest.connections[0].connects == 1
        nursery.cancel_scope.cancel()
    finals = {(str(u.series_id), u.candle.candle_time) for u in got if u.is_final}
    market = streams.market.spot
    assert (str(BTC), 1_700_000_040) in finals
    assert any(s == str(BTC5) for s, _ in finals)
    for u in got:
        if u.is_final:
            assert u.candle == market[u.series_id.symbol_id].candle(u.series_id.timeframe, u.candle.candle_time)


async def test_drop_reconnects_with_backoff_and_resubscribes(autojump_clock: trio.testing.MockClock) -> None:
    streams = FakeStreams(Market.default(), trio_wall_ms(START_MS))
    got: list[KlineUpdate] = []
    attempts: list[float] = []
    async with trio.open_nursery() as nursery:
        ingest = await start(nursery, streams, got, connect=memory_connector(nursery, streams, attempts))
        ingest.add(BTC)
        await trio.sleep(10)
        streams.faults.drop_generation += 1
        await trio.sleep(70)
        state = ingest.connections[0]
        assert state.connects == 2
        assert state.failures == 1
        assert state.last_error == "closed: 1011 dropped"
        before = len(got)
        await trio.sleep(10)
        assert len(got) > before, "resubscribed after the reconnect"
        nursery.cancel_scope.cancel()
    # Dropped at the fake's next 2 s tick after t=10, then back within the first backoff step (<= 1 s).
    assert 10 < attempts[1] - attempts[0] <= 10 + 2 + 1


async def test_server_shutdown_reconnects_at_once(autojump_clock: trio.testing.MockClock) -> None:
    streams = FakeStreams(Market.default(), trio_wall_ms(START_MS))
    got: list[KlineUpdate] = []
    attempts: list[float] = []
    async with trio.open_nursery() as nursery:
        ingest = await start(nursery, streams, got, connect=memory_connector(nursery, streams, attempts))
        ingest.add(BTC)
        await trio.sleep(5)
        streams.faults.shutdown_generation += 1
        await trio.sleep(5)
        assert ingest.stats.server_shutdowns == 1
        assert ingest.connections[0].failures == 0
        nursery.cancel_scope.cancel()
    assert len(attempts) == 2
    assert attempts[1] - attempts[0] <= 5 + 2  # notice at the fake's next 2 s tick, then no backoff at all


async def test_malformed_payloads_are_counted_and_skipped(autojump_clock: trio.testing.MockClock) -> None:
    streams = FakeStreams(Market.default(), trio_wall_ms(START_MS))
    got: list[KlineUpdate] = []
    async with trio.open_nursery() as nursery:
        ingest = await start(nursery, streams, got)
        ingest.add(BTC)
        await trio.sleep(3)
        streams.faults.malformed = 4
        await trio.sleep(10)
        assert ingest.stats.malformed == 4
        assert ingest.connections[0].connects == 1
        count = len(got)
        await trio.sleep(4)
        assert len(got) > count
        nursery.cancel_scope.cancel()


async def test_stream_limit_opens_another_connection(autojump_clock: trio.testing.MockClock) -> None:
    streams = FakeStreams(Market.default(), trio_wall_ms(START_MS))
    got: list[KlineUpdate] = []
    async with trio.open_nursery() as nursery:
        ingest = await start(nursery, streams, got, stream_limit=2)
        for series in (BTC, ETH, BTC5):
            ingest.add(series)
        await trio.sleep(10)
        assert streams.accepted == 2
        assert {str(u.series_id) for u in got} == {str(BTC), str(ETH), str(BTC5)}
        ingest.remove(BTC5)
        await trio.sleep(10)
        assert len(ingest.connections) == 1
        nursery.cancel_scope.cancel()


async def test_unreachable_exchange_backs_off_and_recovers(autojump_clock: trio.testing.MockClock) -> None:
    streams = FakeStreams(Market.default(), trio_wall_ms(START_MS))
    got: list[KlineUpdate] = []
    attempts: list[float] = []
    network = {"down": True}
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            connect = memory_connector(nursery, streams, attempts, fail=lambda: network["down"])
            ingest = await start(nursery, streams, got, connect=connect)
            ingest.add(BTC)
            await trio.sleep(600)
            assert 8 <= len(attempts) <= 60, "backed off: no hot loop, still trying"
            assert all(b - a >= 0.1 for a, b in itertools.pairwise(attempts))
            assert ingest.connections[0].last_error == "OSError(101, 'Network is unreachable')"
            assert got == []
            failed = len(attempts)
            network["down"] = False
            await trio.sleep(70)
            assert ingest.connections[0].connected
            assert got
            nursery.cancel_scope.cancel()
    # Said once per backoff step, with the wait that step took.
    said = [e for e in logs if e["event"] == "upstream_unreachable"]
    assert len(said) == failed
    waits = [b - a for a, b in itertools.pairwise(attempts)]
    assert [e["retry_in_s"] for e in said] == [round(w, 2) for w in waits[:failed]]


async def test_real_loopback_socket() -> None:
    streams = FakeStreams(Market.default(), system_wall_ms)
    got: list[KlineUpdate] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            base = await nursery.start(serve_streams, streams)
            first = trio.Event()

            def deliver(update: KlineUpdate) -> None:
                got.append(update)
                first.set()

            ingest = UpstreamIngest(market="spot", ws_base=base, deliver=deliver)
            await nursery.start(ingest.run)
            ingest.add(BTC)
            await first.wait()
            nursery.cancel_scope.cancel()
    assert str(got[0].series_id) == str(BTC)


async def test_series_added_one_by_one_are_subscribed_in_few_frames(autojump_clock: trio.testing.MockClock) -> None:
    names = [f"S{i:04d}USDT" for i in range(500)]
    streams = FakeStreams(Market.default(names, ["BTCUSDT"]), trio_wall_ms(START_MS))
    got: list[KlineUpdate] = []
    async with trio.open_nursery() as nursery:
        ingest = await start(nursery, streams, got)
        ingest.add(SeriesId.parse("binance:spot:S0000/USDT:1m"))
        await trio.sleep(1)  # connected and subscribed
        for name in names[1:]:
            ingest.add(SeriesId.parse(f"binance:spot:{name[:-4]}/USDT:1m"))
        await trio.sleep(5)
        assert streams.closed_by_limit == 0
        assert ingest.connections[0].connects == 1
        got.clear()
        await trio.sleep(2)
        assert len({u.series_id for u in got}) == 500  # every stream live within seconds, not minutes
        nursery.cancel_scope.cancel()


async def test_oversized_message_closes_with_1009_and_reconnects(autojump_clock: trio.testing.MockClock) -> None:
    got: list[KlineUpdate] = []
    candle = Candle(1_700_000_040, 1.0, 2.0, 0.5, 1.5, 10.0)
    kline = {"stream": "btcusdt@kline_1m", "data": kline_event(BTC, candle, is_final=True, event_time_ms=START_MS)}

    async def exchange(stream: trio.abc.Stream, attempt: int) -> None:
        peer = Peer(stream)
        await peer.accept()
        subscribe = await peer.next_event()
        assert isinstance(subscribe, TextMessage)
        assert "btcusdt@kline_1m" in subscribe.data
        if attempt == 0:
            await peer.send(TextMessage(data="x" * 2000))
            close = await peer.next_event()
            assert close == CloseConnection(code=1009, reason="message over 1000 bytes")
            await peer.send(close.response())
            return
        await peer.send(TextMessage(data=orjson.dumps(kline).decode()))
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        attempts = itertools.count()

        @asynccontextmanager
        async def connect(url: str) -> AsyncIterator[UpstreamWebSocket]:
            client, server = trio.testing.memory_stream_pair()
            nursery.start_soon(exchange, server, next(attempts))
            async with upstream_over(client, "fakex", urlsplit(url).path, max_message_size=1000) as conn:
                yield conn

        ingest = await start(nursery, FakeStreams(Market.default(), trio_wall_ms(START_MS)), got, connect=connect)
        ingest.add(BTC)
        await ingest.wait_failure()
        assert ingest.connections[0].last_error == "closed: 1009 message over 1000 bytes"
        await trio.sleep(5)  # the first backoff step is at most 1 s
        assert ingest.connections[0].connects == 2
        assert [u.candle for u in got] == [candle]
        nursery.cancel_scope.cancel()


async def test_shutdown_notice_and_close_in_one_read_reconnect_at_once(autojump_clock: trio.testing.MockClock) -> None:
    got: list[KlineUpdate] = []
    attempts: list[float] = []

    async def exchange(stream: trio.abc.Stream) -> None:
        peer = Peer(stream)
        await peer.accept()
        await peer.next_event()  # SUBSCRIBE
        if len(attempts) == 1:  # the notice and the close frame reach the reader in one read
            notice = TextMessage(data=orjson.dumps({"e": "serverShutdown", "E": START_MS}).decode())
            await stream.send_all(peer.ws.send(notice) + peer.ws.send(CloseConnection(code=1001)))
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:

        @asynccontextmanager
        async def connect(url: str) -> AsyncIterator[UpstreamWebSocket]:
            attempts.append(trio.current_time())
            client, server = trio.testing.memory_stream_pair()
            nursery.start_soon(exchange, server)
            async with upstream_over(client, "fakex", urlsplit(url).path) as conn:
                yield conn

        ingest = await start(nursery, FakeStreams(Market.default(), trio_wall_ms(START_MS)), got, connect=connect)
        ingest.add(BTC)
        await trio.sleep(10)
        assert ingest.stats.server_shutdowns == 1
        assert ingest.connections[0].failures == 0
        assert len(attempts) == 2
        assert attempts[1] - attempts[0] < 1  # no backoff
        nursery.cancel_scope.cancel()
