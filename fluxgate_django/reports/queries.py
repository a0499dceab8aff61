"""The report query layer: what the admin page, ``manage.py fluxgate_report`` and the REST
API all call, so they show the same numbers.

Every function reads the rollup tables (never the events). Dates are ``datetime.date``
values in the site's time zone (``TIME_ZONE``) and ranges include both ``start`` and
``end``. ``teams`` restricts the report to those team ids; ``None`` means every event,
including those without a team (callers get it from :func:`visible_teams`). ``filters``
maps ``team`` (slugs, or ids as ints), ``feature``, ``provider``, ``model`` and ``user``
(end-user ids) to the values to keep; several filters combine with AND.

Definitions (see also :class:`~fluxgate_django.models.RollupBase`):

* ``requests``: calls sent to a provider or served from the response cache. Calls a
  budget refused (``BUDGET_EXCEEDED``) are counted apart as ``budget_blocked``, and in
  no rate, latency, token or cost figure.
* ``error_rate``: ERROR and MALFORMED_REQUEST calls / requests; ``fallback_rate``: calls
  that were a fallback attempt (``fallback_attempt > 0``) / requests; ``cache_hit_rate``:
  response-cache hits / requests.
* ``cost_usd``: the sum of the known costs; ``None`` when there are unpriced calls and no
  priced one (shown as "unpriced", never as $0). ``unpriced`` counts the calls whose
  price is unknown. ``cost_per_request_usd``: cost / the requests whose cost is known
  (failed calls that were not billed count as $0).
* ``p50/p95_latency_ms``: from the latency histogram (see
  :mod:`fluxgate_django.reports.histogram` for the error bound).
* ``share_of_cost``: the row's cost / the cost of all rows of the report.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from .managers import FILTER_COLUMNS, MEASURE_FIELDS
from .results import (
    EXPORT_COLUMNS,
    Breakdown,
    BreakdownRow,
    BudgetState,
    Series,
    Timeseries,
    plain_decimal,
    sum_rows,
    usd_from_units,
)

__all__ = [
    "DIMENSIONS",
    "EXPORT_COLUMNS",
    "FILTERS",
    "MIN_COMPARED",
    "PRESETS",
    "Breakdown",
    "BreakdownRow",
    "BudgetState",
    "Series",
    "Timeseries",
    "breakdown",
    "budget_state",
    "compare",
    "filter_choices",
    "last_days",
    "plain_decimal",
    "preset_range",
    "resolve_filters",
    "site_today",
    "timeseries",
    "user_labels",
    "visible_teams",
]

#: Report dimensions (``?by=``) → rollup column.
DIMENSIONS: dict[str, str] = {
    "feature": "feature",
    "team": "team_key",
    "model": "model",
    "provider": "provider",
    "user": "end_user_id",
    "day": "day",
}
FILTERS = tuple(FILTER_COLUMNS)
#: Date range presets (``?range=``): name → label.
PRESETS: dict[str, str] = {
    "today": "Today",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "month": "This month",
}
DEFAULT_PRESET = "30d"
#: The fewest features a comparison takes.
MIN_COMPARED = 2

_EMPTY_LABELS = {
    "feature": "(no feature)",
    "team": "(no team)",
    "model": "(unknown model)",
    "provider": "(unknown provider)",
    "user": "(anonymous)",
}

# -- permissions and dates -----------------------------------------------------------------


def visible_teams(user: Any) -> list[int] | None:
    """The team ids whose costs ``user`` may see; ``None`` means all of them.

    Superusers see everything, events without a team included (as in the admin, whose
    pages scope everyone else by team: ``view_event`` only lets a team admin read their
    own teams' events). Anyone else sees the teams they are an admin of (``TeamMembership.role``
    ``admin``), possibly none. Anonymous and inactive users see nothing.
    """
    if user is None or not user.is_authenticated or not user.is_active:
        return []
    if user.is_superuser:
        return None
    from ..models import TeamMembership

    return sorted(
        TeamMembership.objects.filter(user=user, role=TeamMembership.Role.ADMIN).values_list(
            "team_id", flat=True
        )
    )


def site_today() -> dt.date:
    """Today in the site's time zone (the rollups' days), whatever zone is active."""
    if settings.USE_TZ:
        return timezone.localdate(timezone=timezone.get_default_timezone())
    return dt.date.today()


def preset_range(preset: str, today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    """``(start, end)`` of a preset: ``today``, ``7d`` and ``30d`` (the last 7 or 30 days,
    today included) or ``month`` (the 1st of this month to today)."""
    today = today or site_today()
    if preset == "today":
        return today, today
    if preset == "7d":
        return last_days(7, today)
    if preset == "30d":
        return last_days(30, today)
    if preset == "month":
        return today.replace(day=1), today
    raise ValueError(f"unknown date range preset {preset!r} (one of {', '.join(PRESETS)})")


def last_days(days: int, today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    """The last ``days`` days, today included."""
    if days < 1:
        raise ValueError("days must be at least 1")
    today = today or site_today()
    return today - dt.timedelta(days=days - 1), today


# -- queries -------------------------------------------------------------------------------


def _rollups(by: str, filters: Mapping[str, Any]) -> Any:
    """The per-user table when the report is by user or filters users; else the smaller one."""
    from ..models import EndUserUsageRollup, UsageRollup

    if by == "user" or "user" in filters:
        return EndUserUsageRollup.objects
    return UsageRollup.objects


def resolve_filters(
    filters: Mapping[str, Iterable[Any] | str | None] | None,
) -> dict[str, list[Any]]:
    """Validated filters with team slugs turned into ids (an unknown slug matches nothing)."""
    resolved: dict[str, list[Any]] = {}
    for name, values in (filters or {}).items():
        if name not in FILTER_COLUMNS:
            raise ValueError(f"unknown filter {name!r} (one of {', '.join(FILTERS)})")
        if values is None:
            continue
        values = [values] if isinstance(values, (str, int)) else list(values)
        if name == "team":
            values = _team_ids(values)
        resolved[name] = [str(v) for v in values] if name != "team" else values
    return resolved


def _team_ids(values: list[Any]) -> list[int]:
    from ..models import Team

    ids = [v for v in values if isinstance(v, int)]
    slugs = [v for v in values if isinstance(v, str) and v]
    if "" in values:
        ids.append(0)  # "" selects the events without a team
    if slugs:
        ids += Team.objects.filter(slug__in=slugs).values_list("id", flat=True)
    return ids


def _check(by: str, start: dt.date, end: dt.date) -> str:
    if by not in DIMENSIONS:
        raise ValueError(f"unknown dimension {by!r} (one of {', '.join(DIMENSIONS)})")
    if start > end:
        raise ValueError(f"start {start} is after end {end}")
    return DIMENSIONS[by]


def _labels(by: str, keys: Iterable[Any]) -> dict[Any, tuple[str, str]]:
    """Rollup column value → (key, label) for display and export."""
    keys = list(keys)
    if by == "day":
        return {k: (k.isoformat(), k.isoformat()) for k in keys}
    if by == "team":
        from ..models import Team

        teams = {t.id: t for t in Team.objects.filter(id__in=[k for k in keys if k])}
        out: dict[Any, tuple[str, str]] = {}
        for k in keys:
            team = teams.get(k)
            if not k:
                out[k] = ("", _EMPTY_LABELS["team"])
            elif team is None:
                out[k] = (f"#{k}", f"(deleted team #{k})")
            else:
                out[k] = (team.slug, team.name)
        return out
    if by == "user":
        names = user_labels(keys)
        return {k: (k, names.get(k) or k or _EMPTY_LABELS["user"]) for k in keys}
    return {k: (k, k or _EMPTY_LABELS[by]) for k in keys}


def user_labels(end_user_ids: Iterable[str]) -> dict[str, str]:
    """``{end_user_id: label}`` for the ids that are the site's own users: their
    username (``get_username()``, the ``USERNAME_FIELD``), with the e-mail address in
    brackets when the user model has one and it says something more. One query for all
    of them, whatever their number.

    An event of a Django user has ``end_user_id == str(user.pk)``; an id counts as a
    user's only if that user has events carrying it, so an API client's own end-user
    id ``"7"`` is not shown as the site's user 7. Other ids are left out (their label
    is the id itself)."""
    from django.contrib.auth import get_user_model
    from django.core.exceptions import ValidationError
    from django.db.models import Exists, OuterRef

    from ..models import Event
    from ..teams import email_field_name

    user_model = get_user_model()
    pks: dict[Any, str] = {}
    for key in end_user_ids:
        if not key:
            continue
        try:
            pks[user_model._meta.pk.to_python(key)] = key
        except (ValidationError, TypeError, ValueError):
            continue
    if not pks:
        return {}
    username_field = user_model.USERNAME_FIELD
    email_field = email_field_name() or ""
    fields = ["pk", username_field, *([email_field] if email_field != username_field else [])]
    own_events = Event.objects.filter(user_id=OuterRef("pk"), end_user_id__in=list(pks.values()))
    users = (
        user_model._default_manager.filter(pk__in=list(pks))
        .filter(Exists(own_events))
        .only(*[f for f in fields if f and f != "pk"])
    )
    labels: dict[str, str] = {}
    for user in users:
        end_user_id = pks.get(user.pk)
        if end_user_id is None:
            continue
        name = str(user.get_username() or "") or end_user_id
        email = str(getattr(user, email_field, "") or "") if email_field else ""
        labels[end_user_id] = f"{name} ({email})" if email and email != name else name
    return labels


def breakdown(
    by: str,
    start: dt.date,
    end: dt.date,
    *,
    teams: Collection[int] | None = None,
    filters: Mapping[str, Iterable[Any] | str | None] | None = None,
) -> Breakdown:
    """Totals per feature, team, model, provider, user (end user) or day.

    Rows are ordered by cost, then requests (most first); by day, by date.
    """
    column = _check(by, start, end)
    resolved = resolve_filters(filters)
    grouped = list(
        _rollups(by, resolved).breakdown(column, start, end, teams=teams, filters=resolved)
    )
    labels = _labels(by, (g[column] for g in grouped))
    rows = [
        BreakdownRow.from_measures(
            *labels[g[column]], [g[f"sum_{name}"] or 0 for name in MEASURE_FIELDS]
        )
        for g in grouped
    ]
    total = sum_rows("", "Total", rows)
    rows = [_with_share(row, total.cost_units) for row in rows]
    if by == "day":
        rows.sort(key=lambda r: r.key)
    else:
        rows.sort(key=lambda r: (-r.cost_units, -r.requests, r.key))
    return Breakdown(by, start, end, rows, _with_share(total, total.cost_units))


def _with_share(row: BreakdownRow, total_units: int) -> BreakdownRow:
    share = row.cost_units / total_units if total_units else None
    return dataclasses.replace(row, share_of_cost=share)


def compare(
    features: Sequence[str],
    start: dt.date,
    end: dt.date,
    *,
    teams: Collection[int] | None = None,
    filters: Mapping[str, Iterable[Any] | str | None] | None = None,
) -> Breakdown:
    """``features`` side by side (an A/B test): a by-feature breakdown restricted to them,
    with rows in the order given (a feature without calls gets an empty row) and shares
    of the compared features' total.

    Raises ``ValueError`` for fewer than two different features: a comparison of one is
    its breakdown row."""
    features = list(dict.fromkeys(features))
    if len(features) < MIN_COMPARED:
        raise ValueError(
            f"Compare at least {MIN_COMPARED} different features (got "
            f"{', '.join(map(repr, features)) or 'none'})."
        )
    report = breakdown(
        "feature", start, end, teams=teams, filters={**(filters or {}), "feature": features}
    )
    found = {row.key: row for row in report.rows}
    rows = [
        found.get(name) or BreakdownRow(key=name, label=name or _EMPTY_LABELS["feature"])
        for name in features
    ]
    return dataclasses.replace(report, rows=rows)


def timeseries(
    by: str,
    start: dt.date,
    end: dt.date,
    *,
    teams: Collection[int] | None = None,
    filters: Mapping[str, Iterable[Any] | str | None] | None = None,
    top: int = 8,
) -> Timeseries:
    """Cost per day (every day of the range) split by ``by``: the ``top - 1`` costliest
    groups and "Other" when there are more than ``top``; one series when ``by="day"``."""
    column = _check(by, start, end)
    resolved = resolve_filters(filters)
    qs = _rollups(by, resolved).between(start, end).for_teams(teams).matching(resolved).order_by()
    group = column if by != "day" else None
    cells: dict[Any, dict[dt.date, int]] = {}
    for row in qs.values("day", *([group] if group else [])).annotate(cost=Sum("cost_units")):
        per_day = cells.setdefault(row[group] if group else "", {})
        per_day[row["day"]] = per_day.get(row["day"], 0) + (row["cost"] or 0)
    days = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
    ranked = sorted(cells, key=lambda k: (-sum(cells[k].values()), str(k)))
    if group is None:
        return Timeseries(
            by,
            days,
            [Series("", "Cost", [usd_from_units(cells.get("", {}).get(d, 0)) for d in days])],
        )
    shown, rest = (ranked, []) if len(ranked) <= top else (ranked[: top - 1], ranked[top - 1 :])
    labels = _labels(by, shown)
    series = [Series(*labels[k], [usd_from_units(cells[k].get(d, 0)) for d in days]) for k in shown]
    if rest:
        other = [sum(cells[k].get(d, 0) for k in rest) for d in days]
        series.append(
            Series("__other__", f"Other ({len(rest)})", [usd_from_units(u) for u in other])
        )
    return Timeseries(by, days, series)


def budget_state(teams: Collection[int] | None = None) -> list[BudgetState]:
    """Every budget of these teams (all when None) with its current window's spend."""
    from ..models import Budget, SpendCounter
    from ..periods import window_start

    rows = Budget.objects.select_related("team").order_by("team__name", "feature", "period")
    if teams is not None:
        rows = rows.filter(team_id__in=list(teams))
    budgets = list(rows)
    windows = {period: window_start(period) for period in Budget.Period.values}
    counters = {
        (c.budget_id, c.window_start): c
        for c in SpendCounter.objects.filter(
            budget__in=budgets, window_start__in=set(windows.values())
        )
    }
    states = []
    for b in budgets:
        start = windows[b.period]
        counter = counters.get((b.id, start))
        states.append(
            BudgetState(
                budget_id=b.id,
                team_id=b.team_id,
                team_slug=b.team.slug,
                team_name=b.team.name,
                feature=b.feature,
                period=b.period,
                action=b.action,
                window_start=start,
                limit_usd=Decimal(b.limit_usd),
                spent_usd=counter.spent if counter else Decimal(0),
                reserved_usd=counter.reserved if counter else Decimal(0),
                alert_threshold_percent=b.alert_threshold_percent,
            )
        )
    return states


def filter_choices(
    teams: Collection[int] | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> dict[str, list[Any]]:
    """Values seen in the rollups of these teams (between ``start`` and ``end`` if given),
    for filter menus: ``feature``, ``provider``, ``model`` (strings) and ``team``
    (``(slug, name)`` pairs, every visible team)."""
    from ..models import Team, UsageRollup

    rollups = UsageRollup.objects.for_teams(teams).order_by()
    if start is not None:
        rollups = rollups.filter(day__gte=start)
    if end is not None:
        rollups = rollups.filter(day__lte=end)
    team_rows = Team.objects.order_by("name")
    if teams is not None:
        team_rows = team_rows.filter(id__in=list(teams))
    choices: dict[str, list[Any]] = {
        "team": [(t.slug, t.name) for t in team_rows],
    }
    for name in ("feature", "provider", "model"):
        choices[name] = sorted(rollups.values_list(name, flat=True).distinct())
    return choices
