"""The operator's control socket (unix, mode 0600, peers of another uid refused via SO_PEERCRED): one JSON
request line in, JSON lines out. A peer's failure (garbage, a reset, silence past
``control_request_timeout_s``) ends its own connection and nothing else.

Requests (``cmd``): ``version``, ``status``, ``series``, ``health``, ``pin``/``unpin`` (``series_id``),
``backfill`` (``series_id``, ``since``, ``until``), ``backup`` (the destination file's descriptor passed
beside the request with SCM_RIGHTS: the client owns the file), ``top_markets`` (``market``,
``quote_asset``, ``limit``), ``rebuild``, ``export`` (``series_id``, ``since``, ``until``: the stored candles
in chunks, for klinectl to write as freqtrade's file; see ``daemon.export``). Answers end with ``{"event":
"done", ...}`` or ``{"event": "error", "code", "detail"}``; a backfill sends ``{"event": "progress", ...}`` every
half second until then.
"""

from __future__ import annotations

import array
import contextlib
import functools
import os
import socket
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
import structlog
import trio

from daemon import __version__
from daemon.backup import BackupError, write_backup
from daemon.export import ExportError, stream_export
from daemon.health import health_views, upstream_health
from daemon.status import stored_status
from daemon.top_markets import TopMarketsError
from protocol.errors import ProtocolError
from protocol.health import lag_seconds
from protocol.series import SeriesId

if TYPE_CHECKING:
    from daemon.app import Wiring

log = structlog.get_logger(__name__)

PROGRESS_EVERY_S: Final = 0.5
MAX_REQUEST: Final = 64 * 1024
MAX_FDS: Final = 4  # descriptors taken beside one request; a peer's extra ones are closed
FD_SIZE: Final = array.array("i").itemsize


