"""The shipped systemd units and the cluster's example configuration: what a VPS operator relies on, checked
on every run; and `systemd-analyze verify` and `nats-server -t` where those are installed."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from daemon.config import load_settings
from tests.cluster.nats_cluster import nats_server_binary

SYSTEMD = Path(__file__).parents[1] / "systemd"
UNIT = SYSTEMD / "klined.service"
NATS_UNIT = SYSTEMD / "nats-server.service"
NATS_CONF = SYSTEMD / "nats-server.conf.example"
HARDENING = {
    "DynamicUser": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "Restart": "on-failure",
}


def unit(path: Path = UNIT) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


def test_the_unit_is_a_notify_service_with_a_watchdog_and_hardening() -> None:
    service = unit()["Service"]
    expected = {
        **HARDENING,
        "Type": "notify",
        "NotifyAccess": "main",
        "StateDirectory": "klined",
        "RuntimeDirectory": "klined",
    }
    assert {k: service.get(k) for k in expected} == expected
    assert int(service["WatchdogSec"].rstrip("s")) >= 10
    assert service["MemoryMax"]
    assert int(service["LimitNOFILE"]) >= 16384  # thousands of WebSocket clients
    assert "KLINED_CONTROL_SOCKET=/run/klined/klined.sock" in service.get("Environment", "")


def conf_value(key: str) -> str:
    found = re.search(rf"^\s*{key}:\s*(\S+)", NATS_CONF.read_text(), re.MULTILINE)
    assert found, f"{key} is not in {NATS_CONF.name}"
    return found.group(1)


def test_the_nats_unit_is_hardened_and_waits_out_lame_duck_mode() -> None:
    service = unit(NATS_UNIT)["Service"]
    expected = {**HARDENING, "StateDirectory": "nats", "KillSignal": "SIGUSR2"}
    assert {k: service.get(k) for k in expected} == expected
    assert "--config /etc/nats/nats-server.conf" in service["ExecStart"]
    assert service["MemoryMax"]
    # A stop is lame duck mode (leaders move away first): systemd must not kill it half way.
    assert int(service["TimeoutStopSec"].rstrip("s")) > int(conf_value("lame_duck_duration").rstrip("s"))


def test_the_example_nats_config_matches_the_unit() -> None:
    assert conf_value("store_dir") == "/var/lib/nats"  # the unit's StateDirectory: the only place it may write
    assert conf_value("http").startswith("127.0.0.1:")  # monitoring stays on the host


def nats_server() -> str | None:
    try:
        return nats_server_binary()
    except RuntimeError:
        return None


@pytest.mark.skipif(nats_server() is None, reason="nats-server is not installed here")
def test_nats_server_accepts_the_example_config() -> None:
    done = subprocess.run(
        [str(nats_server()), "-t", "-c", str(NATS_CONF)], capture_output=True, text=True, check=False, timeout=30
    )
    assert done.returncode == 0, done.stderr


def test_the_readme_cluster_node_config_passes_check_config(tmp_path: Path) -> None:
    readme = (SYSTEMD / "README.md").read_text()
    section = readme[readme.index("## Three VPS: a cluster") :]
    block = re.search(r"```toml\n(.*?)```", section, re.DOTALL)
    assert block, "the cluster section shows a klined.toml for a node"
    config = tmp_path / "klined.toml"
    config.write_text(block.group(1))
    settings = load_settings(config, env={})
    assert settings.cluster
    assert len(settings.cluster_nats_urls) == settings.cluster_replicas == 3


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
@pytest.mark.parametrize("path", [UNIT, NATS_UNIT], ids=lambda p: p.name)
def test_systemd_analyze_verify_accepts_the_unit(path: Path) -> None:
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, check=False)
    # A missing ExecStart binary on this machine is not the unit's fault; anything else is.
    problems = [line for line in done.stderr.splitlines() if path.name in line and "No such file" not in line]
    assert problems == []
