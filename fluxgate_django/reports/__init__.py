"""Cost reports: rollups kept by the recorder, and the query layer over them.

The admin report page, ``manage.py fluxgate_report`` and the REST API all call
:mod:`fluxgate_django.reports.queries`, so they show the same numbers::

    from fluxgate_django.reports import breakdown, visible_teams, last_days

    start, end = last_days(30)
    report = breakdown("feature", start, end, teams=visible_teams(request.user))
    report.as_dict()  # {"by", "start", "end", "rows": [...], "total": {...}}
"""

from .queries import (
    DIMENSIONS,
    EXPORT_COLUMNS,
    FILTERS,
    PRESETS,
    Breakdown,
    BreakdownRow,
    BudgetState,
    Series,
    Timeseries,
    breakdown,
    budget_state,
    compare,
    filter_choices,
    last_days,
    preset_range,
    resolve_filters,
    site_today,
    timeseries,
    visible_teams,
)

__all__ = [
    "DIMENSIONS",
    "EXPORT_COLUMNS",
    "FILTERS",
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
    "preset_range",
    "resolve_filters",
    "site_today",
    "timeseries",
    "visible_teams",
]
