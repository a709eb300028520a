"""The event stream on the real 3-node cluster: atomic batches at the expected sequence, and a stale writer
refused with nothing stored."""

from __future__ import annotations

from typing import Any

import nats
import pytest

from daemon.cluster.bridge import AsyncioThread
from daemon.cluster.follower import BehindRetentionError, StreamFollower
from daemon.cluster.stream import EventStream, StaleWriterError
from protocol.candle import Candle
from protocol.cluster_events import decode_event, encode_event
from protocol.logrecords import EventKind, LogEvent
from tests.cluster.nats_cluster import NatsCluster, read_events

S = "binance:spot:BTC/USDT:1m"


def bodies(*times: int) -> list[bytes]:
    return [encode_event(EventKind.CANDLE_CLOSED, S, Candle(t, 1.0, 2.0, 0.5, 1.5, 3.0)) for t in times]


async def test_batches_land_whole_at_their_seqs_and_a_stale_writer_stores_nothing(cluster: NatsCluster) -> None:
    async with AsyncioThread() as bridge:
        nc: Any = await bridge.run(nats.connect, cluster.urls)
        try:
            stream = EventStream(bridge, nc, "klined_test")
            await stream.open(replicas=3, max_age_s=0)
            assert await stream.append(bodies(60, 120, 180), expected_last=0, batch_id="n1-1") == 3
            assert await stream.append(bodies(240), expected_last=3, batch_id="n1-2") == 4
            with pytest.raises(StaleWriterError, match="expecting last sequence 3"):
                await stream.append(bodies(240, 300), expected_last=3, batch_id="n2-1")  # it missed n1-2
            assert await stream.last_seq() == 4  # nothing of the refused batch
            events = [decode_event(seq, await stream.message(seq)) for seq in range(1, 5)]
            assert events == [
                LogEvent(seq, EventKind.CANDLE_CLOSED, S, Candle(t, 1.0, 2.0, 0.5, 1.5, 3.0))
                for seq, t in zip(range(1, 5), (60, 120, 180, 240), strict=True)
            ]
            await stream.open(replicas=3, max_age_s=3600)  # reopening adopts a new retention
        finally:
            await bridge.run(nc.close)


async def test_a_follower_reads_in_order_from_any_seq_and_says_when_retention_passed_it(
    cluster: NatsCluster,
) -> None:
    async with AsyncioThread() as bridge:
        nc: Any = await bridge.run(nats.connect, cluster.urls)
        try:
            stream = EventStream(bridge, nc, "klined_test")
            await stream.open(replicas=3, max_age_s=0)
            await stream.append(bodies(60, 120, 180), expected_last=0, batch_id="n1-1")
            await stream.append(bodies(240, 300), expected_last=3, batch_id="n1-2")
            follower = StreamFollower(bridge, nc, stream)
            assert [e.seq for e in await read_events(follower, 0, 5)] == [1, 2, 3, 4, 5]
            assert await follower.read(5, wait_s=0.2) == []  # nothing new: an empty read, not an error
            await stream.append(bodies(360), expected_last=5, batch_id="n1-3")
            assert [(e.seq, e.candle.candle_time) for e in await read_events(follower, 5, 1)] == [(6, 360)]
            assert [e.seq for e in await read_events(follower, 3, 2, max_events=2)] == [4, 5]  # a restart
            js = nc.jetstream()
            await bridge.run(js.purge_stream, stream.name, 4)  # retention removed 1..3
            with pytest.raises(BehindRetentionError, match="needs event 2, but the stream starts at 4"):
                await follower.read(1)
            await follower.close()
        finally:
            await bridge.run(nc.close)
