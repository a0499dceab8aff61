"""Budget windows (a day or a month) in the site's time zone (``settings.TIME_ZONE``).

Works with ``USE_TZ`` on or off. On, a window is the site-local date of an aware time
(whatever time zone a request activated: every user shares the site's windows). Off,
datetimes are naive local times of the server (``TIME_ZONE``, which Django makes the
process's time zone) and the window is the date of ``now`` as it stands.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.utils import timezone


def local_date(now: dt.datetime | None = None) -> dt.date:
    """The site-local date of ``now`` (default: the current time); a naive ``now`` is
    taken as a site-local time already."""
    now = now or timezone.now()
    if timezone.is_naive(now):
        return now.date()
    return timezone.localtime(now, timezone.get_default_timezone()).date()


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
    tz = timezone.get_default_timezone()
    return timezone.make_aware(lower, tz), timezone.make_aware(upper, tz)
