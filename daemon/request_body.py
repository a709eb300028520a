"""A write's request body, read bounded in size and in time, and drained before a refusal.

Starlette reads a body whole, however large and however slowly it arrives. A write reads it here instead:
at most ``limit`` bytes, all of it within ``within_s``, else the write is refused and the connection closed.

A refusal answered while the body is still unread leaves a connection neither side can reuse: hypercorn
must close it, but a client that has sent its whole body keeps it pooled and finds it dead on its next
request ("server disconnected without sending a response"). So a refused write still reads and drops a
body that fits the limit, and otherwise its answer says ``Connection: close``.
"""

from __future__ import annotations

from typing import Final

import trio
from starlette.requests import ClientDisconnect, Request

MAX_WRITE_BODY: Final = 8 * 1024 * 1024  # a full debug batch (20 000 candles) is ~3 MB of JSON
CLOSE: Final = {"Connection": "close"}


class BodyRefusedError(Exception):
    """The body broke a bound; ``status``/``code``/``detail`` describe it, and the connection must close."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def _declared_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    return int(raw) if raw is not None and raw.isdigit() else None


async def read_body(request: Request, *, limit: int = MAX_WRITE_BODY, within_s: float) -> bytes:
    """The whole body, or ``BodyRefusedError`` (413 over ``limit``, 408 slower than ``within_s``)."""
    too_large = BodyRefusedError(413, "payload_too_large", f"a write's body is at most {limit} bytes")
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    with trio.move_on_after(within_s):
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
        except ClientDisconnect:
            raise BodyRefusedError(400, "bad_request", "the client went away before its body was whole") from None
        return b"".join(chunks)
    raise BodyRefusedError(408, "request_timeout", f"the body did not arrive within {within_s:g} s")


async def drain_body(request: Request, *, limit: int = MAX_WRITE_BODY, within_s: float) -> bool:
    """Read and drop the body; True when it was whole, so the connection stays usable after the answer."""
    try:
        await read_body(request, limit=limit, within_s=within_s)
    except BodyRefusedError:
        return False
    return True
