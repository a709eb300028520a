"""The operator's control socket (unix, owner-only): one JSON request line in, JSON lines out.

Requests: ``{"cmd": "version"}``, ``{"cmd": "health"}``, ``{"cmd": "backfill", "series_id": S, "since": T,
"until": T|null}``. A backfill answers with ``{"event": "progress", ...}`` lines every half second while
it runs, then ``{"event": "done", ...}``; an error is ``{"event": "error", "code", "detail"}``.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
import structlog
import trio

from daemon import __version__
from daemon.health import series_health_view
from protocol.errors import ProtocolError
from protocol.series import SeriesId

if TYPE_CHECKING:
    from daemon.app import Services

log = structlog.get_logger(__name__)

PROGRESS_EVERY_S: Final = 0.5
MAX_REQUEST: Final = 64 * 1024


async def serve_control(
    services: Services, path: Path, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    await trio.to_thread.run_sync(_prepare, path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    os.chmod(path, 0o600)  # operators only: it can start backfills
    sock.listen(16)
    listener = trio.SocketListener(sock)
    log.info("control_socket_listening", path=str(path))
    try:
        async with listener:
            task_status.started()
            await trio.serve_listeners(functools.partial(_serve_one, services), [listener])
    finally:
        path.unlink(missing_ok=True)  # noqa: ASYNC240 - shutting down: one unlink, nothing left to serve


def _prepare(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        path.unlink()  # a stale socket of a previous run (the event log's lock guards the data dir)


async def _serve_one(services: Services, stream: trio.abc.Stream) -> None:
    async def send(obj: dict[str, Any]) -> None:
        await stream.send_all(orjson.dumps(obj) + b"\n")

    async with stream:
        try:
            request = await _read_line(stream)
            await _handle(services, request, send)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the operator pressed Ctrl-C: the backfill keeps running in the daemon
        except BadControlRequestError as e:
            await send({"event": "error", "code": "bad_request", "detail": str(e)})


class BadControlRequestError(Exception):
    pass


async def _read_line(stream: trio.abc.Stream) -> dict[str, Any]:
    buffer = b""
    while b"\n" not in buffer:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        buffer += chunk
        if len(buffer) > MAX_REQUEST:
            raise BadControlRequestError("request too large")
    try:
        request = orjson.loads(buffer.split(b"\n", 1)[0])
    except orjson.JSONDecodeError:
        raise BadControlRequestError("invalid json") from None
    if not isinstance(request, dict):
        raise BadControlRequestError("request must be a JSON object")
    return request


async def _handle(services: Services, request: dict[str, Any], send: Any) -> None:
    cmd = request.get("cmd")
    if cmd == "version":
        await send({"event": "done", "version": __version__})
    elif cmd == "health":
        now = services.clock.now_s()
        heads = await services.store.heads()
        live = services.live
        series = dict.fromkeys(
            [*services.settings.whitelist_series, *services.hub.active_series(), *(live.actors if live else ())]
        )
        rows = [series_health_view(s, now, heads.get(str(s)), services.history.progress.view(s)) for s in series]
        await send({"event": "done", "now_time": now, "series": rows})
    elif cmd == "backfill":
        await _backfill(services, request, send)
    else:
        raise BadControlRequestError(f"unknown command: {cmd!r}")


async def _backfill(services: Services, request: dict[str, Any], send: Any) -> None:
    try:
        series = SeriesId.parse(request.get("series_id"))
    except ProtocolError as e:
        raise BadControlRequestError(f"invalid series_id: {e}") from None
    tf = series.timeframe
    since, until = request.get("since"), request.get("until")
    if type(since) is not int or since < 0:
        raise BadControlRequestError("since must be a time in UTC seconds")
    last_closed = tf.last_closed_open(services.clock.now_s())
    if until is None:
        until = last_closed
    if type(until) is not int or until < since:
        raise BadControlRequestError("until must be a time in UTC seconds, not before since")
    first, last = tf.floor(since) if tf.is_aligned(since) else tf.next_open(since), min(tf.floor(until), last_closed)
    history = services.history
    done = trio.Event()
    outcome: dict[str, Any] = {}

    async def run() -> None:
        try:
            result = await history.repair_range(series, first, last, reason="operator_backfill", exchange=True)
            outcome.update(filled=result.filled, still_missing=result.still_missing, total=result.target)
        except Exception as e:  # reported to the operator, the daemon carries on
            outcome["error"] = repr(e)
        finally:
            done.set()

    assert history.nursery is not None
    history.nursery.start_soon(run)  # the daemon's task: it survives the operator's client going away
    while not done.is_set():
        with trio.move_on_after(PROGRESS_EVERY_S):
            await done.wait()
        view = history.progress.view(series)
        await send({"event": "progress", "series_id": str(series), **view})
    if "error" in outcome:
        await send({"event": "error", "code": "backfill_failed", "detail": outcome["error"]})
    else:
        await send({"event": "done", "series_id": str(series), "first": first, "last": last, **outcome})
