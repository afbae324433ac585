"""Budget windows: calendar-aligned in UTC (the day resets at 00:00 UTC) or rolling.

A window is stored as buckets of spend. A calendar window is one bucket per period, keyed by
its start. A rolling window is `ROLLING_BUCKETS` buckets of width length/ROLLING_BUCKETS and its
spend is the sum of the buckets that started within the last `length` seconds: a sliding
window accurate to one bucket (1 s for a minute, 24 min for a day).
`WindowSpan` is what the storage backends need: which bucket new spend goes to and which
buckets still count.
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from controller.budget.models import WindowName

ROLLING_BUCKETS = 60
LENGTH_S: dict[str, float] = {
    "minute": 60.0,
    "hour": 3600.0,
    "day": 86400.0,
    "month": 30 * 86400.0,  # rolling month; calendar months use the real month length
}


@dataclass(frozen=True)
class WindowSpan:
    """Where one window stands at `now`.

    bucket: start of the bucket new spend is added to; cutoff: buckets starting before it no
    longer count; start/end: the window's bounds (end = when a calendar window resets, and for
    rolling windows `now`); width: bucket width (rolling) or window length (calendar).
    """

    name: WindowName
    rolling: bool
    start: float
    end: float
    bucket: float
    cutoff: float
    width: float

    def elapsed_fraction(self, now: float) -> float:
        """How much of a calendar window has passed (rolling windows are always 'full')."""
        if self.rolling:
            return 1.0
        return min(1.0, max(0.0, (now - self.start) / (self.end - self.start)))

    def reset_in(self, now: float, oldest_bucket: float | None = None) -> float:
        """Seconds until the window frees budget: the calendar reset, or for a rolling window the
        moment its oldest bucket with spend slides out."""
        if not self.rolling:
            return max(0.0, self.end - now)
        oldest = self.cutoff if oldest_bucket is None else max(oldest_bucket, self.cutoff)
        return max(0.0, oldest + LENGTH_S[self.name] - now)


def calendar_bounds(name: WindowName, now: float) -> tuple[float, float]:
    """UTC calendar bounds [start, end) of the minute/hour/day/month containing `now`."""
    t = datetime.fromtimestamp(now, tz=UTC)
    if name == "minute":
        start = t.replace(second=0, microsecond=0)
        return start.timestamp(), start.timestamp() + 60
    if name == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        return start.timestamp(), start.timestamp() + 3600
    if name == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.timestamp(), start.timestamp() + 86400
    start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    days = calendar.monthrange(t.year, t.month)[1]
    return start.timestamp(), start.timestamp() + days * 86400


_calendar: dict[str, WindowSpan] = {}  # the current calendar window per name (hot path cache)


def span(name: WindowName, rolling: bool, now: float) -> WindowSpan:
    """The window `name` at `now`."""
    if not rolling:
        cached = _calendar.get(name)
        if cached is not None and cached.start <= now < cached.end:
            return cached
        start, end = calendar_bounds(name, now)
        result = WindowSpan(name, False, start, end, start, start, end - start)
        _calendar[name] = result
        return result
    length = LENGTH_S[name]
    width = length / ROLLING_BUCKETS
    bucket = math.floor(now / width) * width
    cutoff = bucket - (ROLLING_BUCKETS - 1) * width
    return WindowSpan(name, True, now - length, now, bucket, cutoff, width)
