"""Cost reports: rollups kept by the recorder, and the query layer over them.

The admin report page, ``manage.py fluxgate_report`` and the REST API all call
:mod:`fluxgate_django.reports.queries`, so they show the same numbers::

    from fluxgate_django.reports import breakdown, visible_teams, last_days

    start, end = last_days(30)
    report = breakdown("feature", start, end, teams=visible_teams(request.user))
    report.as_dict()  # {"by", "start", "end", "rows": [...], "total": {...}}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .queries import (
        DIMENSIONS,
        EXPORT_COLUMNS,
        FILTERS,
        MIN_COMPARED,
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
        user_labels,
        visible_teams,
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
    "preset_range",
    "resolve_filters",
    "site_today",
    "timeseries",
    "user_labels",
    "visible_teams",
]


def __getattr__(name: str) -> Any:
    # Lazy, like the package root: importing a submodule (models imports .histogram)
    # must not import the query layer, which sits above the models.
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(".queries", __name__), name)
    globals()[name] = value
    return value
