"""The shipped systemd unit: what a VPS operator relies on, checked on every run; and `systemd-analyze
verify` where that tool is installed."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[1] / "systemd" / "klined.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_the_unit_is_a_notify_service_with_a_watchdog_and_hardening() -> None:
    service = unit()["Service"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "DynamicUser": "yes",
        "StateDirectory": "klined",
        "RuntimeDirectory": "klined",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
    }
    assert {k: service.get(k) for k in expected} == expected
    assert int(service["WatchdogSec"].rstrip("s")) >= 10
    assert service["MemoryMax"]
    assert int(service["LimitNOFILE"]) >= 16384  # thousands of WebSocket clients
    assert "KLINED_CONTROL_SOCKET=/run/klined/klined.sock" in service.get("Environment", "")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    done = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, check=False)
    # A missing ExecStart binary on this machine is not the unit's fault; anything else is.
    problems = [line for line in done.stderr.splitlines() if "klined" in line and "No such file" not in line]
    assert problems == []
