"""Server text frames, checked against wsproto (the engine hypercorn uses) decoding them as a client."""

from __future__ import annotations

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

from protocol.wsframe import text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 200_000])
def test_a_frame_of_any_length_decodes_as_one_whole_text_message(size: int) -> None:
    text = ("é" * size)[:size] if size % 2 else "x" * size
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(text_frame(text.encode()))
    (event,) = list(client.events())
    assert isinstance(event, TextMessage)
    assert (event.data, event.frame_finished, event.message_finished) == (text, True, True)


def test_the_header_is_the_shortest_form() -> None:
    assert text_frame(b"a")[:2] == b"\x81\x01"
    assert text_frame(b"a" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert text_frame(b"a" * 65_536)[:10] == b"\x81\x7f" + (65_536).to_bytes(8, "big")
