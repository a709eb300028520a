"""Configuration (docs/configuration.md): defaults, TOML, environment overrides, and errors that name the key."""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest

from daemon.config import KEYS, ConfigError, Settings, load_settings
from daemon.config_values import KINDS
from daemon.settings import GROUPS
from tests.features_off import FEATURES_OFF, OFF_ENV

ROOT = Path(__file__).parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "klined.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_spec_defaults() -> None:
    s = load_settings(env={})
    assert (s.data_dir, s.http_host, s.http_port) == ("./var", "127.0.0.1", 8710)
    assert s.control_socket_path == Path("var/klined.sock")
    assert s.eventlog_path == Path("var/eventlog")
    assert (s.ondemand_max_jobs, s.ondemand_idle_ttl_s) == (200, 60.0)
    assert s.startup_kline_sync_target_candles == 2000
    assert s.derived_base_timeframe == "1m"
    assert s.derived_timeframes == ("5m", "15m", "1h", "4h", "1d")
    assert (s.binance_ws_batch_max, s.binance_ws_flush_s) == (1000, 0.5)  # not 200: docs/design.md, "Live ingest"
    assert (s.market_forming_min_interval_ms, s.market_ws_catchup_limit) == (250, 5000)
    assert (s.pivot_window_major, s.pivot_window_minor) == (50, 5)


def test_the_defaults_serve_and_each_feature_is_one_key_off() -> None:
    s = load_settings(env={})
    assert s.whitelist == ("binance:spot:BTC/USDT:1m", "binance:spot:ETH/USDT:1m")
    flags = [k for k in KEYS if k.startswith("enable_")]
    assert len(flags) == 10
    assert [k for k in flags if not getattr(s, k)] == ["enable_debug_api"]
    for flag in flags:
        assert getattr(load_settings(env={f"KLINED_{flag.upper()}": "off"}), flag) is False, flag
    assert load_settings(env={"KLINED_WHITELIST": ""}).whitelist == ()


def test_the_tests_baseline_turns_every_default_feature_off() -> None:
    assert set(FEATURES_OFF) <= set(KEYS)
    s = load_settings(env=OFF_ENV)
    assert not any(getattr(s, k) for k in KEYS if k.startswith("enable_"))
    assert (s.whitelist, s.ondemand_max_jobs) == ((), 0)


def test_every_key_says_what_it_means() -> None:
    for field in attrs.fields(Settings):
        assert field.metadata["group"] in GROUPS, field.name
        assert field.metadata["kind"] in KINDS, field.name
        help_text = field.metadata["help"]
        assert len(help_text) > 20, field.name
        assert help_text[0].isupper() or help_text[0] in "`\"'", field.name
        assert help_text.endswith("."), field.name


def test_shipped_example_config_loads() -> None:
    s = load_settings(ROOT / "klined.toml", env={})
    assert s == load_settings(env={}), "the example shows the defaults"


def test_shipped_example_lists_every_key(tmp_path: Path) -> None:
    text = (ROOT / "klined.toml").read_text()
    listed = re.findall(r"^#? ?([a-z0-9_]+) = ", text, re.MULTILINE)
    assert sorted(set(KEYS) - set(listed)) == [], "keys missing from klined.toml"
    assert sorted(set(listed) - set(KEYS)) == [], "klined.toml names keys that do not exist"
    assert len(listed) == len(set(listed)), "a key listed twice"
    # The keys shown commented out are shown with their defaults: uncommented, they load as the defaults.
    commented = re.findall(r"^# ?([a-z0-9_]+ = .*)$", text, re.MULTILINE)
    s = load_settings(write(tmp_path, "\n".join(commented) + "\n"), env={})
    assert s == load_settings(env={})


