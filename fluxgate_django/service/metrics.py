"""Per provider and model metrics over a recent window, read from the events table.

Every process's calls are events, so these numbers are the whole site's, not one
process's counters: requests, failures, error rate, p50/p95 latency, cache hit rate,
cost and savings (response cache plus provider prompt caching).
"""

from __future__ import annotations

import datetime as dt
import statistics
from decimal import Decimal
from typing import Any

from django.db.models import Count, Q, Sum
from django.utils import timezone

from ..models import Event
from ..records import FAILED_STATUSES, Status

FAILED = tuple(sorted(FAILED_STATUSES))
#: Latency samples read per model for the percentiles (the newest ones).
MAX_SAMPLES = 5000


def provider_metrics(
    minutes: int = 60, *, teams: list[int] | None = None, now: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """One dict per (provider, model) seen in the last ``minutes``; ``teams`` restricts
    to those team ids (None: all)."""
    since = (now or timezone.now()) - dt.timedelta(minutes=minutes)
    events = Event.objects.filter(created_at__gte=since).exclude(
        status=Status.BUDGET_EXCEEDED.value
    )
    if teams is not None:
        events = events.filter(team_id__in=teams)
    groups = (
        events.values("provider", "model")
        .annotate(
            requests=Count("id"),
            failures=Count("id", filter=Q(status__in=FAILED)),
            cache_hits=Count("id", filter=Q(cache_hit=True)),
            fallbacks=Count("id", filter=Q(fallback_attempt__gt=0)),
            cost=Sum("cost_usd"),
            saved=Sum("cost_saved_usd"),
        )
        .order_by("provider", "model")
    )
    rows = []
    for group in groups:
        samples = (
            events.filter(
                provider=group["provider"],
                model=group["model"],
                latency_ms__isnull=False,
                cache_hit=False,
            )
            .order_by("-created_at")
            .values_list("latency_ms", flat=True)[:MAX_SAMPLES]
        )
        latencies = [float(latency) for latency in samples if latency is not None]
        requests = group["requests"]
        rows.append(
            {
                "provider": group["provider"],
                "model": group["model"],
                "requests": requests,
                "failures": group["failures"],
                "error_rate": round(group["failures"] / requests, 4) if requests else 0.0,
                "p50_latency_ms": _percentile(latencies, 50),
                "p95_latency_ms": _percentile(latencies, 95),
                "cache_hit_rate": round(group["cache_hits"] / requests, 4) if requests else 0.0,
                "fallbacks": group["fallbacks"],
                "cost_usd": group["cost"] or Decimal(0),
                "saved_usd": group["saved"] or Decimal(0),
            }
        )
    return rows


def _percentile(values: list[float], pct: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[pct - 1], 1)
