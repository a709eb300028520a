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


async def test_a_writer_that_lost_its_lease_mid_batch_rolls_back_and_says_so(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    """The zombie's case: its lease looked held when the batch began, another node appended meanwhile, and
    when the stream refuses the batch the lease is gone: nothing is kept, it is told it is fenced, and its
    writer drops the batch (NotWriterError names the new writer). Still holding the lease, the same refusal
    means "behind": the batch is retried after catching up."""
    async with AsyncioThread() as bridge:
        nc: Any = await bridge.run(nats.connect, cluster.urls)
        try:
            stream = EventStream(bridge, nc, "klined_test")
            await stream.open(replicas=3, max_age_s=0)
            with EventLog(tmp_path / "new") as new_log, EventLog(tmp_path / "zombie") as zombie_log:
                new_writer = Store(new_log, commit_point=StreamCommitPoint(stream, "n1", lambda: True))
                await new_writer.append({BTC: [c(60)]})

                lease_checks = iter([True, False])  # held as the batch began; lapsed by the refusal
                fenced: list[int] = []
                zombie = Store(
                    zombie_log,
                    commit_point=StreamCommitPoint(
                        stream, "n2", lambda: next(lease_checks), writer=lambda: "n1", on_fenced=fenced.append
                    ),
                )
                with pytest.raises(NotWriterError, match="node n2 is a replica: the writer is node n1") as refused:
                    await zombie.append({ETH: [c(60)], BTC: [c(60, close=12.0)]})
                assert refused.value.writer == "n1"
                assert fenced == [2]  # its two events, rolled back
                assert zombie_log.last_seq() == 0  # the local transaction never committed
                assert await stream.last_seq() == 1

                behind: list[int] = []
                holder = Store(
                    zombie_log,
                    commit_point=StreamCommitPoint(stream, "n2", lambda: True, on_behind=behind.append),
                )
                with pytest.raises(StaleWriterError):
                    await holder.append({ETH: [c(60)]})
                assert (behind, zombie_log.last_seq()) == ([1], 0)
        finally:
            await bridge.run(nc.close)