def test_environment_wins_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'http_port = 9000\nwhitelist = ["binance:spot:BTC/USDT:1m"]\nenable_debug_api = true\n')
    s = load_settings(
        path,
        env={
            "KLINED_HTTP_PORT": "9100",
            "KLINED_WHITELIST": "binance:spot:ETH/USDT:1m, binance:futures:BTC/USDT:5m,",
            "KLINED_ENABLE_DEBUG_API": "Off",
            "KLINED_BINANCE_WS_FLUSH_S": "0.25",
            "PATH": "/usr/bin",  # non-klined variables are ignored
        },
    )
    assert s.http_port == 9100
    assert s.whitelist == ("binance:spot:ETH/USDT:1m", "binance:futures:BTC/USDT:5m")
    assert s.enable_debug_api is False
    assert s.binance_ws_flush_s == 0.25


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("0", False), ("TRUE", True), ("false", False), ("Yes", True), ("no", False), ("on", True)],
)
def test_env_booleans(text: str, value: bool) -> None:
    assert load_settings(env={"KLINED_ENABLE_KLINE_HEALTH": text}).enable_kline_health is value


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KLINED_HTTP_PORTT": "1"}, "unknown environment variable KLINED_HTTP_PORTT"),
        (
            {"KLINED_HTTP_PORT": "eighty"},
            r"bad value for http_port \(environment variable KLINED_HTTP_PORT\): expected an integer",
        ),
        ({"KLINED_HTTP_PORT": "70000"}, "http_port.*0..65535"),
        ({"KLINED_ENABLE_DEBUG_API": "maybe"}, "bad value for enable_debug_api.*boolean"),
        ({"KLINED_WHITELIST": "binance:spot:btc/usdt:1m"}, "bad value for whitelist.*bad symbol 'btc/usdt'"),
        ({"KLINED_DERIVED_TIMEFRAMES": "5m,7m"}, "bad value for derived_timeframes.*'7m'"),
        ({"KLINED_DERIVED_BASE_TIMEFRAME": "1h", "KLINED_DERIVED_TIMEFRAMES": "5m"}, "5m cannot be built from 1h"),
        ({"KLINED_MARKET_WS_CATCHUP_LIMIT": "0"}, "market_ws_catchup_limit.*>= 1"),
        ({"KLINED_BINANCE_WS_FLUSH_S": "nan"}, "binance_ws_flush_s.*finite"),
        ({"KLINED_BINANCE_SPOT_WS_URL": "stream.binance.com"}, "binance_spot_ws_url.*URL"),
        ({"KLINED_MARKET_HISTORY_SOURCE": "bybit"}, "market_history_source"),
        ({"KLINED_CLUSTER_NATS_URLS": "10.0.0.1:4222"}, "cluster_nats_urls.*nats://"),
        ({"KLINED_CLUSTER_ROLE": "leader"}, "cluster_role.*auto, replica"),
        ({"KLINED_CLUSTER_NAME": "my cluster"}, "cluster_name.*letters, digits"),
        ({"KLINED_NODE_NAME": "a.b"}, "node_name.*letters, digits"),
    ],
)
def test_bad_environment_names_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env=env)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http_prot = 1\n", "unknown config key 'http_prot'"),
        ("http_port = '8710'\n", "bad value for http_port.*expected an integer"),
        ("enable_debug_api = 'yes'\n", "enable_debug_api.*boolean"),  # TOML has real booleans
        ("whitelist = 'binance:spot:BTC/USDT:1m'\n", "whitelist.*list of strings"),
        ("http_port = true\n", "http_port.*integer"),
        ("http_port = [\n", "not valid TOML"),
    ],
)
def test_bad_file_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, text), env={})


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.toml", env={})


def test_every_key_has_an_env_form() -> None:
    for key in KEYS:
        default = getattr(Settings(), key)
        raw = ",".join(default) if isinstance(default, tuple) else str(default).lower()
        if raw == "":
            continue
        assert getattr(load_settings(env={f"KLINED_{key.upper()}": raw}), key) == default, key


def test_cluster_keys_default_to_standalone_and_parse_from_the_environment() -> None:
    s = load_settings(env={})
    assert (s.cluster_nats_urls, s.cluster_name, s.node_name, s.cluster_role) == ((), "klined", "", "auto")
    assert (s.cluster_lease_ttl_s, s.cluster_replicas, s.cluster) == (5.0, 3, False)  # a failover within ~5 s
    s = load_settings(
        env={
            "KLINED_CLUSTER_NATS_URLS": "nats://10.0.0.1:4222, nats://10.0.0.2:4222",
            "KLINED_CLUSTER_NAME": "prod-1",
            "KLINED_NODE_NAME": "vps_a",
            "KLINED_CLUSTER_ROLE": "Replica",
            "KLINED_CLUSTER_LEASE_TTL_S": "6",
            "KLINED_CLUSTER_STREAM_MAX_AGE_S": "604800",
        }
    )
    assert s.cluster_nats_urls == ("nats://10.0.0.1:4222", "nats://10.0.0.2:4222")
    assert (s.cluster_name, s.node_name, s.cluster_role) == ("prod-1", "vps_a", "replica")
    assert (s.cluster_lease_ttl_s, s.cluster_stream_max_age_s) == (6.0, 604800.0)


def test_a_pivot_window_the_factors_cannot_hold_is_refused_at_start() -> None:
    """The factor engine keeps 1000 candles a series: a window of 500 (1001 candles) could never run."""
    assert load_settings(env={"KLINED_PIVOT_WINDOW_MAJOR": "499"}).pivot_window_major == 499
    with pytest.raises(ConfigError, match=r"pivot_window_major.*1\.\.499"):
        load_settings(env={"KLINED_PIVOT_WINDOW_MAJOR": "500"})
