"""The baseline every test's daemon starts from: the features the shipped defaults turn on, turned off.

The defaults serve (docs/configuration.md: a whitelist followed live, repairs, on-demand ingest, health); most tests
were written when every feature defaulted off and point no URL at the fake exchange, so each starts from this and
states the features it uses.
"""

from __future__ import annotations

import json
from typing import Final

FEATURES_OFF: Final[dict[str, bool | int | list[str]]] = {
    "whitelist": [],
    "enable_whitelist_ingest": False,
    "enable_ondemand_ingest": False,
    "ondemand_max_jobs": 0,
    "enable_market_gap_backfill": False,
    "enable_market_auto_tail_backfill": False,
    "enable_ccxt_backfill": False,
    "enable_ccxt_backfill_on_read": False,
    "enable_startup_kline_sync": False,
    "enable_derived_timeframes": False,
    "enable_kline_health": False,
    "enable_debug_api": False,
}


def _env_value(value: bool | int | list[str]) -> str:
    if isinstance(value, list):
        return ",".join(value)
    return str(int(value))  # bools as 1/0


OFF_ENV: Final = {f"KLINED_{key.upper()}": _env_value(value) for key, value in FEATURES_OFF.items()}
"""The baseline as ``KLINED_*`` variables: put it first, under the test's own."""


def off_toml(**values: object) -> str:
    """A config file: the baseline overlaid with ``values`` (for a daemon that reads a file, where the
    environment would win over the file's own keys)."""
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in {**FEATURES_OFF, **values}.items())
