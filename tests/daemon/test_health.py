from __future__ import annotations

from types import SimpleNamespace

import pytest

from actors.series import PendingHole, SeriesState
from daemon.health import live_health_view
from protocol.health import factor_health_view, series_health_view
from protocol.logrecords import SeriesHead
from protocol.series import SeriesId
from protocol.upstream import Hole

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


def test_an_up_to_date_series_with_a_hole_awaiting_the_exchange_is_yellow_until_it_heals() -> None:
    head = SeriesHead(0, 600, 3)  # the latest closed 5m period at 960
    assert series_health_view(S5, 960, head)["status"] == "green"
    view = series_health_view(S5, 960, head, holes_pending=2)
    assert (view["status"], view["status_reason"]) == ("yellow", "gap_repair_pending")
    assert view["holes_pending_candles"] == 2


def test_the_daemon_view_counts_the_candles_of_holes_its_actor_will_ask_for_again() -> None:
    """The view HTTP and klinectl serve (a stand-in ``Wiring`` holding only what it reads)."""
    state = SeriesState(head_time=600, pending_holes=[PendingHole(Hole(0, 300))])
    services = SimpleNamespace(
        live=SimpleNamespace(actors={S5: SimpleNamespace(state=state)}),
        history=SimpleNamespace(progress=SimpleNamespace(view=lambda series: {"state": "idle"})),
    )
    view = live_health_view(services, S5, 960, SeriesHead(0, 600, 3))  # type: ignore[arg-type]
    assert (view["status"], view["status_reason"], view["holes_pending_candles"]) == (
        "yellow",
        "gap_repair_pending",
        1,
    )
    services.live = None  # no live ingest: no actors, nothing pending
    assert live_health_view(services, S5, 960, SeriesHead(0, 600, 3))["status"] == "green"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("factor_head", "flags", "status", "reason"),
    [
        (900, {}, "green", "up_to_date"),
        (900, {"correction_pending": True}, "yellow", "correction_pending"),
        (600, {}, "yellow", "lagging_one_candle"),
        (300, {}, "red", "lagging_many_candles"),
        (300, {"rebuilding": True}, "yellow", "rebuild_running"),
        (None, {"rebuilding": True}, "yellow", "rebuild_running"),
        (None, {}, "red", "missing_factor_head"),
        (900, {"failed": True}, "red", "factor_failed"),
    ],
)
def test_factor_health_grades_how_far_the_projections_trail_the_stored_head(
    factor_head: int | None, flags: dict[str, bool], status: str, reason: str
) -> None:
    view = factor_health_view(S5, 900, factor_head, **flags)
    assert (view["status"], view["status_reason"]) == (status, reason)
    assert (view["store_head_time"], view["timeframe_seconds"]) == (900, 300)
    assert view["factor_head_time"] == view["overlay_head_time"] == factor_head
    delay = (None, None) if factor_head is None else (900 - factor_head, (900 - factor_head) // 300)
    for which in ("factor", "overlay", "max"):
        assert (view[f"{which}_delay_seconds"], view[f"{which}_delay_candles"]) == delay


def test_factor_health_counts_calendar_candles() -> None:
    month = SeriesId.parse("binance:spot:BTC/USDT:1M")
    jan, mar = 1_704_067_200, 1_709_251_200  # 2024-01-01 and 2024-03-01 UTC: Feb is 29 days
    view = factor_health_view(month, mar, jan)
    assert (view["factor_delay_seconds"], view["factor_delay_candles"]) == (mar - jan, 2)
    assert (view["status"], view["timeframe_seconds"]) == ("red", 30 * 86400)
