"""The demo's report: the cost of one demo run by feature, as a plain-text table."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Count, Q, Sum

from ..models import Event
from ..records import FAILED_STATUSES

ERROR_STATUSES = tuple(sorted(FAILED_STATUSES))


@dataclass
class FeatureCost:
    """One row of the demo's cost table."""

    feature: str
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal | None  # None: nothing in this feature could be priced
    unpriced: int  # calls made but not priced (unknown model)
    p50_latency_ms: float | None


def cost_by_feature(run_id: str) -> list[FeatureCost]:
    """Aggregate the events of one demo run by feature."""
    events = Event.objects.filter(metadata__demo_run=run_id)
    unpriced = (
        Q(cost_usd__isnull=True) & ~Q(cost_source="not-billed") & ~Q(status__in=ERROR_STATUSES)
    )
    rows = (
        events.values("feature")
        .order_by("feature")
        .annotate(
            requests=Count("id"),
            errors=Count("id", filter=Q(status__in=ERROR_STATUSES)),
            tokens_in=Sum("input_tokens"),
            tokens_out=Sum("output_tokens"),
            cost=Sum("cost_usd"),
            n_unpriced=Count("id", filter=unpriced),
        )
    )
    latencies: dict[str, list[float]] = defaultdict(list)
    for feature, latency in events.exclude(latency_ms=None).values_list("feature", "latency_ms"):
        if latency is not None:  # excluded above; this narrows the type
            latencies[feature].append(latency)
    return [
        FeatureCost(
            feature=row["feature"] or "(none)",
            requests=row["requests"],
            errors=row["errors"],
            input_tokens=row["tokens_in"] or 0,
            output_tokens=row["tokens_out"] or 0,
            cost_usd=row["cost"],
            unpriced=row["n_unpriced"],
            p50_latency_ms=(
                statistics.median(latencies[row["feature"]]) if latencies[row["feature"]] else None
            ),
        )
        for row in rows
    ]


def format_cost_table(rows: list[FeatureCost]) -> str:
    """A plain-text table; unpriced calls are counted apart, never shown as $0."""
    header = ("feature", "requests", "errors", "tokens in", "tokens out", "cost (USD)", "p50 ms")
    body = [
        (
            r.feature,
            str(r.requests),
            str(r.errors),
            f"{r.input_tokens:,}",
            f"{r.output_tokens:,}",
            _cost_cell(r.cost_usd, r.unpriced),
            "-" if r.p50_latency_ms is None else f"{r.p50_latency_ms:.0f}",
        )
        for r in rows
    ]
    priced = [r.cost_usd for r in rows if r.cost_usd is not None]
    total = sum(priced, Decimal(0)) if priced else None
    footer = (
        "total",
        str(sum(r.requests for r in rows)),
        str(sum(r.errors for r in rows)),
        f"{sum(r.input_tokens for r in rows):,}",
        f"{sum(r.output_tokens for r in rows):,}",
        _cost_cell(total, sum(r.unpriced for r in rows)),
        "",
    )
    widths = [max(len(line[c]) for line in [header, *body, footer]) for c in range(len(header))]

    def fmt(line: tuple[str, ...]) -> str:
        cells = [line[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join(["Cost by feature", fmt(header), rule, *map(fmt, body), rule, fmt(footer)])


def _cost_cell(cost: Decimal | None, unpriced: int) -> str:
    if cost is None:
        return "unpriced" if unpriced else "-"
    rounded = cost.quantize(Decimal("0.000001"))
    text = "<$0.000001" if rounded == 0 and cost > 0 else f"${rounded}"
    return f"{text} + {unpriced} unpriced" if unpriced else text
