"""The JetStream facts cluster mode stands on, checked on the real 3-node cluster the tests start.

The stream is the commit point: an atomic batch is stored whole or not at all, and the expected last
sequence fences a writer whose view of the log is stale (a message id de-duplicates a republished message,
which klined does not rely on: it recognises its own stored batch by its bodies). The writer lease is a
replicated KV key taken by create-if-absent. If a server upgrade changed any of these, this file says so
before anything else does.
"""

from __future__ import annotations

from typing import Any

import nats
from nats.js.errors import APIError, KeyWrongLastSequenceError

from daemon.cluster.bridge import AsyncioThread
from tests.cluster.nats_cluster import NatsCluster

SUBJECT = "klined.test.events"


async def stream_facts(urls: list[str]) -> dict[str, Any]:
    nc = await nats.connect(servers=urls, connect_timeout=5)
    try:
        js = nc.jetstream()
        info = await js.add_stream(name="KLINED_TEST", subjects=[SUBJECT], num_replicas=3)
        first = await js.publish(SUBJECT, b"batch-1", headers={"Nats-Msg-Id": "w1:1"})
        again = await js.publish(SUBJECT, b"batch-1", headers={"Nats-Msg-Id": "w1:1"})
        try:
            await js.publish(SUBJECT, b"stale", headers={"Nats-Expected-Last-Sequence": "0"})
            fenced = None
        except APIError as e:
            fenced = e.err_code
        second = await js.publish(SUBJECT, b"batch-2", headers={"Nats-Expected-Last-Sequence": str(first.seq)})
        return {
            "replicas": info.config.num_replicas,
            "first": first.seq,
            "again": (again.seq, again.duplicate),
            "fenced": fenced,
            "second": second.seq,
        }
    finally:
        await nc.close()


async def lease_facts(urls: list[str]) -> dict[str, Any]:
    nc = await nats.connect(servers=urls, connect_timeout=5)
    try:
        kv = await nc.jetstream().create_key_value(bucket="klined_test_lease", history=1, ttl=5, replicas=3)
        taken = await kv.create("writer", b"n1")
        try:
            await kv.create("writer", b"n2")
            second = "taken"
        except KeyWrongLastSequenceError:
            second = "refused"
        renewed = await kv.update("writer", b"n1", last=taken)
        try:
            await kv.update("writer", b"n2", last=taken)  # a stale revision: someone renewed since
            stale = "taken"
        except KeyWrongLastSequenceError:
            stale = "refused"
        return {"taken": taken, "second": second, "renewed": renewed > taken, "stale": stale}
    finally:
        await nc.close()


async def test_the_stream_deduplicates_and_fences(cluster: NatsCluster) -> None:
    async with AsyncioThread() as bridge:
        facts = await bridge.run(stream_facts, cluster.urls)
    assert facts == {"replicas": 3, "first": 1, "again": (1, True), "fenced": 10071, "second": 2}


async def test_the_lease_is_create_if_absent_and_renewed_by_compare_and_set(cluster: NatsCluster) -> None:
    async with AsyncioThread() as bridge:
        facts = await bridge.run(lease_facts, cluster.urls)
    assert facts == {"taken": 1, "second": "refused", "renewed": True, "stale": "refused"}
