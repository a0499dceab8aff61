"""What the report queries return: rows of totals, whole reports, chart series and
budget states, each with ``as_dict()`` for CSV, JSON and the REST API."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any

from ..money import MONEY_UNIT, from_units
from .histogram import BUCKET_COUNT, quantile
from .managers import COUNTER_FIELDS, MEASURE_FIELDS

#: The columns of a row in CSV, JSON and API output, in order.
EXPORT_COLUMNS: tuple[str, ...] = (
    "key",
    "label",
    "requests",
    "errors",
    "error_rate",
    "fallbacks",
    "fallback_rate",
    "cache_hits",
    "cache_hit_rate",
    "budget_blocked",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "unpriced",
    "cost_per_request_usd",
    "cost_saved_usd",
    "p50_latency_ms",
    "p95_latency_ms",
    "share_of_cost",
)

_MONEY_UNIT = MONEY_UNIT
usd_from_units = from_units


def plain_decimal(value: Decimal) -> str:
    """``Decimal("4.50E-3")`` → ``"0.0045"``; ``0E-10`` → ``"0"``."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


# -- results -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BreakdownRow:
    """The totals of one group of a report (or of the whole report)."""

    key: str
    label: str
    requests: int = 0
    errors: int = 0
    budget_blocked: int = 0
    fallbacks: int = 0
    cache_hits: int = 0
    priced: int = 0
    unpriced: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_units: int = 0
    cost_saved_units: int = 0
    latency_histogram: tuple[int, ...] = (0,) * BUCKET_COUNT
    #: This row's cost / the report's total cost (None when the total is 0).
    share_of_cost: float | None = None

    @classmethod
    def from_measures(cls, key: str, label: str, measures: Sequence[int]) -> BreakdownRow:
        """A row from summed measures in ``MEASURE_FIELDS`` order."""
        counters = dict(zip(COUNTER_FIELDS, measures, strict=False))
        return cls(
            key=key,
            label=label,
            latency_histogram=tuple(measures[len(COUNTER_FIELDS) :]),
            **counters,
        )

    @property
    def measures(self) -> tuple[int, ...]:
        return (*(getattr(self, name) for name in COUNTER_FIELDS), *self.latency_histogram)

    @property
    def cost_usd(self) -> Decimal | None:
        """Known cost; None when nothing was priced but some calls were unpriced."""
        if self.priced == 0 and self.unpriced:
            return None
        return usd_from_units(self.cost_units)

    @property
    def cost_saved_usd(self) -> Decimal:
        return usd_from_units(self.cost_saved_units)

    @property
    def cost_per_request_usd(self) -> Decimal | None:
        known = self.requests - self.unpriced
        if not known or self.cost_usd is None:
            return None
        return (usd_from_units(self.cost_units) / known).quantize(_MONEY_UNIT).normalize()

    @property
    def error_rate(self) -> float | None:
        return _rate(self.errors, self.requests)

    @property
    def fallback_rate(self) -> float | None:
        return _rate(self.fallbacks, self.requests)

    @property
    def cache_hit_rate(self) -> float | None:
        return _rate(self.cache_hits, self.requests)

    @property
    def p50_latency_ms(self) -> float | None:
        return quantile(self.latency_histogram, 0.5)

    @property
    def p95_latency_ms(self) -> float | None:
        return quantile(self.latency_histogram, 0.95)

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON-safe values (``EXPORT_COLUMNS``): money as decimal strings,
        rates as fractions rounded to 4 places, latencies in ms rounded to 0.1."""

        def money(value: Decimal | None) -> str | None:
            return None if value is None else plain_decimal(value)

        def fraction(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value, 1)

        return {
            "key": self.key,
            "label": self.label,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": fraction(self.error_rate),
            "fallbacks": self.fallbacks,
            "fallback_rate": fraction(self.fallback_rate),
            "cache_hits": self.cache_hits,
            "cache_hit_rate": fraction(self.cache_hit_rate),
            "budget_blocked": self.budget_blocked,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_usd": money(self.cost_usd),
            "unpriced": self.unpriced,
            "cost_per_request_usd": money(self.cost_per_request_usd),
            "cost_saved_usd": money(self.cost_saved_usd),
            "p50_latency_ms": ms(self.p50_latency_ms),
            "p95_latency_ms": ms(self.p95_latency_ms),
            "share_of_cost": fraction(self.share_of_cost),
        }


def sum_rows(key: str, label: str, rows: Iterable[BreakdownRow]) -> BreakdownRow:
    """One row with the measures of ``rows`` added up."""
    totals = [0] * len(MEASURE_FIELDS)
    for row in rows:
        for i, value in enumerate(row.measures):
            totals[i] += value
    return BreakdownRow.from_measures(key, label, totals)


@dataclasses.dataclass(frozen=True)
class Breakdown:
    """A report: one row per value of ``by``, and their total."""

    by: str
    start: dt.date
    end: dt.date
    rows: list[BreakdownRow]
    total: BreakdownRow

    def __iter__(self) -> Iterator[BreakdownRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe: ``{"by", "start", "end", "rows": [...], "total": {...}}``."""
        return {
            "by": self.by,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "rows": [row.as_dict() for row in self.rows],
            "total": self.total.as_dict(),
        }


@dataclasses.dataclass(frozen=True)
class Series:
    """One stacked series of a daily chart: cost per day of one group."""

    key: str
    label: str
    costs: list[Decimal]

    @property
    def total(self) -> Decimal:
        return sum(self.costs, Decimal(0))


@dataclasses.dataclass(frozen=True)
class Timeseries:
    """Daily cost from ``start`` to ``end`` (every day), split into series by ``by``."""

    by: str
    days: list[dt.date]
    series: list[Series]

    @property
    def day_totals(self) -> list[Decimal]:
        return [sum((s.costs[i] for s in self.series), Decimal(0)) for i in range(len(self.days))]

    def as_dict(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "days": [d.isoformat() for d in self.days],
            "series": [
                {"key": s.key, "label": s.label, "costs": [plain_decimal(c) for c in s.costs]}
                for s in self.series
            ],
        }


@dataclasses.dataclass(frozen=True)
class BudgetState:
    """A budget and its current window's spend."""

    budget_id: int
    team_id: int
    team_slug: str
    team_name: str
    feature: str
    period: str
    action: str
    window_start: dt.date
    limit_usd: Decimal
    spent_usd: Decimal
    reserved_usd: Decimal
    alert_threshold_percent: int

    @property
    def percent_used(self) -> Decimal:
        if not self.limit_usd:
            return Decimal(0)
        return (self.spent_usd * 100 / self.limit_usd).quantize(Decimal("0.1"))

    @property
    def state(self) -> str:
        """``ok``, ``alert`` (past the alert threshold) or ``over`` (limit reached)."""
        if self.percent_used >= 100:
            return "over"
        if self.percent_used >= self.alert_threshold_percent:
            return "alert"
        return "ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "budget_id": self.budget_id,
            "team": self.team_slug,
            "feature": self.feature,
            "period": self.period,
            "action": self.action,
            "window_start": self.window_start.isoformat(),
            "limit_usd": plain_decimal(self.limit_usd),
            "spent_usd": plain_decimal(self.spent_usd),
            "reserved_usd": plain_decimal(self.reserved_usd),
            "percent_used": str(self.percent_used),
            "state": self.state,
        }
