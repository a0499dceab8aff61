"""Budget windows (a day or a month) in the site's time zone.

Works with ``USE_TZ`` on or off: with it off, datetimes are naive local times and the
window is the local date of ``now``.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.utils import timezone


def local_date(now: dt.datetime | None = None) -> dt.date:
    """The site-local date of ``now`` (default: the current time)."""
    now = now or timezone.now()
    if timezone.is_naive(now):
        return now.date()
    return timezone.localtime(now).date()


def window_start(period: str, now: dt.datetime | None = None) -> dt.date:
    """First day of the budget window containing ``now``, in the site's time zone."""
    today = local_date(now)
    return today if period == "day" else today.replace(day=1)


def window_end(period: str, start: dt.date) -> dt.date:
    """The first day after the window that starts on ``start``."""
    if period == "day":
        return start + dt.timedelta(days=1)
    return (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def window_bounds(period: str, start: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """The window as datetimes: aware in the site's time zone, or naive with USE_TZ off."""
    end = window_end(period, start)
    lower = dt.datetime.combine(start, dt.time.min)
    upper = dt.datetime.combine(end, dt.time.min)
    if not settings.USE_TZ:
        return lower, upper
    tz = timezone.get_current_timezone()
    return timezone.make_aware(lower, tz), timezone.make_aware(upper, tz)
