"""The daemon end to end: the HTTP API over real loopback, and ``klined`` as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from daemon.app import Running, serve_daemon
from daemon.config import KEYS, load_settings
from protocol.candle import Candle
from protocol.series import SeriesId
from tests.features_off import OFF_ENV

BTC = SeriesId.parse("binance:spot:BTC/USDT:1m")
BIN = Path(sys.executable).parent


def candle(t: int) -> Candle:
    return Candle(t, 10.0, 12.0, 9.0, 11.0, 5.0)


async def test_candles_and_whitelist_over_http(tmp_path: Path) -> None:
    settings = load_settings(
        env={**OFF_ENV, "KLINED_DATA_DIR": str(tmp_path), "KLINED_HTTP_PORT": "0", "KLINED_WHITELIST": str(BTC)}
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            running: Running = await nursery.start(serve_daemon, settings)
            await running.store.append({BTC: [candle(60 * i) for i in range(1, 11)]})
            async with httpx.AsyncClient(base_url=running.http_url) as client:
                r = await client.get("/api/market/candles", params={"series_id": str(BTC), "limit": 3})
                assert r.status_code == 200
                body = r.json()
                assert body["series_id"] == str(BTC)
                assert body["server_head_time"] == 600
                assert [c["candle_time"] for c in body["candles"]] == [480, 540, 600]
                assert body["candles"][0] == {
                    "candle_time": 480,
                    "open": 10.0,
                    "high": 12.0,
                    "low": 9.0,
                    "close": 11.0,
                    "volume": 5.0,
                }

                r = await client.get("/api/market/candles", params={"series_id": str(BTC), "since": 120, "limit": 2})
                assert [c["candle_time"] for c in r.json()["candles"]] == [180, 240]  # since is exclusive

                r = await client.get("/api/market/candles", params={"series_id": "binance:spot:ETH/USDT:1m"})
                assert r.json() == {"series_id": "binance:spot:ETH/USDT:1m", "server_head_time": None, "candles": []}

                r = await client.get("/api/market/whitelist")
                assert r.json() == {"series_ids": [str(BTC)]}
            running.stop.set()


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({}, "missing series_id"),
        (
            {"series_id": "binance:spot:BTCUSDT:1m"},
            "invalid series_id: bad symbol 'BTCUSDT' (expected BASE/QUOTE, upper-case [A-Z0-9]+/[A-Z0-9]+)",
        ),
        ({"series_id": str(BTC), "limit": "0"}, "invalid limit: expected 1..5000, got 0"),
        ({"series_id": str(BTC), "limit": "5001"}, "invalid limit: expected 1..5000, got 5001"),
        ({"series_id": str(BTC), "since": "yesterday"}, "invalid since: expected an integer, got 'yesterday'"),
    ],
)
async def test_bad_parameters_are_422_with_spec_body(tmp_path: Path, params: dict[str, str], detail: str) -> None:
    settings = load_settings(env={**OFF_ENV, "KLINED_DATA_DIR": str(tmp_path), "KLINED_HTTP_PORT": "0"})
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            running: Running = await nursery.start(serve_daemon, settings)
            async with httpx.AsyncClient(base_url=running.http_url) as client:
                r = await client.get("/api/market/candles", params=params)
                assert r.status_code == 422
                assert r.json() == {"code": "bad_request", "detail": detail}
                r = await client.get("/no/such/api")
                assert r.status_code == 404
                assert r.json()["code"] == "not_found"
            running.stop.set()


def _read_event(proc: subprocess.Popen[str], event: str) -> dict[str, object]:
    assert proc.stdout is not None
    for line in proc.stdout:
        record = json.loads(line)
        if record.get("event") == event:
            return dict(record)
    raise AssertionError(f"klined exited before logging {event}")


def test_klined_process_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, **OFF_ENV, "KLINED_DATA_DIR": str(tmp_path / "data"), "KLINED_HTTP_PORT": "0"}
    proc = subprocess.Popen(
        [str(BIN / "klined"), "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        ready = _read_event(proc, "daemon_ready")
        url = str(ready["http_url"])
        r = httpx.get(f"{url}/api/market/candles", params={"series_id": str(BTC)}, timeout=10)
        assert r.status_code == 200
        assert r.json()["candles"] == []
        proc.send_signal(signal.SIGTERM)
        _read_event(proc, "eventlog_closed")
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
    assert (tmp_path / "data" / "eventlog" / "data.mdb").exists()


def test_bad_config_stops_startup_with_one_line_naming_the_key(tmp_path: Path) -> None:
    env = {**os.environ, "KLINED_DATA_DIR": str(tmp_path), "KLINED_HTTP_PORT": "not-a-port"}
    for command in ("run", "check-config"):
        done = subprocess.run([str(BIN / "klined"), command], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [
            "klined: config error: bad value for http_port (environment variable KLINED_HTTP_PORT): "
            "expected an integer, got 'not-a-port'"
        ]
    assert not (tmp_path / "eventlog").exists(), "nothing was started"


def test_check_config_accepts_the_example(tmp_path: Path) -> None:
    root = Path(__file__).parents[2]
    done = subprocess.run(
        [str(BIN / "klined"), "check-config", "--config", str(root / "klined.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "config ok (2 whitelisted series" in done.stdout


def test_check_config_prints_the_effective_settings_and_where_each_came_from(tmp_path: Path) -> None:
    config = tmp_path / "klined.toml"
    config.write_text(f'http_port = 9000\nwhitelist = ["{BTC}"]\nenable_debug_api = true\n')
    (tmp_path / "token").write_text("s3cret\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLINED_")}
    env |= {"KLINED_HTTP_PORT": "9100", "KLINED_INGEST_TOKEN_FILE": str(tmp_path / "token")}
    done = subprocess.run(
        [str(BIN / "klined"), "check-config", "--print", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    head, printed = done.stdout.split("\n", 1)
    assert head.startswith("klined: config ok (1 whitelisted series")
    assert "s3cret" not in printed
    rows = [line for line in printed.splitlines() if " = " in line]
    origins = {line.split(" = ", 1)[0]: line.rsplit("  # ", 1)[1] for line in rows}
    assert set(origins) == set(KEYS)
    assert origins["http_port"] == "env KLINED_HTTP_PORT"
    assert (origins["whitelist"], origins["enable_debug_api"]) == ("file", "file")
    assert (origins["data_dir"], origins["enable_whitelist_ingest"]) == ("default", "default")
    assert origins["ingest_token"] == "ingest_token_file"
    shown = tomllib.loads(printed)  # the output is itself a config file: these settings, the token hidden
    expected = load_settings(config, env=env)
    assert {k: v for k, v in shown.items() if k != "ingest_token"} == {
        k: list(v) if isinstance(v, tuple) else v for k, v in attrs.asdict(expected).items() if k != "ingest_token"
    }
    assert shown["ingest_token"] == "<hidden>"


def test_klinectl_prints_its_version() -> None:
    done = subprocess.run([str(BIN / "klinectl"), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.startswith("klinectl ")
