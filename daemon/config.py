"""Configuration: a TOML file plus ``KLINED_<KEY>`` environment variables, environment winning (SPEC §5).

Every key is declared once in :class:`Settings`; an unknown key (in the file or the environment) or a bad
value raises :class:`ConfigError` whose message names the key, and start-up stops on it.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from protocol.errors import ProtocolError
from protocol.series import SeriesId
from protocol.timeframes import can_derive, parse_timeframe

ENV_PREFIX: Final = "KLINED_"
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
HISTORY_SOURCES: Final = ("", "freqtrade", "ccxt")


class ConfigError(ValueError):
    """A configuration problem; the message is one line that names the key."""


def _kind(kind: str) -> dict[str, str]:
    return {"kind": kind}


@attrs.frozen(kw_only=True)
class Settings:
    """Every configuration key with its SPEC default. Feature flags default off."""

    data_dir: str = attrs.field(default="./var", metadata=_kind("str"))
    http_host: str = attrs.field(default="127.0.0.1", metadata=_kind("str"))
    http_port: int = attrs.field(default=8710, metadata=_kind("port"))
    control_socket: str = attrs.field(default="", metadata=_kind("str"))  # "" -> <data_dir>/klined.sock
    whitelist: tuple[str, ...] = attrs.field(default=(), metadata=_kind("series_list"))
    binance_spot_ws_url: str = attrs.field(default="wss://stream.binance.com:9443", metadata=_kind("url"))
    binance_spot_rest_url: str = attrs.field(default="https://api.binance.com", metadata=_kind("url"))
    # Binance split its USD-M futures endpoints in 2026: market streams live under /market.
    binance_futures_ws_url: str = attrs.field(default="wss://fstream.binance.com/market", metadata=_kind("url"))
    binance_futures_rest_url: str = attrs.field(default="https://fapi.binance.com", metadata=_kind("url"))
    enable_whitelist_ingest: bool = attrs.field(default=False, metadata=_kind("bool"))
    enable_ondemand_ingest: bool = attrs.field(default=False, metadata=_kind("bool"))
    ondemand_max_jobs: int = attrs.field(default=0, metadata=_kind("nonneg_int"))
    ondemand_idle_ttl_s: float = attrs.field(default=60.0, metadata=_kind("nonneg_float"))
    enable_market_gap_backfill: bool = attrs.field(default=False, metadata=_kind("bool"))
    enable_market_auto_tail_backfill: bool = attrs.field(default=False, metadata=_kind("bool"))
    market_auto_tail_backfill_max_candles: int = attrs.field(default=5000, metadata=_kind("pos_int"))
    enable_ccxt_backfill: bool = attrs.field(default=False, metadata=_kind("bool"))
    enable_ccxt_backfill_on_read: bool = attrs.field(default=False, metadata=_kind("bool"))
    enable_startup_kline_sync: bool = attrs.field(default=False, metadata=_kind("bool"))
    startup_kline_sync_target_candles: int = attrs.field(default=2000, metadata=_kind("pos_int"))
    enable_derived_timeframes: bool = attrs.field(default=False, metadata=_kind("bool"))
    derived_base_timeframe: str = attrs.field(default="1m", metadata=_kind("timeframe"))
    derived_timeframes: tuple[str, ...] = attrs.field(
        default=("5m", "15m", "1h", "4h", "1d"), metadata=_kind("timeframe_list")
    )
    freqtrade_data_dir: str = attrs.field(default="", metadata=_kind("str"))
    market_history_source: str = attrs.field(default="", metadata=_kind("history_source"))
    # Beyond SPEC's 200 (the flush size of a writer that waited for more): with group commit it only caps one
    # commit, and a minute-close burst split into commits of 200 pays each commit's fixed cost in turn.
    binance_ws_batch_max: int = attrs.field(default=1000, metadata=_kind("pos_int"))
    # Accepted for SPEC's contract, but nothing waits on it: the writer's group commit never holds a candle
    # back for more to arrive (docs/design.md, "Live ingest").
    binance_ws_flush_s: float = attrs.field(default=0.5, metadata=_kind("pos_float"))
    # Beyond SPEC: the longest wait between upstream reconnect attempts (full jitter below it, from 1 s).
    binance_ws_reconnect_max_s: float = attrs.field(default=60.0, metadata=_kind("pos_float"))
    market_forming_min_interval_ms: int = attrs.field(default=250, metadata=_kind("nonneg_int"))
    # Beyond SPEC: how long after a period's end a missing final kline is asked of the exchange (REST).
    market_close_grace_s: float = attrs.field(default=3.0, metadata=_kind("pos_float"))
    market_ws_catchup_limit: int = attrs.field(default=5000, metadata=_kind("pos_int"))
    # Beyond SPEC: the WebSocket endpoint's limits (refusals are explicit `capacity` / `bad_request` errors).
    market_ws_max_connections: int = attrs.field(default=4096, metadata=_kind("pos_int"))
    market_ws_max_subscriptions: int = attrs.field(default=1000, metadata=_kind("pos_int"))
    market_ws_max_message_bytes: int = attrs.field(default=65536, metadata=_kind("pos_int"))
    market_ws_queue_frames: int = attrs.field(default=4096, metadata=_kind("pos_int"))
    http_cors_origins: tuple[str, ...] = attrs.field(default=(), metadata=_kind("str_list"))
    # Beyond SPEC: writes (POST .../ingest/...) need `Authorization: Bearer <token>` when a token is set;
    # without one they are taken from loopback peers only. `ingest_token_file` suits systemd's LoadCredential=.
    ingest_token: str = attrs.field(default="", metadata=_kind("str"))
    ingest_token_file: str = attrs.field(default="", metadata=_kind("str"))
    # Beyond SPEC: an HTTP/WebSocket connection that has not sent a whole request head this long after it
    # opened (or after its last answer) is closed: idle peers and header tricklers are cut.
    http_idle_timeout_s: float = attrs.field(default=75.0, metadata=_kind("pos_float"))
    # Beyond SPEC: an HTTP/WebSocket peer that acknowledges none of the data sent to it this long (it stopped
    # reading, or vanished) is cut, as nginx's send_timeout; a slow reader that makes progress is not.
    http_send_timeout_s: float = attrs.field(default=60.0, metadata=_kind("pos_float"))
    # Beyond SPEC: a control-socket peer must send its whole request line within this.
    control_request_timeout_s: float = attrs.field(default=10.0, metadata=_kind("pos_float"))
    log_level: str = attrs.field(default="info", metadata=_kind("log_level"))
    # Symbols whose candles are built from their trades (aggTrade) instead of kline streams, e.g.
    # "binance:spot:BTC/USDT": every whitelisted timeframe of it (and the derived ones) comes from one book.
    trade_sources: tuple[str, ...] = attrs.field(default=(), metadata=_kind("symbol_list"))
    # Markets watched for new listings ("binance:spot:USDT"): a symbol that starts trading there is followed
    # from its trades at once (a seed candle first), and kept across restarts.
    trade_discover: tuple[str, ...] = attrs.field(default=(), metadata=_kind("market_quote_list"))
    trade_discover_interval_s: float = attrs.field(default=60.0, metadata=_kind("pos_float"))
    enable_debug_api: bool = attrs.field(default=False, metadata=_kind("bool"))
    enable_kline_health: bool = attrs.field(default=False, metadata=_kind("bool"))
    pivot_window_major: int = attrs.field(default=50, metadata=_kind("pos_int"))
    pivot_window_minor: int = attrs.field(default=5, metadata=_kind("pos_int"))
    # Series whose factor state stays in memory (~80 KB each); the least recently used beyond it are
    # snapshotted and dropped, and reload from their snapshot on their next candle. 0: no limit.
    # The LMDB event log's initial map; it doubles whenever full (a tiny one proves growth under load).
    lmdb_map_size_mb: int = attrs.field(default=1024, metadata=_kind("pos_int"))
    # Tests and demos only: follow a fake exchange whose clock runs this many times as fast.
    dev_clock_speed: float = attrs.field(default=1.0, metadata=_kind("pos_float"))
    projection_max_series_in_memory: int = attrs.field(default=4000, metadata=_kind("nonneg_int"))
    # Cluster mode (docs/design.md): none of these matter while cluster_nats_urls is empty (standalone).
    # The NATS servers of the cluster's JetStream, e.g. "nats://10.0.0.1:4222,nats://10.0.0.2:4222".
    cluster_nats_urls: tuple[str, ...] = attrs.field(default=(), metadata=_kind("nats_url_list"))
    # Names the stream, the lease bucket and their subjects: several klined clusters can share one NATS.
    cluster_name: str = attrs.field(default="klined", metadata=_kind("name"))
    # This node's name in the lease, health and `klinectl cluster`; "" takes the host name.
    node_name: str = attrs.field(default="", metadata=_kind("name_or_empty"))
    # "auto" competes for the writer lease; "replica" never writes (a read-only node).
    cluster_role: str = attrs.field(default="auto", metadata=_kind("cluster_role"))
    # A writer that stops renewing loses the lease this long after its last renewal: a failover takes about
    # this plus catch-up. It acts on it for 60 % of this after each renewal, renewed every 25 %, so NATS may
    # stall for up to ~35 % of it without a handover.
    cluster_lease_ttl_s: float = attrs.field(default=5.0, metadata=_kind("pos_float"))
    # How long the stream keeps events (0: forever). A replica further behind is seeded from a backup.
    cluster_stream_max_age_s: float = attrs.field(default=0.0, metadata=_kind("nonneg_float"))
    # Copies NATS keeps of the stream and buckets (RAFT): 3 survives one server down; at most the servers.
    cluster_replicas: int = attrs.field(default=3, metadata=_kind("pos_int"))

    @property
    def cluster(self) -> bool:
        """Whether this daemon is a node of a cluster (else standalone, the embedded default)."""
        return bool(self.cluster_nats_urls)

    @property
    def cluster_node(self) -> str:
        """This node's name: ``node_name``, else the host's."""
        return self.node_name or socket.gethostname()

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def eventlog_path(self) -> Path:
        return self.data_path / "eventlog"

    @property
    def control_socket_path(self) -> Path:
        return Path(self.control_socket).expanduser() if self.control_socket else self.data_path / "klined.sock"

    @property
    def whitelist_series(self) -> tuple[SeriesId, ...]:
        return tuple(SeriesId.parse(s) for s in self.whitelist)


KEYS: Final = tuple(f.name for f in attrs.fields(Settings))


# -- value parsers: (raw, from_env) -> value; raise ValueError with the reason ----------------------


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


LOG_LEVELS: Final = ("debug", "info", "warning", "error")


def _as_log_level(raw: object, from_env: bool) -> str:
    value = _as_str(raw, from_env).strip().lower()
    if value not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {raw!r}")
    return value


_PARSERS: Final[dict[str, Callable[[object, bool], Any]]] = {
    "str": _as_str,
    "url": _as_url,
    "bool": _as_bool,
    "port": _as_port,
    "pos_int": _bounded(_as_int, 1, "an integer >= 1"),
    "nonneg_int": _bounded(_as_int, 0, "an integer >= 0"),
    "pos_float": _bounded(_as_float, 1e-9, "a number > 0"),
    "nonneg_float": _bounded(_as_float, 0, "a number >= 0"),
    "str_list": _as_list,
    "series_list": _as_series_list,
    "symbol_list": _as_symbol_list,
    "market_quote_list": _as_market_quote_list,
    "timeframe": _as_timeframe,
    "timeframe_list": _as_timeframe_list,
    "history_source": _as_history_source,
    "log_level": _as_log_level,
    "cluster_role": _as_cluster_role,
    "name": _as_name,
    "name_or_empty": _as_name_or_empty,
    "nats_url_list": _as_nats_url_list,
}
_KIND_OF: Final = {f.name: f.metadata["kind"] for f in attrs.fields(Settings)}


def load_settings(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``path`` (optional TOML file) overlaid with ``env`` (default: ``os.environ``)."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_from_file(Path(path)))
    values.update(_from_env(os.environ if env is None else env))
    settings = Settings(**values)
    _check_derived(settings)
    return _with_token_file(settings)


def _with_token_file(settings: Settings) -> Settings:
    """``ingest_token_file`` read into ``ingest_token`` (one token, surrounding whitespace dropped)."""
    if not settings.ingest_token_file:
        return settings
    if settings.ingest_token:
        raise ConfigError("ingest_token and ingest_token_file are both set: keep one")
    path = Path(settings.ingest_token_file).expanduser()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"bad value for ingest_token_file: cannot read {path}: {e}") from None
    if not token:
        raise ConfigError(f"bad value for ingest_token_file: {path} is empty")
    return attrs.evolve(settings, ingest_token=token)


def _from_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    out: dict[str, Any] = {}
    for key, raw in data.items():
        if key not in _KIND_OF:
            raise ConfigError(f"unknown config key {key!r} in {path}")
        out[key] = _parse(key, raw, from_env=False, where=str(path))
    return out


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in _KIND_OF:
            raise ConfigError(f"unknown environment variable {name} (no config key {key!r})")
        out[key] = _parse(key, raw, from_env=True, where=f"environment variable {name}")
    return out


def _parse(key: str, raw: object, *, from_env: bool, where: str) -> Any:
    try:
        return _PARSERS[_KIND_OF[key]](raw, from_env)
    except ValueError as e:
        raise ConfigError(f"bad value for {key} ({where}): {e}") from None


def _check_derived(settings: Settings) -> None:
    base = parse_timeframe(settings.derived_base_timeframe)
    for name in settings.derived_timeframes:
        if not can_derive(base, parse_timeframe(name)):
            raise ConfigError(f"bad value for derived_timeframes: {name} cannot be built from {base.name} candles")
