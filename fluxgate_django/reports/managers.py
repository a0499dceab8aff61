"""Query logic of the rollup tables (``UsageRollup.objects.breakdown(...)``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from django.db import models
from django.db.models import Sum

from .histogram import BUCKET_FIELDS

#: Additive counters of a rollup row (every one is summed when rows are combined).
COUNTER_FIELDS: tuple[str, ...] = (
    "requests",
    "errors",
    "budget_blocked",
    "fallbacks",
    "cache_hits",
    "priced",
    "unpriced",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_units",
    "cost_saved_units",
)
MEASURE_FIELDS: tuple[str, ...] = COUNTER_FIELDS + BUCKET_FIELDS

#: Filter names accepted by :meth:`RollupQuerySet.matching` → rollup column.
FILTER_COLUMNS = {
    "team": "team_key",
    "feature": "feature",
    "provider": "provider",
    "model": "model",
    "user": "end_user_id",
}


class RollupQuerySet(models.QuerySet):
    """Rollup rows, narrowed by day range, teams and filters, summed per group."""

    def between(self, start: dt.date, end: dt.date) -> RollupQuerySet:
        """Rows of the days ``start`` … ``end``, both included."""
        return self.filter(day__gte=start, day__lte=end)

    def for_teams(self, teams: Collection[int] | None) -> RollupQuerySet:
        """Rows of these team ids; ``None`` means every row (also those without a team)."""
        if teams is None:
            return self
        return self.filter(team_key__in=list(teams))

    def matching(self, filters: Mapping[str, Sequence[Any]] | None) -> RollupQuerySet:
        """Rows whose column is one of the given values, per filter (team values are ids)."""
        qs = self
        for name, values in (filters or {}).items():
            if values is None:
                continue
            qs = qs.filter(**{f"{FILTER_COLUMNS[name]}__in": list(values)})
        return qs

    def summed_by(self, *columns: str) -> Any:
        """One dict per distinct ``columns`` value with every measure summed."""
        return (
            self.order_by()
            .values(*columns)
            .annotate(**{f"sum_{name}": Sum(name) for name in MEASURE_FIELDS})
        )

    def breakdown(
        self,
        by: str,
        start: dt.date,
        end: dt.date,
        *,
        teams: Collection[int] | None = None,
        filters: Mapping[str, Sequence[Any]] | None = None,
    ) -> Any:
        """Summed measures per value of the rollup column ``by`` (rows of dicts)."""
        return self.between(start, end).for_teams(teams).matching(filters).summed_by(by)
