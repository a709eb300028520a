"""The value kinds of configuration keys: each parses a TOML value or an environment string (``from_env``)
and says, in a few words, what it accepts (docs/configuration.md's type column).

A parser raises ``ValueError`` with the reason; :mod:`daemon.config` names the key and where it came from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Final

from protocol.errors import ProtocolError
from protocol.factors.base import DEFAULT_MAX_BARS
from protocol.series import SeriesId
from protocol.timeframes import parse_timeframe

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
HISTORY_SOURCES: Final = ("", "freqtrade", "ccxt")

Parser = Callable[[object, bool], Any]


def _as_bool(raw: object, from_env: bool) -> bool:
    if isinstance(raw, bool):
        return raw
    if from_env and isinstance(raw, str):
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise ValueError(f"expected a boolean (true/false, 1/0, yes/no, on/off), got {raw!r}")


def _as_int(raw: object, from_env: bool) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if from_env and isinstance(raw, str):
        try:
            return int(raw.strip())
        except ValueError:
            pass
    raise ValueError(f"expected an integer, got {raw!r}")


def _as_float(raw: object, from_env: bool) -> float:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    elif from_env and isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
    else:
        raise ValueError(f"expected a number, got {raw!r}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"expected a finite number, got {raw!r}")
    return value


def _as_str(raw: object, from_env: bool) -> str:
    if isinstance(raw, str):
        return raw
    raise ValueError(f"expected a string, got {raw!r}")


def _as_list(raw: object, from_env: bool) -> tuple[str, ...]:
    if from_env and isinstance(raw, str):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        return tuple(raw)
    raise ValueError(f"expected a list of strings, got {raw!r}")


def _bounded(parse: Callable[[object, bool], Any], low: float, what: str) -> Callable[[object, bool], Any]:
    def check(raw: object, from_env: bool) -> Any:
        value = parse(raw, from_env)
        if value < low:
            raise ValueError(f"expected {what}, got {value!r}")
        return value

    return check


def _as_port(raw: object, from_env: bool) -> int:
    value = _as_int(raw, from_env)
    if not 0 <= value <= 65535:
        raise ValueError(f"expected a TCP port 0..65535, got {value}")
    return value


def _as_url(raw: object, from_env: bool) -> str:
    value = _as_str(raw, from_env)
    if not value.startswith(("ws://", "wss://", "http://", "https://")):
        raise ValueError(f"expected a ws(s):// or http(s):// URL, got {value!r}")
    return value.rstrip("/")


def _as_series_list(raw: object, from_env: bool) -> tuple[str, ...]:
    values = _as_list(raw, from_env)
    for text in values:
        try:
            SeriesId.parse(text)
        except ProtocolError as e:
            raise ValueError(f"invalid series id {text!r}: {e}") from None
    return tuple(dict.fromkeys(values))  # de-duplicated, order kept


def _as_symbol_list(raw: object, from_env: bool) -> tuple[str, ...]:
    values = _as_list(raw, from_env)
    for text in values:
        try:
            SeriesId.parse(f"{text}:1m")
        except ProtocolError as e:
            raise ValueError(f"invalid symbol {text!r} (expected exchange:market:BASE/QUOTE): {e}") from None
    return tuple(dict.fromkeys(values))


def _as_market_quote_list(raw: object, from_env: bool) -> tuple[str, ...]:
    values = _as_list(raw, from_env)
    for text in values:
        parts = text.split(":")
        if len(parts) != 3 or parts[1] not in ("spot", "futures") or not parts[2].isalnum() or not parts[2].isupper():
            raise ValueError(f"invalid market {text!r} (expected exchange:spot|futures:QUOTE, e.g. binance:spot:USDT)")
    return tuple(dict.fromkeys(values))


def _as_timeframe(raw: object, from_env: bool) -> str:
    value = _as_str(raw, from_env)
    try:
        parse_timeframe(value)
    except ProtocolError as e:
        raise ValueError(str(e)) from None
    return value


def _as_timeframe_list(raw: object, from_env: bool) -> tuple[str, ...]:
    return tuple(_as_timeframe(x, False) for x in _as_list(raw, from_env))


def _as_history_source(raw: object, from_env: bool) -> str:
    value = _as_str(raw, from_env)
    if value not in HISTORY_SOURCES:
        raise ValueError(f"expected one of {', '.join(map(repr, HISTORY_SOURCES))}, got {value!r}")
    return value


CLUSTER_ROLES: Final = ("auto", "replica")
_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")  # NATS stream, bucket and subject tokens allow these


def _as_cluster_role(raw: object, from_env: bool) -> str:
    value = _as_str(raw, from_env).strip().lower()
    if value not in CLUSTER_ROLES:
        raise ValueError(f"expected one of {', '.join(CLUSTER_ROLES)}, got {raw!r}")
    return value


def _as_name(raw: object, from_env: bool) -> str:
    value = _as_str(raw, from_env)
    if not _NAME.fullmatch(value):
        raise ValueError(f"expected 1-64 letters, digits, '_' or '-', got {value!r}")
    return value


def _as_name_or_empty(raw: object, from_env: bool) -> str:
    value = _as_str(raw, from_env)
    return value and _as_name(value, from_env)


def _as_nats_url_list(raw: object, from_env: bool) -> tuple[str, ...]:
    values = _as_list(raw, from_env)
    for url in values:
        if not url.startswith(("nats://", "tls://")):
            raise ValueError(f"expected nats:// or tls:// URLs, got {url!r}")
    return values


# A pivot window w looks at 2w+1 candles, and the factor engine keeps DEFAULT_MAX_BARS of them per series.
MAX_PIVOT_WINDOW: Final = (DEFAULT_MAX_BARS - 1) // 2


def _as_pivot_window(raw: object, from_env: bool) -> int:
    value = _as_int(raw, from_env)
    if not 1 <= value <= MAX_PIVOT_WINDOW:
        raise ValueError(
            f"expected an integer 1..{MAX_PIVOT_WINDOW} (the factors keep {DEFAULT_MAX_BARS} candles), got {value}"
        )
    return value


LOG_LEVELS: Final = ("debug", "info", "warning", "error")


def _as_log_level(raw: object, from_env: bool) -> str:
    value = _as_str(raw, from_env).strip().lower()
    if value not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {raw!r}")
    return value


KINDS: Final[dict[str, tuple[Parser, str]]] = {
    "str": (_as_str, "string"),
    "url": (_as_url, "URL (ws://, wss://, http://, https://)"),
    "bool": (_as_bool, "boolean"),
    "port": (_as_port, "TCP port (0-65535; 0: any free port)"),
    "pos_int": (_bounded(_as_int, 1, "an integer >= 1"), "integer >= 1"),
    "pivot_window": (_as_pivot_window, f"integer 1..{MAX_PIVOT_WINDOW}"),
    "nonneg_int": (_bounded(_as_int, 0, "an integer >= 0"), "integer >= 0"),
    "pos_float": (_bounded(_as_float, 1e-9, "a number > 0"), "number > 0"),
    "nonneg_float": (_bounded(_as_float, 0, "a number >= 0"), "number >= 0"),
    "str_list": (_as_list, "list of strings"),
    "series_list": (_as_series_list, "list of series ids (exchange:market:BASE/QUOTE:timeframe)"),
    "symbol_list": (_as_symbol_list, "list of symbols (exchange:market:BASE/QUOTE)"),
    "market_quote_list": (_as_market_quote_list, "list of markets (exchange:spot|futures:QUOTE)"),
    "timeframe": (_as_timeframe, "timeframe (1m, 5m, 1h, 1d ...)"),
    "timeframe_list": (_as_timeframe_list, "list of timeframes"),
    "history_source": (_as_history_source, '"", "freqtrade" or "ccxt"'),
    "log_level": (_as_log_level, ", ".join(LOG_LEVELS)),
    "cluster_role": (_as_cluster_role, " or ".join(CLUSTER_ROLES)),
    "name": (_as_name, "name (1-64 of A-Z a-z 0-9 _ -)"),
    "name_or_empty": (_as_name_or_empty, "name (1-64 of A-Z a-z 0-9 _ -) or empty"),
    "nats_url_list": (_as_nats_url_list, "list of nats:// or tls:// URLs"),
}
"""Each kind's parser and what it accepts, in words."""


def toml_value(value: object) -> str:
    """A setting's value as TOML writes it (the shipped example, the generated docs, ``check-config --print``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(x) for x in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")
