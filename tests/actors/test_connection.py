"""A connection's outbox with a transport that can take frames at once (``write_now``): order is kept."""

from __future__ import annotations

import trio

from actors.fanout.connection import FLUSH, Connection
from actors.fanout.stats import FanOutStats


class Transport:
    """Takes frames while ``room`` lasts; ``partial`` takes the next frame only in part."""

    def __init__(self, client: Connection, room: int) -> None:
        self.client, self.room, self.partial = client, room, False
        self.written: list[str] = []

    def write_now(self, frame: str) -> bool:
        if self.room <= 0:
            return False
        self.room -= 1
        self.written.append(frame)
        if self.partial:
            self.partial = False
            self.client.flush_due()
        return True


def connection(room: int) -> tuple[Connection, Transport]:
    client = Connection(FanOutStats(), 1, queue_frames=100)
    transport = Transport(client, room)
    client.write_now = transport.write_now
    return client, transport


async def test_frames_go_out_at_once_while_the_transport_takes_them() -> None:
    client, transport = connection(room=10)
    client.offer(["a", "b"])
    client.offer(["c"])
    assert transport.written == ["a", "b", "c"]
    assert client.queued == 0


async def test_a_refused_frame_and_everything_after_it_queue_in_order() -> None:
    client, transport = connection(room=1)
    client.offer(["a", "b", "c"])
    transport.room = 10  # room again, but "b" and "c" wait: nothing may overtake them
    client.offer(["d"])
    assert transport.written == ["a"]
    assert [await client.next_frame() for _ in range(3)] == ["b", "c", "d"]
    client.offer(["e"])  # the outbox is empty again: straight out
    assert transport.written == ["a", "e"]


async def test_a_frame_taken_in_part_wakes_the_sender_to_finish_it() -> None:
    client, transport = connection(room=10)
    transport.partial = True
    client.offer(["a"])
    with trio.fail_after(1):
        assert await client.next_frame() == FLUSH
    assert client.queued == 0


async def test_a_closing_connection_takes_nothing() -> None:
    client, transport = connection(room=10)
    client.close(1000, "bye")
    client.offer(["a"])
    assert transport.written == []
    assert await client.next_frame() is None
