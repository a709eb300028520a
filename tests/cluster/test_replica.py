"""A replica on the real cluster: the writer's events land in its log at the same seqs, go through the
stages in order, and a restarted replica resumes from its own log without doubling anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nats
import trio

from actors.pipeline import Stages
from actors.replica import Replica
from actors.store import Store
from daemon.cluster.bridge import AsyncioThread
from daemon.cluster.commit import StreamCommitPoint
from daemon.cluster.follower import StreamFollower
from daemon.cluster.stream import EventStream
from daemon.storage.eventlog import EventLog
from protocol.candle import Candle
from protocol.logrecords import AppendResult
from protocol.series import SeriesId
from tests.cluster.nats_cluster import NatsCluster

BTC = SeriesId.parse("binance:spot:BTC/USDT:1m")
ETH = SeriesId.parse("binance:spot:ETH/USDT:1m")


def c(t: int, close: float = 10.0) -> Candle:
    return Candle(t, close, close + 1, close - 1, close, 1.0)


async def caught_up(replica: Replica, seq: int) -> None:
    while replica.stats.last_seq < seq:
        await replica.wait_applied()


async def test_a_replica_applies_in_order_and_resumes_from_its_own_log(cluster: NatsCluster, tmp_path: Path) -> None:
    published: list[tuple[int | None, dict[SeriesId, list[Candle]]]] = []

    async def publish(result: AppendResult) -> None:
        published.append((result.first_seq, result.changed))

    async with AsyncioThread() as bridge:
        nc: Any = await bridge.run(nats.connect, cluster.urls)
        try:
            stream = EventStream(bridge, nc, "klined_test")
            await stream.open(replicas=3, max_age_s=0)
            with EventLog(tmp_path / "writer") as wlog, EventLog(tmp_path / "replica") as rlog, trio.fail_after(30):
                writer = Store(wlog, commit_point=StreamCommitPoint(stream, "n1", lambda: True))
                await writer.append({BTC: [c(60), c(120)], ETH: [c(60)]})
                await writer.append({BTC: [c(120, close=11.0), c(180)]})
                rstore = Store(rlog)
                async with trio.open_nursery() as nursery:
                    replica = Replica(rstore, StreamFollower(bridge, nc, stream), Stages(publish=publish))
                    await nursery.start(replica.run)
                    await caught_up(replica, 5)
                    nursery.cancel_scope.cancel()
                assert rlog.events_since(0) == wlog.events_since(0)
                assert [seq for seq, _ in published] == [1, 4]  # the writer's two batches, in order
                assert published[1][1] == {BTC: [c(120, close=11.0), c(180)]}

                await writer.append({ETH: [c(120)], BTC: [c(240)]})
                async with trio.open_nursery() as nursery:  # a restart: from the replica's own last seq
                    replica = Replica(rstore, StreamFollower(bridge, nc, stream), Stages(publish=publish))
                    await nursery.start(replica.run)
                    await caught_up(replica, 7)
                    nursery.cancel_scope.cancel()
                assert [seq for seq, _ in published] == [1, 4, 6]  # nothing published twice
                assert rlog.events_since(0) == wlog.events_since(0)
                assert rlog.heads() == wlog.heads()
        finally:
            await bridge.run(nc.close)
