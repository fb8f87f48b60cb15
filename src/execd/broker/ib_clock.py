"""IB has no market-clock call: the regular US equity session, computed locally
(09:30-16:00 New York, weekdays; holidays and half days are not known: docs/design.md)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from execd.broker.base import MarketClock

NEW_YORK = ZoneInfo("America/New_York")
OPEN, CLOSE = time(9, 30), time(16, 0)


def _at(d: date, t: time) -> datetime:
    return datetime.combine(d, t, NEW_YORK)


def _next_weekday(d: date) -> date:
    d += timedelta(days=1)
    while d.weekday() >= 5:
        d += timedelta(days=1)
    return d


def regular_session(now: datetime) -> MarketClock:
    local = now.astimezone(NEW_YORK)
    day = local.date()
    trading_day = local.weekday() < 5
    if trading_day and _at(day, OPEN) <= local < _at(day, CLOSE):
        return MarketClock(is_open=True, next_open=_at(_next_weekday(day), OPEN),
                           next_close=_at(day, CLOSE))
    if trading_day and local < _at(day, OPEN):
        return MarketClock(is_open=False, next_open=_at(day, OPEN),
                           next_close=_at(day, CLOSE))
    nxt = _next_weekday(day)
    return MarketClock(is_open=False, next_open=_at(nxt, OPEN), next_close=_at(nxt, CLOSE))


def ib_day(now: float) -> str:
    """The IB day an epoch time falls on: the New York date (IB's look-ups reach back to
    the start of it: executions since midnight, completed orders of today's session)."""
    return datetime.fromtimestamp(now, NEW_YORK).date().isoformat()
