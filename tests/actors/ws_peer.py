"""The exchange's end of an upstream WebSocket, driven by a test one frame at a time (wsproto, any stream)."""

from __future__ import annotations

from typing import TypeVar

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Event, RejectConnection, Request

E = TypeVar("E", bound=Event)


class Peer:
    """The exchange's end of the connection: wsproto over a stream, one step at a time."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.SERVER)
        self.requests: list[Request] = []
        self._events: list[Event] = []

    async def accept(self) -> None:
        self.requests.append(await self._expect(Request))
        await self.send(AcceptConnection())

    async def reject(self, status: int) -> None:
        await self._expect(Request)
        await self.send(RejectConnection(status_code=status))

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def next_event(self) -> Event:
        while not self._events:
            data = await self.stream.receive_some()
            self.ws.receive_data(data or None)
            self._events.extend(self.ws.events())
        return self._events.pop(0)

    async def _expect(self, kind: type[E]) -> E:
        event = await self.next_event()
        assert isinstance(event, kind), event
        return event
