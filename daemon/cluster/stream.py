"""The cluster's commit point: one JetStream stream of log events, appended one atomic batch at a time.

A writer's batch of events is published as one atomic batch (nats-server 2.12+, ``allow_atomic``): every
message of it is stored, or none is, under consecutive stream sequences, which are the events' log seqs on
every node. The batch's first message names the stream's last sequence the writer expects: a writer whose
view is stale (another node appended since: it lost the lease) is refused with nothing stored
(:class:`StaleWriterError`). That is the fencing; the lease only decides who tries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final

import orjson
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.js.api import StreamConfig

from actors.ports import StoreError
from daemon.cluster.bridge import AsyncioThread

MAX_BATCH: Final = 1000  # the server's default limit of messages in one atomic batch
ACK_TIMEOUT_S: Final = 10.0
LEADER_WAIT_S: Final = 10.0
NO_RESPONDER_TRIES: Final = 5  # just after the stream is created, its subject may not be known everywhere yet
NO_RESPONDER_PAUSE_S: Final = 0.1
WRONG_LAST_SEQUENCE: Final = 10071


class StreamError(StoreError):
    """The stream did not take a batch (no leader, a timeout): nothing is known to be stored. The local
    append is aborted and the writer retries the batch, as for any storage error."""


class StaleWriterError(StreamError):
    """The stream's last sequence is not the one this writer expected: another writer appended."""

    def __init__(self, expected: int, detail: str) -> None:
        super().__init__(f"the stream refused a batch expecting last sequence {expected}: {detail}")
        self.expected = expected


class EventStream:
    """Append and read the cluster's event stream through one connection (nats-py, on the bridge)."""

    def __init__(self, bridge: AsyncioThread, nc: Any, cluster_name: str) -> None:
        self._bridge, self._nc = bridge, nc
        self.name = f"{cluster_name}_events"
        self.subject = f"{cluster_name}.events"

    async def open(self, *, replicas: int, max_age_s: float) -> None:
        """Create the stream, or adopt its settings if it exists (a retention change applies at once)."""
        config = StreamConfig(
            name=self.name,
            subjects=[self.subject],
            num_replicas=replicas,
            max_age=max_age_s or None,
            allow_atomic=True,
        )
        js = self._nc.jetstream()

        async def create_or_update() -> None:
            try:
                await js.add_stream(config)
            except NatsError:
                await js.update_stream(config)
            # A new stream's RAFT group elects its leader a moment later; until then a publish has no
            # responder. Return once it can take a batch (bounded: the caller retries a failed open).
            loop = asyncio.get_running_loop()
            deadline = loop.time() + LEADER_WAIT_S
            while not getattr((await js.stream_info(self.name)).cluster, "leader", None):
                if loop.time() > deadline:
                    raise StreamError(f"stream {self.name} has no leader after {LEADER_WAIT_S} s")
                await asyncio.sleep(0.05)

        await self._bridge.run(create_or_update)

    async def append(self, bodies: Sequence[bytes], *, expected_last: int, batch_id: str) -> int:
        """Store ``bodies`` (encoded events) at ``expected_last + 1`` onwards, all or nothing; the last seq."""
        if not 0 < len(bodies) <= MAX_BATCH:
            raise ValueError(f"a batch holds 1..{MAX_BATCH} events, not {len(bodies)}")
        return await self._bridge.run(self._append, list(bodies), expected_last, batch_id)

    async def _append(self, bodies: list[bytes], expected_last: int, batch_id: str) -> int:
        for attempt in range(1, NO_RESPONDER_TRIES + 1):
            try:
                reply = await self._publish_batch(bodies, expected_last, f"{batch_id}.{attempt}")
                break
            except NoRespondersError:  # nobody took the commit, so nothing of it is stored: try again
                if attempt == NO_RESPONDER_TRIES:
                    raise StreamError(f"no stream answers for batch {batch_id}") from None
                await asyncio.sleep(NO_RESPONDER_PAUSE_S * attempt)
            except (NatsError, TimeoutError) as e:
                raise StreamError(f"no acknowledgement for batch {batch_id}: {e!r}") from None
        last = len(bodies)
        ack = orjson.loads(reply.data)
        error = ack.get("error")
        if error is not None:
            if error.get("err_code") == WRONG_LAST_SEQUENCE:
                raise StaleWriterError(expected_last, str(error.get("description")))
            raise StreamError(f"batch {batch_id} refused: {error}")
        seq: int = ack["seq"]
        if seq != expected_last + last:
            raise StreamError(f"batch {batch_id} stored at {seq - last + 1}..{seq}, expected after {expected_last}")
        return seq

    async def _publish_batch(self, bodies: list[bytes], expected_last: int, batch_id: str) -> Any:
        """One atomic batch; the commit's reply. A batch never committed is dropped by the servers."""
        nc, last = self._nc, len(bodies)
        for i, body in enumerate(bodies, start=1):
            headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i)}
            if i == 1:
                headers["Nats-Expected-Last-Sequence"] = str(expected_last)
            if i < last:
                await nc.publish(self.subject, body, headers=headers)
            else:
                headers["Nats-Batch-Commit"] = "1"
                return await nc.request(self.subject, body, headers=headers, timeout=ACK_TIMEOUT_S)
        raise ValueError("an empty batch")

    async def last_seq(self) -> int:
        return (await self.bounds())[1]

    async def bounds(self) -> tuple[int, int]:
        """The first and last seq the stream holds (the first moves on with retention)."""
        js = self._nc.jetstream()

        async def info() -> tuple[int, int]:
            state = (await js.stream_info(self.name)).state
            return int(state.first_seq), int(state.last_seq)

        return await self._bridge.run(info)

    async def message(self, seq: int) -> bytes:
        """The body stored at ``seq`` (replicas read the stream with a consumer; this is for checks)."""
        js = self._nc.jetstream()

        async def get() -> bytes:
            return bytes((await js.get_msg(self.name, seq)).data or b"")

        return await self._bridge.run(get)
