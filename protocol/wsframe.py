"""A WebSocket text message as one unmasked, final server frame (RFC 6455 §5.2), built once per payload.

A live publish goes to every subscriber of a series as the same frame: framing it here, once, rather than in
each connection's WebSocket engine, is what lets a thousand sends share one buffer. A server frame is never
masked, and a message sent without RSV1 is valid whether or not permessage-deflate was negotiated.
"""

from __future__ import annotations

import struct
from typing import Final

_FIN_TEXT: Final = 0x81
_LEN16: Final = struct.Struct("!BBH")
_LEN64: Final = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """``payload`` (UTF-8 text) framed as one complete text message."""
    n = len(payload)
    if n < 126:
        return bytes((_FIN_TEXT, n)) + payload
    if n < 1 << 16:
        return _LEN16.pack(_FIN_TEXT, 126, n) + payload
    return _LEN64.pack(_FIN_TEXT, 127, n) + payload
