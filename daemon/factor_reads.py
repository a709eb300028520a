"""The factor and overlay read models (docs/factors.md, "Reading them"): slices and draw deltas, from the
projection store. Blocking reads (each its own LMDB read transaction): callers run them in a thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from daemon.storage.eventlog import EventLog
from daemon.storage.projection_store import ProjectionStore
from protocol.factors.base import Factor
from protocol.factors.catalog import factor_catalog
from protocol.overlays import MOVING
from protocol.series import SeriesId

SCHEMA_VERSION: Final = 1
DEFAULT_WINDOW: Final = 2000
MAX_WINDOW: Final = 5000
PENDING_SCAN: Final = 50_000  # unapplied events a read looks through for its series (the lag is short)

# Which history list each stored event kind belongs to, per factor (docs/factors.md, "GET /api/factor/slices").
_HISTORY: Final[dict[str, tuple[str, str]]] = {
    "pivot.major": ("pivot", "major"),
    "pivot.minor": ("pivot", "minor"),
    "pen.confirmed": ("pen", "confirmed"),
    "zhongshu.dead": ("zhongshu", "dead"),
    "anchor.switch": ("anchor", "switches"),
    "sr.snapshot": ("sr", "snapshots"),
}
_EMPTY_HISTORY: Final[dict[str, tuple[str, ...]]] = {
    "pivot": ("major", "minor"),
    "pen": ("confirmed",),
    "zhongshu": ("dead",),
    "anchor": ("anchors", "switches"),
    "sr": ("snapshots",),
}


class NoDataError(Exception):
    """No candle of the series is stored (at or before the time asked for): HTTP 404 ``no_data``."""


class OutOfSyncError(Exception):
    """The projection has not reached the candle asked for (HTTP 409 ``ledger_out_of_sync:<which>``)."""

    def __init__(self, which: str) -> None:
        super().__init__(f"ledger_out_of_sync:{which}")
        self.which = which


@attrs.frozen
class ProjectionReader:
    """What the read models read: the log, the projection store, the factors in order, and the series whose
    projection failed (the projector's own live mapping, read not copied)."""

    log: EventLog
    pstore: ProjectionStore
    classes: Sequence[type[Factor]]
    failed: Mapping[str, str]


def catalog() -> dict[str, Any]:
    return factor_catalog()


def _aligned(reader: ProjectionReader, series: SeriesId, at_time: int | None) -> tuple[int, dict[str, Any]] | None:
    """The latest stored candle at or before ``at_time`` (the head without one), and the series' projection
    record once it is checked that the projections have reached that candle."""
    if at_time is None:
        head = reader.log.head(series)
        aligned = head.head_time if head else None
    else:
        candle = reader.log.at_or_before(series, at_time)
        aligned = candle[0] if candle else None
    if aligned is None:
        return None
    if str(series) in reader.failed:
        raise OutOfSyncError("factor")
    record = reader.pstore.series_record(str(series))
    if record is None or record.get("last_time") is None or record["last_time"] < aligned:
        raise OutOfSyncError("factor")
    if pending_through(reader, str(series), aligned):
        raise OutOfSyncError("factor")  # e.g. a backfilled or corrected candle behind the head, not yet applied
    if reader.pstore.checkpoint("overlay") < reader.pstore.checkpoint("factor"):
        raise OutOfSyncError("overlay")
    return aligned, record


def pending_through(reader: ProjectionReader, sid: str, candle_time: int) -> bool:
    """Whether the log holds an event of ``sid`` at or before ``candle_time`` that the projections have not
    applied yet. Later ones (the live candle being projected) cannot change what was visible by then."""
    checkpoint = reader.pstore.checkpoint()
    if checkpoint >= reader.log.last_seq():
        return False
    events = reader.log.events_since(checkpoint, PENDING_SCAN)
    return any(e.series_id == sid and e.candle.candle_time <= candle_time for e in events)


def slices(reader: ProjectionReader, series: SeriesId, at_time: int | None, window: int) -> dict[str, Any]:
    found = _aligned(reader, series, at_time)
    sid = str(series)
    if found is None:
        return {
            "schema_version": SCHEMA_VERSION,
            "series_id": sid,
            "at_time": None,
            "candle_id": None,
            "factors": [],
            "snapshots": {},
        }
    aligned, record = found
    num = int(record["num"])
    start = aligned - (window - 1) * series.timeframe.seconds
    history = _history(reader, num, start, aligned)
    heads = _heads_at(reader, num, aligned)
    snapshots = _snapshots(reader, sid, aligned, history, heads)
    present = [name for name, snap in snapshots.items() if any(snap["history"].values()) or any(snap["head"].values())]
    return {
        "schema_version": SCHEMA_VERSION,
        "series_id": sid,
        "at_time": aligned,
        "candle_id": f"{sid}:{aligned}",
        "factors": present,
        "snapshots": snapshots,
    }


def _history(reader: ProjectionReader, num: int, start: int, aligned: int) -> dict[str, dict[str, list[Any]]]:
    """The stored events of the window, sorted into each factor's history lists."""
    history: dict[str, dict[str, list[Any]]] = {
        name: {key: [] for key in keys} for name, keys in _EMPTY_HISTORY.items()
    }
    for ev in reader.pstore.events_between(num, start, aligned):
        where = _HISTORY.get(ev["kind"])
        if where is None:
            continue
        factor, key = where
        history[factor][key].append(ev["payload"])
        if ev["kind"] == "anchor.switch" and ev["payload"].get("new_anchor"):
            history["anchor"]["anchors"].append(ev["payload"]["new_anchor"])
    return history


def _heads_at(reader: ProjectionReader, num: int, aligned: int) -> dict[str, dict[str, Any]]:
    """Each factor's head in force at the aligned candle (factors without one are left out)."""
    heads: dict[str, dict[str, Any]] = {}
    for rank, cls in enumerate(reader.classes):
        head = reader.pstore.head_at(num, rank, aligned)
        if head is not None:
            heads[cls.name] = head
    alive = heads.get("zhongshu", {}).get("alive")
    if alive:  # stored without the fields that move every candle: the zone extends to the aligned candle
        heads["zhongshu"]["alive"] = [{**z, "end_time": aligned, "visible_time": aligned} for z in alive]
    return heads


def _snapshots(
    reader: ProjectionReader,
    sid: str,
    aligned: int,
    history: Mapping[str, dict[str, list[Any]]],
    heads: Mapping[str, dict[str, Any]],
) -> dict[str, Any]:
    """One snapshot per factor, in factor order; a factor without a head gets its empty one."""
    epoch = reader.pstore.epoch()
    candle_id = f"{sid}:{aligned}"
    snapshots: dict[str, Any] = {}
    for cls in reader.classes:
        name = cls.name
        head = heads.get(name) or {}
        if name == "zhongshu" and "alive" not in head:
            head = {"alive": []}
        if name == "anchor" and "current_anchor_ref" not in head:
            head = {"current_anchor_ref": None}
        snapshots[name] = {
            "schema_version": SCHEMA_VERSION,
            "history": history.get(name, {}),
            "head": head,
            "meta": {"series_id": sid, "epoch": epoch, "at_time": aligned, "candle_id": candle_id, "factor_name": name},
        }
    return snapshots


def _moved_to(reader: ProjectionReader, num: int, version: dict[str, Any], aligned: int) -> dict[str, Any]:
    """An alive zone's box as of ``aligned``: it reaches that candle, and its version is the pointer's when the
    pointer (moved once per candle) is visible by then."""
    definition = version["definition"]
    if definition is None:
        return version
    points = definition["points"]
    moved = {**definition, "points": [*points[:-1], {**points[-1], "time": aligned}]}
    version_id = version["version_id"]
    pointer = reader.pstore.pointer(num, version["instruction_id"])
    if pointer is not None and pointer[0] > version_id and pointer[1] <= aligned:
        version_id = pointer[0]
    return {
        **version,
        "version_id": version_id,
        "visible_time": max(version["visible_time"], aligned)
        if version_id != version["version_id"]
        else version["visible_time"],
        "definition": moved,
    }


def draw_delta(
    reader: ProjectionReader, series: SeriesId, cursor_version: int, window: int, at_time: int | None
) -> dict[str, Any]:
    found = _aligned(reader, series, at_time)
    sid = str(series)
    if found is None:
        return {
            "schema_version": SCHEMA_VERSION,
            "series_id": sid,
            "to_candle_id": None,
            "to_candle_time": None,
            "active_ids": [],
            "instruction_catalog_patch": [],
            "series_points": {},
            "next_cursor": {"version_id": cursor_version, "point_time": None},
        }
    aligned, record = found
    num = int(record["num"])
    start = aligned - (window - 1) * series.timeframe.seconds
    latest: dict[str, dict[str, Any]] = {}
    for version in reader.pstore.versions_between(num, start, aligned, 0):
        latest[version["instruction_id"]] = version  # ascending version ids: the last one wins
    for iid in MOVING & latest.keys():
        latest[iid] = _moved_to(reader, num, latest[iid], aligned)
    active = sorted(iid for iid, v in latest.items() if v["definition"] is not None)
    patch = sorted(
        (v for v in latest.values() if v["version_id"] > cursor_version and v["definition"] is not None),
        key=lambda v: int(v["version_id"]),
    )
    # At the head the record knows the newest version; further back, the versions visible by then are read.
    at_head = aligned >= record["last_time"]
    top = int(record["max_version"]) if at_head else reader.pstore.max_version(num, aligned)
    return {
        "schema_version": SCHEMA_VERSION,
        "series_id": sid,
        "to_candle_id": f"{sid}:{aligned}",
        "to_candle_time": aligned,
        "active_ids": active,
        "instruction_catalog_patch": patch,
        "series_points": {},
        "next_cursor": {"version_id": max(cursor_version, top), "point_time": None},
    }
