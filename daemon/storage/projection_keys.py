"""Key layouts and record codecs of the projection store's sub-databases.

Keys are big-endian so byte order is numeric order; ``num`` is the store's own u32 per series:
- ``meta``:    checkpoints (``checkpoint:factor``, ``checkpoint:overlay``: last applied log seq),
               fingerprints, the global overlay version counter, the rebuild epoch
- ``series``:  series id -> (num, applied_seq, last_time, max_version), packed (written per batch per series)
- ``fev``:     (num, visible_time, factor rank, event_key) -> JSON factor event
- ``heads``:   (num, factor rank, candle_time) -> JSON head of one factor, written only when it changes
- ``dv``:      (num, visible_time, version_id) -> JSON overlay version (reads scan a time window);
               ``dlast`` (num, instruction_id) -> its latest version_id, visible_time and definition JSON
- ``snap``:    (num, last_time) -> pickled engine state, the newest two per series (rewinds start there)
"""

from __future__ import annotations

import struct
from typing import Any, Final

U32: Final = struct.Struct(">I")
U64: Final = struct.Struct(">Q")
NUM_TIME: Final = struct.Struct(">IQ")
NUM_TIME_RANK: Final = struct.Struct(">IQB")
NUM_RANK: Final = struct.Struct(">IB")
NUM_RANK_TIME: Final = struct.Struct(">IBQ")
MAX_RANK: Final = 32  # factors per engine (ranks in keys)
NUM_TIME_VERSION: Final = struct.Struct(">IQQ")
VERSION_TIME: Final = struct.Struct(">QQ")  # the head of a ``dlast`` value; the definition JSON follows
SERIES_REC: Final = struct.Struct(">IQqQ")  # num, applied_seq, last_time (-1: none), max_version


def encode_series_record(record: dict[str, Any]) -> bytes:
    last_time = record["last_time"]
    return SERIES_REC.pack(
        record["num"], record["applied_seq"], -1 if last_time is None else last_time, record["max_version"]
    )


def decode_series_record(raw: bytes) -> dict[str, Any]:
    num, applied_seq, last_time, max_version = SERIES_REC.unpack(raw)
    return {
        "num": num,
        "applied_seq": applied_seq,
        "last_time": None if last_time < 0 else last_time,
        "max_version": max_version,
    }


def encode_version(version: int, iid: bytes, kind: str, visible_time: int, definition: bytes) -> bytes:
    """A ``dv`` record, formatted directly (ids and kinds are plain ASCII names: no JSON escaping needed)."""
    return b'{"version_id":%d,"instruction_id":"%b","kind":"%b","visible_time":%d,"definition":%b}' % (
        version,
        iid,
        kind.encode(),
        visible_time,
        definition,
    )