async def serve_control(
    services: Wiring, path: Path, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    await trio.to_thread.run_sync(_prepare, path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    os.chmod(path, 0o600)  # operators only: it can start backfills
    sock.listen(128)  # a burst of operators' scripts (or hostile peers) waits in the queue, not refused
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


def peer_uid(stream: trio.abc.Stream) -> int | None:
    sock = getattr(stream, "socket", None)
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return int(uid)


async def _serve_one(services: Wiring, stream: trio.SocketStream) -> None:
    """One operator connection. Whatever its peer does (garbage, a reset, a half-close, silence) ends this
    connection only: nothing escapes into the daemon's nursery, and an ordinary disconnect logs no traceback."""
    fds: list[int] = []
    try:
        async with stream:
            await _converse(services, stream, fds)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
        log.debug("control_peer_gone", error=repr(e))  # the operator pressed Ctrl-C or the peer reset
    except Exception as e:  # a defect in a handler: that request fails, the daemon carries on
        log.error("control_request_failed", error=repr(e), exc_info=True)
    finally:
        close_unkept(fds)


def close_unkept(fds: list[int]) -> None:
    """Close the descriptors a peer passed that no handler took (a handler pops the one it keeps)."""
    while fds:
        with contextlib.suppress(OSError):
            os.close(fds.pop())


async def _converse(services: Wiring, stream: trio.SocketStream, fds: list[int]) -> None:
    async def send(obj: dict[str, Any] | bytes) -> None:
        """One answer line; ``bytes`` are a line encoded already (off the loop, as an export's chunks are)."""
        close_unkept(fds)  # before the peer hears back: once it has the answer, the daemon holds none of them
        await stream.send_all(obj if isinstance(obj, bytes) else orjson.dumps(obj) + b"\n")

    uid = peer_uid(stream)
    if uid is not None and uid not in (os.getuid(), 0):
        log.warning("control_peer_refused", uid=uid)
        await send({"event": "error", "code": "forbidden", "detail": f"uid {uid} may not control this daemon"})
        return
    try:
        with trio.fail_after(services.settings.control_request_timeout_s):
            request = await _read_request(stream.socket, fds)
    except trio.TooSlowError:
        log.info("control_request_timeout", limit_s=services.settings.control_request_timeout_s)
        await send({"event": "error", "code": "timeout", "detail": "no whole request line in time"})
        return
    except BadControlRequestError as e:
        await send({"event": "error", "code": "bad_request", "detail": str(e)})
        return
    try:
        await _handle(services, request, fds, send)
    except BadControlRequestError as e:
        await send({"event": "error", "code": "bad_request", "detail": str(e)})


class BadControlRequestError(Exception):
    pass


async def _read_request(sock: trio.socket.SocketType, fds: list[int]) -> dict[str, Any]:
    """The request line; descriptors sent beside it (SCM_RIGHTS, e.g. ``klinectl backup``'s file) go to ``fds``."""
    buffer = b""
    while b"\n" not in buffer:
        chunk, ancillary, _flags, _addr = await sock.recvmsg(4096, socket.CMSG_SPACE(MAX_FDS * FD_SIZE))
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(data) - len(data) % FD_SIZE
                fds.extend(array.array("i", data[:usable]))
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


async def _handle(services: Wiring, request: dict[str, Any], fds: list[int], send: Any) -> None:
    cmd = request.get("cmd")
    if cmd == "version":
        await send({"event": "done", "version": __version__})
    elif cmd == "status":
        await send({"event": "done", **await _status(services)})
    elif cmd == "series":
        await send({"event": "done", "series": await _series_rows(services)})
    elif cmd == "health":
        now = services.clock.now_s()
        await send({"event": "done", "now_time": now, "series": await health_views(services, now)})
    elif cmd in ("pin", "unpin"):
        series = _series(request)
        (services.pins.pin if cmd == "pin" else services.pins.unpin)(series)
        services.apply_whitelist()
        log.info(f"series_{cmd}ned", series_id=str(series))
        await send({"event": "done", "series_id": str(series), "whitelist": [str(s) for s in services.whitelist()]})
    elif cmd == "backfill":
        await _backfill(services, request, send)
    elif cmd == "backup":
        if len(fds) != 1:
            raise BadControlRequestError("backup needs its destination file passed beside the request (SCM_RIGHTS)")
        fd = fds.pop()
        try:
            summary = await write_backup(services, fd)  # into the client's file: no path the daemon must write
        except BackupError as e:
            raise BadControlRequestError(str(e)) from None
        finally:
            os.close(fd)
        await send({"event": "done", **summary})
    elif cmd == "top_markets":
        limit = request.get("limit", 20)
        if type(limit) is not int or not 1 <= limit <= 1000:
            raise BadControlRequestError("limit must be an integer 1..1000")
        market, quote = str(request.get("market", "spot")), str(request.get("quote_asset", "USDT"))
        try:
            data = await services.top_markets.get("binance", market, quote, limit, False)
        except TopMarketsError as e:
            await send({"event": "error", "code": e.code, "detail": e.detail})
            return
        await send({"event": "done", **data})
    elif cmd == "rebuild":
        await _rebuild(services, request, send)
    elif cmd == "cluster":
        await send({"event": "done", **cluster_view(services)})
    elif cmd == "export":
        try:
            await stream_export(services, _series(request), request.get("since"), request.get("until"), send)
        except ExportError as e:
            raise BadControlRequestError(str(e)) from None
    else:
        raise BadControlRequestError(f"unknown command: {cmd!r}")


def _series(request: dict[str, Any]) -> SeriesId:
    try:
        return SeriesId.parse(request.get("series_id"))
    except ProtocolError as e:
        raise BadControlRequestError(f"invalid series_id: {e}") from None


def cluster_view(services: Wiring) -> dict[str, Any]:
    """``klinectl cluster``: every node with a live heartbeat, as this node last read them."""
    node = services.cluster
    if node is None:
        return {"enabled": False}
    here = node.describe()
    entries = {**node.link.registry.nodes, node.node: {**here, "node": node.node, "age_s": 0.0}}
    tip = max([here["stream_seq"], *(e.get("stream_seq", 0) for e in entries.values())])
    rows = [{**e, "lag_events": max(0, tip - int(e.get("applied_seq", 0)))} for _, e in sorted(entries.items())]
    return {
        "enabled": True,
        "cluster": services.settings.cluster_name,
        "node": node.node,
        "writer": node.writer_name(),
        "stream_seq": tip,
        "nodes": rows,
    }


async def _status(services: Wiring) -> dict[str, Any]:
    live = services.live
    sup = live.supervisor.statistics() if live else {}
    log_stats = (await stored_status(services)).log
    data_file = services.settings.eventlog_path / "data.mdb"
    size = await trio.to_thread.run_sync(lambda: data_file.stat().st_size if data_file.exists() else 0)
    return {
        "version": __version__,
        "uptime_s": round(time.time() - services.started_at, 1),
        "series_stored": log_stats["series"],
        "last_seq": log_stats["last_seq"],
        "lmdb_bytes": size,
        "pinned": sup.get("pinned", 0),
        "ondemand": sup.get("ondemand", 0),
        "actors_running": len(live.actors) if live else 0,
        "connections": services.hub.connection_count,
        "subscriptions": services.hub.stats.subscriptions,
        "whitelist": [str(s) for s in services.whitelist()],
        "upstream": upstream_health(services),
        "cluster_role": services.cluster.role if services.cluster is not None else "standalone",
    }


async def _series_rows(services: Wiring) -> list[dict[str, Any]]:
    """Every active series (what runs it, its lag), then every other stored one; each with what the log
    holds of it (first and last candle time, count), as freqtrade's ``list-data`` shows its files."""
    now = services.clock.now_s()
    heads = (await stored_status(services)).heads
    live = services.live
    jobs = {j["series_id"]: j for j in (live.supervisor.jobs() if live else [])}
    rows = []
    for series in services.active_series():
        upstream = str(live.upstream_series(series)) if live else str(series)
        job = jobs.get(upstream, {})
        head = heads.pop(str(series), None)
        head_time = head.head_time if head else None
        rows.append(
            {
                "series_id": str(series),
                "active": True,
                "source": job.get("source", "stored"),
                "refcount": job.get("refcount"),
                "running": job.get("running", False),
                "crashes": job.get("crashes", 0),
                "first_time": head.first_time if head else None,
                "head_time": head_time,
                "candle_count": head.candle_count if head else 0,
                "lag_seconds": lag_seconds(series, now, head_time),
                "subscribers": services.hub.subscriber_count(series),
            }
        )
    for series_id, head in sorted(heads.items()):  # stored, not followed now: no source, no lag
        rows.append(
            {
                "series_id": series_id,
                "active": False,
                "source": None,
                "refcount": None,
                "running": False,
                "crashes": 0,
                "first_time": head.first_time,
                "head_time": head.head_time,
                "candle_count": head.candle_count,
                "lag_seconds": None,
                "subscribers": 0,
            }
        )
    return rows


async def _backfill(services: Wiring, request: dict[str, Any], send: Any) -> None:
    series = _series(request)
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


async def _rebuild(services: Wiring, request: dict[str, Any], send: Any) -> None:
    """Rebuild factor/overlay projections from the log (one series or ``all``), with progress."""
    projector = services.projector
    if request.get("all"):
        targets: list[SeriesId] | None = None
    else:
        targets = [_series(request)]
        if str(targets[0]) not in services.eventlog.series_ids():  # in memory: no LMDB read
            raise BadControlRequestError(f"no candles stored for {targets[0]}")
    if projector.progress is not None:
        raise BadControlRequestError("a rebuild is already running")
    done = trio.Event()
    outcome: dict[str, Any] = {}

    async def run() -> None:
        try:
            outcome["candles"] = await projector.rebuild(targets, reason="operator")
        except Exception as e:  # reported to the operator, the daemon carries on
            log.exception("rebuild_failed", error=repr(e))
            outcome["error"] = repr(e)
        finally:
            done.set()

    assert services.history.nursery is not None
    services.history.nursery.start_soon(run)  # a daemon task: it survives the operator's client going away
    while not done.is_set():
        with trio.move_on_after(PROGRESS_EVERY_S):
            await done.wait()
        progress = projector.progress
        if progress is not None:
            await send(
                {"event": "progress", "series_id": progress.series_id, "done": progress.done, "total": progress.total}
            )
    if "error" in outcome:
        await send({"event": "error", "code": "rebuild_failed", "detail": outcome["error"]})
    else:
        series = "all" if targets is None else str(targets[0])
        checkpoint = services.projections.checkpoint()  # kept in memory by the store
        await send({"event": "done", "series": series, "candles": outcome["candles"], "checkpoint": checkpoint})
