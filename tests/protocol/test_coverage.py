from __future__ import annotations

from protocol.coverage import count_missing, missing_ranges, tail_window_start
from protocol.timeframes import TIMEFRAMES

M1, MO = TIMEFRAMES["1m"], TIMEFRAMES["1M"]


def test_tail_window() -> None:
    assert tail_window_start(M1, 600, 3) == 480
    assert tail_window_start(M1, 630, 1) == 600
    assert tail_window_start(MO, 1_706_745_600, 2) == 1_704_067_200  # 2024-02-01 -> 2024-01-01


def test_missing_ranges() -> None:
    assert missing_ranges(M1, [], 60, 300) == [(60, 300)]
    assert missing_ranges(M1, [60, 120, 300], 60, 300) == [(180, 240)]
    assert missing_ranges(M1, [0, 180, 360], 60, 300) == [(60, 120), (240, 300)]
    assert missing_ranges(M1, [60, 120, 180], 60, 180) == []
    assert count_missing(M1, [(60, 120), (240, 300)]) == 4
