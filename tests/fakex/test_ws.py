"""The fake exchange's kline streams: Binance's formats, control methods, limits, timing and faults."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection, open_websocket_url

from actors.clock import system_wall_ms, trio_wall_ms
from daemon.fakex.market import Market
from daemon.fakex.ws import FakeStreams, connect_in_memory, serve_streams
from protocol.binance import AggTrade, ControlError, ControlReply, KlineUpdate, MalformedPayload, parse_stream_message

START_MS = 1_700_000_040_000 + 30_000  # half a minute into a minute
SYMBOLS = {"BTCUSDT": "BTC/USDT", "ETHUSDT": "ETH/USDT"}


def fake(start_ms: int = START_MS) -> FakeStreams:
    return FakeStreams(Market.default(), trio_wall_ms(start_ms))


async def receive(conn: WebSocketConnection, market: str = "spot") -> object:
    return parse_stream_message(await conn.get_message(), exchange="binance", market=market, symbols=SYMBOLS)  # type: ignore[arg-type]


async def updates_for(conn: WebSocketConnection, seconds: float, market: str = "spot") -> list[KlineUpdate]:
    out: list[KlineUpdate] = []
    with trio.move_on_after(seconds):
        while True:
            msg = await receive(conn, market)
            assert isinstance(msg, KlineUpdate), msg
            out.append(msg)
    return out


async def drain(conn: WebSocketConnection) -> tuple[list[object], int]:
    """Every message until the server closes; with the close code."""
    messages: list[object] = []
    try:
        while True:
            messages.append(await receive(conn))
    except ConnectionClosed as e:
        return messages, e.reason.code


async def test_combined_stream_forming_every_2s_and_final_at_the_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    streams = fake()
    async with trio.open_nursery() as nursery:
        conn = await connect_in_memory(nursery, streams, "/stream?streams=btcusdt@kline_1m")
        got = await updates_for(conn, 40)
        nursery.cancel_scope.cancel()
    finals = [u for u in got if u.is_final]
    forming = [u for u in got if not u.is_final]
    assert len(finals) == 1
    assert finals[0].candle == streams.market.spot["BTCUSDT"].candle_1m(1_700_000_040)
    assert finals[0].candle.candle_time == 1_700_000_040
    # The final comes before the first forming update of the next minute.
    index = got.index(finals[0])
    assert got[index + 1].candle.candle_time == 1_700_000_100
    times = [u.event_time_ms for u in forming]
    assert all(b - a == 2000 for a, b in itertools.pairwise(times))


async def test_live_subscribe_list_unsubscribe_and_errors(autojump_clock: trio.testing.MockClock) -> None:
    streams = fake()
    async with trio.open_nursery() as nursery:
        conn = await connect_in_memory(nursery, streams, "/ws")
        await conn.send_message('{"method":"SUBSCRIBE","params":["btcusdt@kline_1m","ethusdt@kline_5m"],"id":1}')
        assert await receive(conn) == ControlReply(1, None)
        await trio.sleep(1)
        await conn.send_message('{"method":"LIST_SUBSCRIPTIONS","id":3}')
        assert await receive(conn) == ControlReply(3, ["btcusdt@kline_1m", "ethusdt@kline_5m"])
        await trio.sleep(1)
        await conn.send_message('{"method":"SUBSCRIBE","params":["nosuch@kline_1m"],"id":4}')
        reply = await receive(conn)
        while isinstance(reply, KlineUpdate):
            reply = await receive(conn)
        assert isinstance(reply, ControlError)
        assert (reply.id, reply.code) == (4, 2)
        await trio.sleep(1)
        await conn.send_message('{"method":"UNSUBSCRIBE","params":["ethusdt@kline_5m"],"id":5}')
        reply = await receive(conn)
        while isinstance(reply, KlineUpdate):
            reply = await receive(conn)
        assert reply == ControlReply(5, None)
        got = await updates_for(conn, 10)
        assert {str(u.series_id) for u in got} == {"binance:spot:BTC/USDT:1m"}
        nursery.cancel_scope.cancel()


async def test_more_than_five_control_messages_a_second_closes_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    streams = fake()
    async with trio.open_nursery() as nursery:
        conn = await connect_in_memory(nursery, streams, "/ws")
        for i in range(6):
            await conn.send_message(f'{{"method":"LIST_SUBSCRIPTIONS","id":{i}}}')
        closed = False
        with trio.move_on_after(5):
            try:
                while True:
                    await conn.get_message()
            except ConnectionClosed:
                closed = True
        assert closed
        assert streams.closed_by_limit == 1
        nursery.cancel_scope.cancel()


async def test_faults_duplicate_swap_malformed_silence_drop_and_shutdown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    streams = fake()
    async with trio.open_nursery() as nursery:
        conn = await connect_in_memory(nursery, streams, "/stream?streams=btcusdt@kline_1m")
        streams.faults.resend_closed = 1
        streams.faults.swap_next_closed = True
        streams.faults.malformed = 2
        seen: list[object] = []
        with trio.move_on_after(60 * 3):
            while True:
                seen.append(await receive(conn))
        finals = [m.candle.candle_time for m in seen if isinstance(m, KlineUpdate) and m.is_final]
        base = 1_700_000_040
        assert finals[:3] == [base + 60, base, base + 60]  # the swapped pair, then the newest resent
        assert sum(isinstance(m, MalformedPayload) for m in seen) == 2

        silence_from = streams.now_ms()
        streams.faults.silent_until_ms = silence_from + 30_000
        during = await updates_for(conn, 29)
        # A frame already in flight when the switch flipped may still arrive; none is stamped inside.
        assert [u for u in during if u.event_time_ms > silence_from] == []
        assert await updates_for(conn, 5)

        streams.faults.shutdown_generation += 1
        messages, code = await drain(conn)
        assert code == 1001
        assert "ServerShutdown" in [type(m).__name__ for m in messages]

        conn2 = await connect_in_memory(nursery, streams, "/stream?streams=btcusdt@kline_1m")
        streams.faults.drop_generation += 1
        _, code = await drain(conn2)
        assert code == 1011
        nursery.cancel_scope.cancel()


async def test_real_socket_raw_spot_and_futures_under_market_prefix() -> None:
    streams = FakeStreams(Market.default(), system_wall_ms)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            base = await nursery.start(serve_streams, streams)
            async with open_websocket_url(f"{base}/ws/btcusdt@kline_1m") as spot:
                msg = await receive(spot)
                assert isinstance(msg, KlineUpdate)
                assert str(msg.series_id) == "binance:spot:BTC/USDT:1m"
            async with open_websocket_url(f"{base}/market/stream?streams=ethusdt@kline_1m") as fut:
                msg = await receive(fut, "futures")
                assert isinstance(msg, KlineUpdate)
                assert str(msg.series_id) == "binance:futures:ETH/USDT:1m"
            nursery.cancel_scope.cancel()


async def test_replay_sends_old_finals_after_the_next_close_once(autojump_clock: trio.testing.MockClock) -> None:
    streams = fake()
    base = 1_700_000_040
    streams.faults.replay_after_close = (base - 120, base - 60)
    async with trio.open_nursery() as nursery:
        conn = await connect_in_memory(nursery, streams, "/stream?streams=btcusdt@kline_1m")
        finals = [u.candle.candle_time for u in await updates_for(conn, 125) if u.is_final]
        assert finals == [base, base - 120, base - 60, base + 60]  # late and reversed, then normal again
        assert streams.faults.replay_after_close == ()
        nursery.cancel_scope.cancel()


async def test_an_outage_refuses_handshakes_until_it_ends() -> None:
    now = {"ms": START_MS}
    streams = FakeStreams(Market.default(), lambda: now["ms"])
    streams.faults.refuse_until_ms = START_MS + 5_000
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            base = await nursery.start(serve_streams, streams)
            with pytest.raises(ConnectionRejected) as refused:
                async with open_websocket_url(f"{base}/stream"):
                    pass
            assert refused.value.status_code == 503
            assert streams.refused == 1
            now["ms"] = START_MS + 5_000
            async with open_websocket_url(f"{base}/stream") as conn:
                assert not conn.closed
            nursery.cancel_scope.cancel()


async def test_agg_trade_streams_send_each_minutes_trades_in_order(autojump_clock: trio.testing.MockClock) -> None:
    streams = fake()
    base = 1_700_000_040
    async with trio.open_nursery() as nursery:
        conn = await connect_in_memory(nursery, streams, "/stream?streams=btcusdt@aggTrade")
        got: list[AggTrade] = []
        with trio.move_on_after(60 * 3 + 1):
            while True:
                msg = await receive(conn)
                assert isinstance(msg, AggTrade), msg
                got.append(msg)
        nursery.cancel_scope.cancel()
    times = [t.trade_time_ms for t in got]
    assert times == sorted(times)
    assert all(t.event_time_ms >= t.trade_time_ms for t in got)  # sent after they happened
    sym = streams.market.spot["BTCUSDT"]
    for minute in (base + 60, base + 120):  # whole minutes after the subscription
        trades = [t for t in got if minute * 1000 <= t.trade_time_ms < (minute + 60) * 1000]
        c = sym.candle_1m(minute)
        prices = [t.price for t in trades]
        assert (prices[0], max(prices), min(prices), prices[-1]) == (c.open, c.high, c.low, c.close)
        assert sum(t.quantity for t in trades) == pytest.approx(c.volume)
