"""Timeframes and bucket math, aligned as Binance aligns its klines.

Every fixed-length timeframe buckets on the Unix epoch in UTC (``t // tf * tf``; 3d included, which is
how Binance's 3d klines fall), weeks start on Monday 00:00 UTC, and months on the 1st at 00:00 UTC.
Times are integer UTC seconds.
"""

from __future__ import annotations

from typing import Final

import attrs

from protocol.errors import TimeframeError

MINUTE: Final = 60
HOUR: Final = 3600
DAY: Final = 86400
WEEK: Final = 7 * DAY
# 1970-01-01 was a Thursday; Binance's weeks open on Monday, 1970-01-05 00:00 UTC.
_WEEK_ORIGIN: Final = 4 * DAY


@attrs.frozen(order=False)
class Timeframe:
    """One kline interval. ``seconds`` is the nominal length (30 days for ``1M``, whose length varies)."""

    name: str
    seconds: int

    @property
    def is_calendar(self) -> bool:
        """True for ``1M``, the one timeframe whose length depends on the calendar."""
        return self.name == "1M"

    def floor(self, t: int) -> int:
        """Open time of the bucket that contains ``t``."""
        if self.name == "1M":
            return _month_floor(t)
        if self.name == "1w":
            return (t - _WEEK_ORIGIN) // WEEK * WEEK + _WEEK_ORIGIN
        return t // self.seconds * self.seconds

    def next_open(self, open_time: int) -> int:
        """Open time of the bucket after the one that contains ``open_time``."""
        if self.name == "1M":
            year, month = _year_month(_month_floor(open_time))
            return _month_start(year + (month == 12), month % 12 + 1)
        return self.floor(open_time) + self.seconds

    def prev_open(self, open_time: int) -> int:
        """Open time of the bucket before the one that contains ``open_time``."""
        if self.name == "1M":
            year, month = _year_month(_month_floor(open_time))
            return _month_start(year - (month == 1), (month - 2) % 12 + 1)
        return self.floor(open_time) - self.seconds

    def is_aligned(self, t: int) -> bool:
        return self.floor(t) == t

    def check_aligned(self, t: int) -> None:
        if not self.is_aligned(t):
            raise TimeframeError(f"time {t} is not aligned to timeframe {self.name}")

    def last_closed_open(self, now: int) -> int:
        """Open time of the latest bucket that has fully closed at wall time ``now``."""
        return self.prev_open(self.floor(now))

    def count_between(self, first_open: int, last_open: int) -> int:
        """How many buckets open in ``[first_open, last_open]`` (both aligned); 0 when empty."""
        if last_open < first_open:
            return 0
        if self.name == "1M":
            (y0, m0), (y1, m1) = _year_month(first_open), _year_month(last_open)
            return (y1 - y0) * 12 + (m1 - m0) + 1
        return (last_open - first_open) // self.seconds + 1

    def __str__(self) -> str:
        return self.name


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm, exact and branch-light)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _year_month(t: int) -> tuple[int, int]:
    """(year, month) of UTC time ``t``."""
    z = t // DAY + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month


def _month_start(year: int, month: int) -> int:
    return _days_from_civil(year, month, 1) * DAY


def _month_floor(t: int) -> int:
    return _month_start(*_year_month(t))


_ALL: Final = (
    Timeframe("1m", MINUTE),
    Timeframe("3m", 3 * MINUTE),
    Timeframe("5m", 5 * MINUTE),
    Timeframe("15m", 15 * MINUTE),
    Timeframe("30m", 30 * MINUTE),
    Timeframe("1h", HOUR),
    Timeframe("2h", 2 * HOUR),
    Timeframe("4h", 4 * HOUR),
    Timeframe("6h", 6 * HOUR),
    Timeframe("8h", 8 * HOUR),
    Timeframe("12h", 12 * HOUR),
    Timeframe("1d", DAY),
    Timeframe("3d", 3 * DAY),
    Timeframe("1w", WEEK),
    Timeframe("1M", 30 * DAY),
)
TIMEFRAMES: Final[dict[str, Timeframe]] = {tf.name: tf for tf in _ALL}
TIMEFRAME_NAMES: Final = tuple(TIMEFRAMES)


def parse_timeframe(name: str) -> Timeframe:
    """The timeframe called ``name`` (case-sensitive: ``1m`` is a minute, ``1M`` a month)."""
    try:
        return TIMEFRAMES[name]
    except (KeyError, TypeError):
        raise TimeframeError(f"unknown timeframe {name!r} (expected one of {' '.join(TIMEFRAME_NAMES)})") from None


def can_derive(base: Timeframe, target: Timeframe) -> bool:
    """True when every ``target`` bucket is an exact union of whole ``base`` buckets."""
    if base == target:
        return False
    if target.is_calendar:
        # Months start at UTC midnight, so any base that divides a day tiles them.
        return not base.is_calendar and DAY % base.seconds == 0
    if base.is_calendar or target.seconds % base.seconds != 0:
        return False
    if target.name == "1w":
        return WEEK % base.seconds == 0 and _WEEK_ORIGIN % base.seconds == 0
    return True
