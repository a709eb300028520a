"""The writer's commit point on the real cluster: stream first, then the local log; a stale writer stores
nothing anywhere; a lost acknowledgement is recognised; a node that fell behind catches up from the stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nats
import pytest

from actors.ports import StoreError
from actors.store import Store
from daemon.cluster.bridge import AsyncioThread
from daemon.cluster.commit import NotWriterError, StreamCommitPoint
from daemon.cluster.follower import StreamFollower
from daemon.cluster.stream import EventStream, StaleWriterError
from daemon.storage.eventlog import EventLog
from protocol.candle import Candle
from protocol.series import SeriesId
from tests.cluster.nats_cluster import NatsCluster, read_events

BTC = SeriesId.parse("binance:spot:BTC/USDT:1m")
ETH = SeriesId.parse("binance:spot:ETH/USDT:1m")


def c(t: int, close: float = 10.0) -> Candle:
    return Candle(t, close, close + 1, close - 1, close, 1.0)


async def test_the_stream_commits_first_and_every_log_follows_it(cluster: NatsCluster, tmp_path: Path) -> None:
    async with AsyncioThread() as bridge:
        nc: Any = await bridge.run(nats.connect, cluster.urls)
        try:
            stream = EventStream(bridge, nc, "klined_test")
            await stream.open(replicas=3, max_age_s=0)
            with EventLog(tmp_path / "n1") as log1, EventLog(tmp_path / "n2") as log2:
                writer = Store(log1, commit_point=StreamCommitPoint(stream, "n1", lambda: True))
                first = await writer.append({BTC: [c(60), c(120)], ETH: [c(60)]})
                second = await writer.append({BTC: [c(120, close=11.0), c(180)]})  # a correction and a close
                assert (first.last_seq, second.last_seq) == (3, 5)
                assert await stream.last_seq() == 5

                # The acknowledgement of the last batch was lost and it is published again: already stored.
                point = StreamCommitPoint(stream, "n1", lambda: True)
                await point.publish(log1.events_since(3))
                assert await stream.last_seq() == 5

                # n2 missed all of that and tries to write as if the stream were empty: refused, nothing kept.
                stale = Store(log2, commit_point=StreamCommitPoint(stream, "n2", lambda: True))
                with pytest.raises(StaleWriterError):
                    await stale.append({ETH: [c(120)]})
                assert (log2.last_seq(), await stream.last_seq()) == (0, 5)
                assert issubclass(StaleWriterError, StoreError)  # the writer keeps the batch and retries

                # It catches up from the stream instead, seq for seq.
                follower = StreamFollower(bridge, nc, stream)
                log2.apply(await read_events(follower, log2.last_seq(), 5))
                assert log2.events_since(0) == log1.events_since(0)
                assert log2.heads() == log1.heads()
                await follower.close()

                not_writer = Store(log2, commit_point=StreamCommitPoint(stream, "n2", lambda: False))
                with pytest.raises(NotWriterError):
                    await not_writer.append({ETH: [c(120)]})
                assert log2.last_seq() == 5
        finally:
            await bridge.run(nc.close)
