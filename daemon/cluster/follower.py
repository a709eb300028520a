"""A replica's reader of the event stream: every event after its last applied seq, in order, none skipped.

No durable consumer is kept on the servers: each read position is the replica's own log (its last seq), so
a restarted replica resumes from what it has applied. An ephemeral pull consumer starts at the next seq,
acknowledges nothing, and is dropped by the servers once unused. Every message's stream sequence must be the
one after the last; a consumer that starts past it means the stream no longer holds those events
(retention), which the replica must be told plainly: it is seeded from a backup of another node.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import ServiceUnavailableError

from daemon.cluster.bridge import AsyncioThread
from daemon.cluster.stream import EventStream, StreamError
from protocol.cluster_events import decode_event
from protocol.logrecords import LogEvent

INACTIVE_S: Final = 10.0  # the servers drop a reader's consumer this long after its last fetch
TRANSIENT_PAUSE_S: Final = 0.2
_TRANSIENT: Final = (ServiceUnavailableError, NoRespondersError)


class BehindRetentionError(StreamError):
    """The stream's first event is past this replica's next one: the events between are gone from it."""

    def __init__(self, next_seq: int, first_seq: int) -> None:
        super().__init__(
            f"this node needs event {next_seq}, but the stream starts at {first_seq} (retention): "
            "seed it from a `klinectl backup` of another node"
        )
        self.next_seq, self.first_seq = next_seq, first_seq


class StreamFollower:
    """Reads the stream from any position; holds one consumer, recreated whenever the position jumps."""

    def __init__(self, bridge: AsyncioThread, nc: Any, stream: EventStream) -> None:
        self._bridge, self._nc, self._stream = bridge, nc, stream
        self._sub: Any = None
        self._next = 0  # the seq the held consumer delivers next
        self.last_stored_ms = 0  # when the stream stored the last event read (its replication lag's start)

    async def read(self, after_seq: int, *, max_events: int = 1000, wait_s: float = 1.0) -> list[LogEvent]:
        """The events after ``after_seq`` (at most ``max_events``). None if nothing comes within ``wait_s``, or
        if the stream has no leader this moment: the caller reads again."""
        return await self._bridge.run(self._read, after_seq, max_events, wait_s)

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await self._bridge.run(sub.unsubscribe)

    async def _read(self, after_seq: int, max_events: int, wait_s: float) -> list[LogEvent]:
        try:
            if self._sub is None or self._next != after_seq + 1:
                await self._subscribe(after_seq + 1)
            messages = await self._sub.fetch(batch=max_events, timeout=wait_s)
        except (NatsTimeoutError, TimeoutError):  # nats-py raises either when nothing comes before the deadline
            await self._check_retention(after_seq)  # nothing came: maybe because the stream no longer has it
            return []
        except _TRANSIENT:  # no stream leader this moment (an election, a node down): nothing read yet
            self._sub = None
            await asyncio.sleep(min(wait_s, TRANSIENT_PAUSE_S))
            return []
        except NatsError as e:
            self._sub = None
            raise StreamError(f"reading the stream after {after_seq}: {e!r}") from None
        events: list[LogEvent] = []
        for msg in messages:
            seq = int(msg.metadata.sequence.stream)
            if seq != self._next:
                self._sub = None  # re-read from the right place next time
                if not events and seq > self._next:
                    raise BehindRetentionError(self._next, seq)
                break
            events.append(decode_event(seq, msg.data))
            self.last_stored_ms = int(msg.metadata.timestamp.timestamp() * 1000) if msg.metadata.timestamp else 0
            self._next += 1
        return events

    async def _check_retention(self, after_seq: int) -> None:
        """Raise :class:`BehindRetentionError` if the stream's first event is past ``after_seq + 1`` (an
        empty stream's first seq is its last + 1: a reader at its tip is not behind)."""
        try:
            first = int((await self._nc.jetstream().stream_info(self._stream.name)).state.first_seq)
        except NatsError:
            return  # unknown now: the next read asks again
        if first > after_seq + 1:
            self._sub = None
            raise BehindRetentionError(after_seq + 1, first)

    async def _subscribe(self, start: int) -> None:
        if self._sub is not None:
            with contextlib.suppress(NatsError):  # gone already (inactive): a new one replaces it anyway
                await self._sub.unsubscribe()
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=INACTIVE_S,
        )
        js = self._nc.jetstream()
        self._sub = await js.pull_subscribe(self._stream.subject, stream=self._stream.name, config=config)
        self._next = start
