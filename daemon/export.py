"""``klinectl export SERIES --format F --dir D``: a stored series as freqtrade's own data file, at the path
freqtrade (and klined's freqtrade import, ``data_file``) reads it from.

The daemon streams the candles over the control socket and klinectl writes the file; it does not take a
descriptor as ``klinectl backup`` does. An export is a layout (``<exchange>/`` and ``<exchange>/futures/``
directories) the client would have to create anyway, so the daemon still never opens a path outside its state
directory; the format's encoders (pyarrow, gzip) run in the operator's process, not beside the daemon's loop;
and the files are the operator's from the start.

Both ends hold one chunk at a time: the daemon reads ``CHUNK`` candles in a short read transaction (one long
one would keep LMDB from reusing pages while a slow client reads), and reads the next only once the socket has
taken them; klinectl appends each chunk to the file as it arrives. An export ends at the head the series had
when it began: candles appended meanwhile go to the next export.

Lines: ``{"event": "start", "series_id", "first_time", "last_time", "candle_count"}``, then per chunk
``{"event": "candles", "candles": [[time_s, open, high, low, close, volume], ...]}``, then ``{"event":
"done", "series_id", "candles", "first_time", "last_time"}``; or an ``error`` line, at any point.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
import trio

from daemon.history.freqtrade import file_path
from protocol.series import SeriesId

if TYPE_CHECKING:
    from daemon.app import Wiring
    from daemon.storage.eventlog import EventLog

CHUNK: Final = 50_000  # candles a line: ~3.5 MB of JSON, a row group of the parquet file


class ExportError(Exception):
    """An export that cannot be done; the message is one line the operator can act on."""


# -- the daemon's side ------------------------------------------------------------------------------------


async def stream_export(
    services: Wiring, series: SeriesId, since: object, until: object, send: Callable[[Any], Awaitable[None]]
) -> None:
    """Send the stored candles of ``series`` with ``since <= candle_time <= until`` (either bound optional)."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and (type(value) is not int or value < 0):
            raise ExportError(f"{name} must be a time in UTC seconds")
    eventlog = services.eventlog
    head = await trio.to_thread.run_sync(eventlog.head, series)
    if head is None:
        raise ExportError(f"no candles stored for {series}")
    first = max(head.first_time, since if isinstance(since, int) else 0)
    last = min(head.head_time, until if isinstance(until, int) else head.head_time)
    if (first, last) == (head.first_time, head.head_time):
        count = head.candle_count
    else:
        count = await trio.to_thread.run_sync(eventlog.count_between, series, first, last)
    if not count:
        raise ExportError(f"no candles of {series} stored between {first} and {last}")
    span = {"series_id": str(series), "first_time": first, "last_time": last}
    await send({"event": "start", **span, "candle_count": count})
    after, sent = first - 1, 0
    while after < last:
        line, n, after = await trio.to_thread.run_sync(_chunk_line, eventlog, series, after, last)
        if not n:
            break
        await send(line)  # returns once the socket has taken it: a slow client slows the reads
        sent += n
    await send({"event": "done", **span, "candles": sent})


def _chunk_line(eventlog: EventLog, series: SeriesId, after: int, last: int) -> tuple[bytes, int, int]:
    """The next chunk after ``after``, encoded here in the worker thread: (line, candles, last time)."""
    candles = eventlog.range(series, after, last, CHUNK)
    if not candles:
        return b"", 0, last
    line = orjson.dumps({"event": "candles", "candles": [c[:6] for c in candles]}) + b"\n"
    return line, len(candles), candles[-1].candle_time


# -- the client's side (klinectl) -------------------------------------------------------------------------


def export_series(
    socket_path: Path,
    series: SeriesId,
    fmt: str,
    datadir: Path,
    since: int | None,
    until: int | None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Ask the daemon for the candles and write freqtrade's file of ``series`` under ``datadir``; the daemon's
    last answer, with ``path`` when done. Nothing is left behind unless the export completes."""
    from daemon.history.freqtrade_write import FreqtradeWriter  # pyarrow: only for the command that needs it

    target = file_path(datadir, series, fmt)
    request = {"cmd": "export", "series_id": str(series), "since": since, "until": until}
    writer: FreqtradeWriter | None = None
    answer: dict[str, Any] = {}
    total = 0
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(socket_path))
            sock.sendall(orjson.dumps(request) + b"\n")
            with sock.makefile("rb") as lines:
                for line in lines:
                    answer = orjson.loads(line)
                    if answer.get("event") == "start":
                        writer, total = FreqtradeWriter(target, fmt), int(answer["candle_count"])
                    elif answer.get("event") == "candles" and writer is not None:
                        writer.write(answer["candles"])
                        if progress is not None:
                            progress({"done": writer.rows, "total": total})
                    else:
                        break
        if writer is not None and answer.get("event") == "done" and answer.get("candles") == writer.rows:
            writer.commit()
            writer = None
            return {**answer, "format": fmt, "path": str(target)}
    finally:
        if writer is not None:
            writer.abort()
    if not answer:
        raise ConnectionRefusedError("the daemon closed the connection without an answer")
    if answer.get("event") in ("start", "candles"):
        return {"event": "error", "code": "hung_up", "detail": "the daemon closed the connection before the end"}
    if answer.get("event") == "done":  # a count that does not add up: never a file that looks complete
        received = writer.rows if writer is not None else 0
        detail = f"{answer.get('candles')} candles sent, {received} received"
        return {"event": "error", "code": "short", "detail": detail}
    return answer
