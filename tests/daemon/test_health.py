from __future__ import annotations

import pytest

from daemon.health import series_health_view
from daemon.logformat import SeriesHead
from protocol.series import SeriesId

S5 = SeriesId.parse("binance:spot:BTC/USDT:5m")


@pytest.mark.parametrize(
    ("backfill", "status", "reason"),
    [
        ({"state": "running", "progress_pct": 40.0}, "yellow", "backfill_running"),
        ({"state": "succeeded", "recent": True}, "yellow", "backfill_recent"),
        ({"state": "succeeded", "recent": False}, "red", "lagging_no_recent_backfill"),
        ({"state": "failed", "recent": True}, "red", "lagging_no_recent_backfill"),
    ],
)
def test_a_lagging_series_is_yellow_only_while_something_repairs_it(
    backfill: dict[str, object], status: str, reason: str
) -> None:
    view = series_health_view(S5, 960, SeriesHead(0, 300, 2), backfill)
    assert (view["status"], view["status_reason"]) == (status, reason)
    assert (view["lag_seconds"], view["missing_candles"], view["missing_seconds"]) == (300, 1, 300)
    assert view["backfill"] == backfill
