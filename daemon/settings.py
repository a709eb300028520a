"""Every configuration key, declared once: its type, default, value kind (:mod:`daemon.config_values`),
section and meaning. :mod:`daemon.config` loads them; docs/configuration.md is generated from them."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Final, Literal

import attrs

from protocol.series import SeriesId

Group = Literal["serving", "ingest", "history", "ws_limits", "projections", "storage", "cluster", "dev"]
GROUPS: Final[dict[Group, str]] = {
    "serving": "Serving: HTTP, WebSocket, control socket",
    "ingest": "Live ingest",
    "history": "Repairing the past",
    "ws_limits": "WebSocket limits",
    "projections": "Factor projections",
    "storage": "Storage",
    "cluster": "Cluster mode",
    "dev": "Development and tests",
}
"""The sections of docs/configuration.md, in order."""

DEFAULT_WHITELIST: Final = ("binance:spot:BTC/USDT:1m", "binance:spot:ETH/USDT:1m")


def _key(kind: str, group: Group, help: str) -> dict[str, str]:
    """A key's metadata: how its value parses, its section, and what it means (docs/configuration.md)."""
    return {"kind": kind, "group": group, "help": help}


@attrs.frozen(kw_only=True)
class Settings:
    """Every configuration key with its default. The defaults serve: the whitelist followed live, with
    derived timeframes, repairs, on-demand ingest and health; the debug API off."""

    # -- storage
    data_dir: str = attrs.field(
        default="./var",
        metadata=_key(
            "str",
            "storage",
            "Where klined keeps its state: the event log (`eventlog/`), the factor projections (`projections/`), "
            "the run-time pins (`pins.json`) and, unless `control_socket` says otherwise, the control socket.",
        ),
    )
    lmdb_map_size_mb: int = attrs.field(
        default=1024,
        metadata=_key(
            "pos_int",
            "storage",
            "The event log's initial LMDB map, in MiB. It doubles whenever full, so this only sets where growth "
            "starts (a tiny one proves growth under load).",
        ),
    )

    # -- serving
    http_host: str = attrs.field(
        default="127.0.0.1",
        metadata=_key(
            "str",
            "serving",
            "The address HTTP and `/ws/market` listen on. Reads are open to whoever reaches it; the default takes "
            "this host's clients only.",
        ),
    )
    http_port: int = attrs.field(
        default=8710,
        metadata=_key(
            "port", "serving", "The port of HTTP and `/ws/market` (0: any free one, logged in `daemon_ready`)."
        ),
    )
    control_socket: str = attrs.field(
        default="",
        metadata=_key(
            "str",
            "serving",
            "The owner-only Unix socket `klinectl` talks to. Empty: `<data_dir>/klined.sock`.",
        ),
    )
    http_cors_origins: tuple[str, ...] = attrs.field(
        default=(),
        metadata=_key(
            "str_list",
            "serving",
            "Origins (`https://charts.example`) whose pages may use the API from a browser (CORS). A write "
            "carrying any other `Origin` is refused (403 `forbidden_origin`); `*` admits no page's writes.",
        ),
    )
    ingest_token: str = attrs.field(
        default="",
        metadata=_key(
            "str",
            "serving",
            "The bearer token every write (`POST .../ingest/...`) must send, from loopback too. Empty: writes are "
            "taken from loopback peers only.",
        ),
    )
    ingest_token_file: str = attrs.field(
        default="",
        metadata=_key(
            "str",
            "serving",
            "A file holding `ingest_token` (set one of the two); suits systemd's `LoadCredential=` "
            "(`KLINED_INGEST_TOKEN_FILE=%d/ingest_token`).",
        ),
    )
    http_idle_timeout_s: float = attrs.field(
        default=75.0,
        metadata=_key(
            "pos_float",
            "serving",
            "An HTTP/WebSocket connection that has not sent a whole request head this long after it opened (or "
            "after its last answer) is closed: idle peers and header tricklers are cut. Also the keep-alive.",
        ),
    )
    http_send_timeout_s: float = attrs.field(
        default=60.0,
        metadata=_key(
            "pos_float",
            "serving",
            "An HTTP/WebSocket peer that acknowledges none of the data sent to it this long (it stopped reading, "
            "or vanished) is cut, as nginx's `send_timeout`; a slow reader that makes progress is not.",
        ),
    )
    control_request_timeout_s: float = attrs.field(
        default=10.0,
        metadata=_key("pos_float", "serving", "A control-socket peer must send its whole request line within this."),
    )
    enable_kline_health: bool = attrs.field(
        default=True,
        metadata=_key(
            "bool",
            "serving",
            "Serve `GET /api/market/health`: every active series green, yellow or red with its lag and the "
            "repairs in progress, and the upstream connections.",
        ),
    )
    log_level: str = attrs.field(
        default="info",
        metadata=_key(
            "log_level",
            "serving",
            "The least severe level logged (JSON lines on stdout, or a console format on a terminal).",
        ),
    )

    # -- ingest
    whitelist: tuple[str, ...] = attrs.field(
        default=DEFAULT_WHITELIST,
        metadata=_key(
            "series_list",
            "ingest",
            "Series followed all the time, from start-up. `klinectl pin` / `unpin` change it at run time; "
            "SIGHUP re-reads it from the file.",
        ),
    )
    binance_spot_ws_url: str = attrs.field(
        default="wss://stream.binance.com:9443",
        metadata=_key(
            "url",
            "ingest",
            "Binance's spot market streams (tests point the four Binance URLs at a local fake exchange).",
        ),
    )
    binance_spot_rest_url: str = attrs.field(
        default="https://api.binance.com",
        metadata=_key(
            "url",
            "ingest",
            "Binance's spot REST API: klines for the repairs and the startup sync, the server time, top markets.",
        ),
    )
    binance_futures_ws_url: str = attrs.field(
        default="wss://fstream.binance.com/market",
        metadata=_key(
            "url",
            "ingest",
            "Binance's USD-M futures market streams (Binance split its futures endpoints in 2026: market streams "
            "live under `/market`).",
        ),
    )
    binance_futures_rest_url: str = attrs.field(
        default="https://fapi.binance.com",
        metadata=_key("url", "ingest", "Binance's USD-M futures REST API."),
    )
    enable_whitelist_ingest: bool = attrs.field(
        default=True,
        metadata=_key(
            "bool",
            "ingest",
            "Follow the whitelist live from the exchange's streams: closed candles into the log, forming ones "
            "to subscribers.",
        ),
    )
    enable_ondemand_ingest: bool = attrs.field(
        default=True,
        metadata=_key(
            "bool",
            "ingest",
            "A subscriber of a series nobody follows starts its live ingest; it stops `ondemand_idle_ttl_s` "
            "after the last subscriber left.",
        ),
    )
    ondemand_max_jobs: int = attrs.field(
        default=200,
        metadata=_key(
            "nonneg_int",
            "ingest",
            "At most this many series followed on demand, besides the whitelist (0: no limit). One more evicts "
            "the longest idle; with none idle it is refused (`ondemand_ingest_capacity`). 200 is a few charts' worth "
            "and fits one upstream connection (Binance allows 1024 streams on one).",
        ),
    )
    ondemand_idle_ttl_s: float = attrs.field(
        default=60.0,
        metadata=_key(
            "nonneg_float",
            "ingest",
            "How long an on-demand series keeps running after its last subscriber left (a chart that reloads "
            "finds it still there).",
        ),
    )
    enable_derived_timeframes: bool = attrs.field(
        default=True,
        metadata=_key(
            "bool",
            "ingest",
            "Build `derived_timeframes` from the `derived_base_timeframe` candles of each followed series as they "
            "close, instead of following more streams.",
        ),
    )
    derived_base_timeframe: str = attrs.field(
        default="1m", metadata=_key("timeframe", "ingest", "The timeframe the derived ones are built from.")
    )
    derived_timeframes: tuple[str, ...] = attrs.field(
        default=("5m", "15m", "1h", "4h", "1d"),
        metadata=_key(
            "timeframe_list", "ingest", "The timeframes built from the base one; each a whole multiple of it."
        ),
    )
    binance_ws_batch_max: int = attrs.field(
        default=1000,
        metadata=_key(
            "pos_int",
            "ingest",
            "The most closed candles one commit takes. With group commit it only caps one commit: a minute-close "
            "burst split into commits of 200 would pay each commit's fixed cost in turn.",
        ),
    )
    binance_ws_flush_s: float = attrs.field(
        default=0.5,
        metadata=_key(
            "pos_float",
            "ingest",
            "Accepted, but nothing waits on it: the writer's group commit never holds a candle back for more to "
            'arrive (docs/design.md, "Live ingest").',
        ),
    )
    binance_ws_reconnect_max_s: float = attrs.field(
        default=60.0,
        metadata=_key(
            "pos_float",
            "ingest",
            "The longest wait between upstream reconnect attempts (full jitter below it, doubling from 1 s); each "
            "failed attempt is logged once, with the wait before the next.",
        ),
    )
    market_close_grace_s: float = attrs.field(
        default=3.0,
        metadata=_key(
            "pos_float",
            "ingest",
            "How long after a period's end a final kline that has not arrived is asked of the exchange (REST).",
        ),
    )
    trade_sources: tuple[str, ...] = attrs.field(
        default=(),
        metadata=_key(
            "symbol_list",
            "ingest",
            "Symbols whose candles are built from their trades (aggTrade) instead of kline streams, e.g. "
            "`binance:spot:BTC/USDT`: every whitelisted timeframe of it (and the derived ones) comes from one book.",
        ),
    )
    trade_discover: tuple[str, ...] = attrs.field(
        default=(),
        metadata=_key(
            "market_quote_list",
            "ingest",
            "Markets watched for new listings (`binance:spot:USDT`): a symbol that starts trading there is "
            "followed from its trades at once (a seed candle first), and kept across restarts.",
        ),
    )
    trade_discover_interval_s: float = attrs.field(
        default=60.0,
        metadata=_key("pos_float", "ingest", "How often the `trade_discover` markets are asked what they list."),
    )

    # -- history
    enable_market_gap_backfill: bool = attrs.field(
        default=True,
        metadata=_key(
            "bool",
            "history",
            "A hole in a series (a reconnect, a restart, a late close) is filled from freqtrade files, "
            "derivation, then the exchange; a subscriber waits up to 5 s for it before it gets a `gap`.",
        ),
    )
    enable_market_auto_tail_backfill: bool = attrs.field(
        default=True,
        metadata=_key(
            "bool",
            "history",
            "`GET /api/market/candles` without `since` first makes sure the tail it asks for is stored "
            "(freqtrade, derivation, and the exchange with `enable_ccxt_backfill_on_read`), waiting at most 5 s.",
        ),
    )
    market_auto_tail_backfill_max_candles: int = attrs.field(
        default=5000, metadata=_key("pos_int", "history", "The most candles one tail coverage fills.")
    )
    enable_ccxt_backfill: bool = attrs.field(
        default=True,
        metadata=_key(
            "bool",
            "history",
            "Tail coverage may ask the exchange (ccxt); on a read only with `enable_ccxt_backfill_on_read` too. "
            "Gap backfill and the startup sync ask it whatever this says.",
        ),
    )
    enable_ccxt_backfill_on_read: bool = attrs.field(
        default=True,
        metadata=_key(
            "bool",
            "history",
            "A reader's tail coverage asks the exchange for what freqtrade and derivation could not fill, so a "
            "chart of any series has its history at once. Each read fetches at most "
            "`market_auto_tail_backfill_max_candles`, one job per series at a time, rate-limited; turn it off "
            "when untrusted readers reach the port and must not spend the exchange's request weight.",
        ),
    )
    enable_startup_kline_sync: bool = attrs.field(
        default=True,
        metadata=_key(
            "bool",
            "history",
            "At start-up, bring every whitelist series up to its latest closed period from the exchange before "
            "READY, for at most `startup_kline_sync_wait_s`.",
        ),
    )
    startup_kline_sync_target_candles: int = attrs.field(
        default=2000,
        metadata=_key(
            "pos_int",
            "history",
            "How many candles, up to the latest closed one, the startup sync makes sure each series has.",
        ),
    )
    startup_kline_sync_wait_s: float = attrs.field(
        default=30.0,
        metadata=_key(
            "nonneg_float",
            "history",
            "How long READY waits for the startup sync. Past it, or as soon as the exchange cannot be reached, "
            "klined serves what it has and the sync goes on in the background.",
        ),
    )
    freqtrade_data_dir: str = attrs.field(
        default="",
        metadata=_key(
            "str",
            "history",
            "A freqtrade data directory every repair reads first (`<dir>/binance/BTC_USDT-1m.feather`, futures "
            "under `futures/`; feather, parquet, json, json.gz). Empty: none.",
        ),
    )
    market_history_source: str = attrs.field(
        default="",
        metadata=_key(
            "history_source",
            "history",
            'Accepted ("": automatic, `freqtrade`, `ccxt`), but nothing reads it: every '
            "repair tries freqtrade, then derivation, then the exchange.",
        ),
    )

    # -- ws_limits
    market_forming_min_interval_ms: int = attrs.field(
        default=250,
        metadata=_key(
            "nonneg_int",
            "ws_limits",
            "The least time between two forming-candle frames of one series to a subscriber (the latest wins).",
        ),
    )
    market_ws_catchup_limit: int = attrs.field(
        default=5000,
        metadata=_key(
            "pos_int",
            "ws_limits",
            "A subscription's catchup sends at most this many candles, the latest after its cursor; what the "
            "limit cut is a `gap`.",
        ),
    )
    market_ws_max_connections: int = attrs.field(
        default=4096,
        metadata=_key(
            "pos_int", "ws_limits", "WebSocket connections at once; one more is refused with a `capacity` error."
        ),
    )
    market_ws_max_subscriptions: int = attrs.field(
        default=1000,
        metadata=_key(
            "pos_int", "ws_limits", "Subscriptions on one connection; one more is refused with a `capacity` error."
        ),
    )
    market_ws_max_message_bytes: int = attrs.field(
        default=65536,
        metadata=_key(
            "pos_int",
            "ws_limits",
            "The largest client frame taken; a larger one gets `bad_request` and the connection stays (past four "
            "times this, and at least 1 MiB, it is closed).",
        ),
    )
    market_ws_queue_frames: int = attrs.field(
        default=4096,
        metadata=_key(
            "pos_int",
            "ws_limits",
            "Frames queued to one connection; a client this far behind gets `slow_consumer` and is closed (1008).",
        ),
    )

    # -- projections
    pivot_window_major: int = attrs.field(
        default=50,
        metadata=_key(
            "pivot_window",
            "projections",
            "The pivot factor's major window, in candles (docs/factors.md). A change to a factor setting rebuilds "
            "the projections from the log at the next start.",
        ),
    )
    pivot_window_minor: int = attrs.field(
        default=5, metadata=_key("pivot_window", "projections", "The pivot factor's minor window, in candles.")
    )
    projection_max_series_in_memory: int = attrs.field(
        default=4000,
        metadata=_key(
            "nonneg_int",
            "projections",
            "Series whose factor state stays in memory (~80 KB each); the least recently used beyond it are "
            "snapshotted and dropped, and reload from their snapshot on their next candle. 0: no limit.",
        ),
    )

    # -- cluster (docs/design.md): none of these matter while cluster_nats_urls is empty (standalone)
    cluster_nats_urls: tuple[str, ...] = attrs.field(
        default=(),
        metadata=_key(
            "nats_url_list",
            "cluster",
            "The NATS servers of the cluster's JetStream, e.g. `nats://10.0.0.1:4222,nats://10.0.0.2:4222`. "
            "Empty: standalone, and the other cluster keys are unused.",
        ),
    )
    cluster_name: str = attrs.field(
        default="klined",
        metadata=_key(
            "name",
            "cluster",
            "Names the stream, the lease bucket and their subjects: several klined clusters can share one NATS.",
        ),
    )
    node_name: str = attrs.field(
        default="",
        metadata=_key(
            "name_or_empty",
            "cluster",
            "This node's name in the lease, health and `klinectl cluster`. Empty: the host name.",
        ),
    )
    cluster_role: str = attrs.field(
        default="auto",
        metadata=_key(
            "cluster_role",
            "cluster",
            "`auto` competes for the writer lease; `replica` never writes (a read-only node).",
        ),
    )
    cluster_lease_ttl_s: float = attrs.field(
        default=5.0,
        metadata=_key(
            "pos_float",
            "cluster",
            "A writer that stops renewing loses the lease this long after its last renewal: a failover takes "
            "about this plus catch-up. It acts on it for 60 % of this after each renewal, renewed every 25 %, "
            "so NATS may stall for up to ~35 % of it without a handover.",
        ),
    )
    cluster_stream_max_age_s: float = attrs.field(
        default=0.0,
        metadata=_key(
            "nonneg_float",
            "cluster",
            "How long the stream keeps events (0: forever). A replica further behind is seeded from a backup.",
        ),
    )
    cluster_replicas: int = attrs.field(
        default=3,
        metadata=_key(
            "pos_int",
            "cluster",
            "Copies NATS keeps of the stream and buckets (RAFT): 3 survives one server down; at most the servers.",
        ),
    )

    # -- dev
    enable_debug_api: bool = attrs.field(
        default=False,
        metadata=_key(
            "bool",
            "dev",
            "The debug routes: forming and batch writes (`POST /api/market/ingest/candle_forming`, "
            "`POST /api/dev/market/ingest/candles_closed_batch`) and the ingest and series state.",
        ),
    )
    dev_clock_speed: float = attrs.field(
        default=1.0,
        metadata=_key(
            "pos_float",
            "dev",
            "Tests and demos only: follow a fake exchange whose clock runs this many times as fast.",
        ),
    )

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
