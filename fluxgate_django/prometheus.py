"""``GET fluxgate/metrics``: the site's LLM figures in Prometheus' text format.

Read from the database — the daily rollups, the budget counters — and the circuit state
in Django's cache, so every process answers with the same numbers (there is no
per-process registry to scrape from each worker). Needs ``prometheus_client``
(``pip install 'django-fluxgate[prometheus]'``); without it the endpoint answers 501.

Series (labels ``team`` — the slug, ``""`` for events without a team —, ``feature``,
``provider``, ``model``; never a user or request id):

* ``fluxgate_cost_usd_total``, ``fluxgate_cost_saved_usd_total`` (counters, USD);
* ``fluxgate_tokens_total{type=input|output|cache_read|cache_write|reasoning}``;
* ``fluxgate_requests_total{status=success|error|budget_exceeded}``, and
  ``fluxgate_cache_hits_total``, ``fluxgate_fallbacks_total``;
* ``fluxgate_request_latency_seconds`` (histogram; the rollups' latency buckets, so
  ``histogram_quantile`` works; no ``_sum``: the rollups keep counts, not a sum);
* ``fluxgate_budget_limit_usd``, ``fluxgate_budget_spent_usd``,
  ``fluxgate_budget_reserved_usd`` (gauges of the window in force; labels ``team``,
  ``feature``, ``period``, ``budget``);
* ``fluxgate_circuit_open{target}`` (1 open, 0.5 half-open, 0 closed) for every model the
  routes name.

Counters are totals over the rollups kept (``RETENTION`` prunes events, not rollups); a
rollup rebuild that changes history looks to Prometheus like a counter reset.

Who may read it: a superuser's session, or an address in ``METRICS_ALLOWED_IPS`` (a
scraper's; CIDR networks allowed) — the whole site; another staff user's session — the
teams they belong to; an API key with ``may_read_metrics`` — its own team. Others: 403.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from typing import Any

from django.db.models import Sum
from django.http import HttpResponse
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from .api.base import FluxGateAPIView
from .api.permissions import api_key_of, is_staff, teams_for
from .conf import fluxgate_settings
from .models import Budget, SpendCounter, Team, UsageRollup
from .money import from_units
from .periods import window_start
from .reports.histogram import BUCKET_FIELDS, EDGES_MS
from .service import LLMService

try:  # optional: pip install prometheus_client
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
except ImportError:  # pragma: no cover - exercised where the package is absent
    generate_latest = None  # type: ignore[assignment]

GROUP = ("team", "feature", "provider", "model")
TOKEN_TYPES = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_read": "cache_read_tokens",
    "cache_write": "cache_write_tokens",
    "reasoning": "reasoning_tokens",
}
_SUMMED = (
    "requests",
    "errors",
    "budget_blocked",
    "fallbacks",
    "cache_hits",
    "cost_units",
    "cost_saved_units",
    *TOKEN_TYPES.values(),
    *BUCKET_FIELDS,
)
_LE = (*(repr(edge / 1000) for edge in EDGES_MS), "+Inf")
_CIRCUIT = {"open": 1.0, "half_open": 0.5, "half-open": 0.5}


class FluxGateCollector:
    """A ``prometheus_client`` collector over the rollups, counters and circuits of
    ``team_ids`` (None: every team, and events without one)."""

    def __init__(self, team_ids: list[int] | None) -> None:
        self.team_ids = team_ids

    def collect(self) -> Iterator[Any]:
        slugs = dict(Team.objects.values_list("id", "slug"))
        yield from self._usage(slugs)
        yield from self._budgets(slugs)
        yield from self._circuits()

    def _usage(self, slugs: dict[int, str]) -> Iterator[Any]:
        rollups = UsageRollup.objects.all()
        if self.team_ids is not None:
            rollups = rollups.filter(team_key__in=self.team_ids)
        rows: Any = (
            rollups.values("team_key", "feature", "provider", "model")
            .annotate(**{f"s_{name}": Sum(name) for name in _SUMMED})
            .order_by("team_key", "feature", "provider", "model")
        )
        cost = CounterMetricFamily("fluxgate_cost_usd", "Cost of LLM calls in USD.", labels=GROUP)
        saved = CounterMetricFamily(
            "fluxgate_cost_saved_usd",
            "USD saved by the response cache and provider prompt caching.",
            labels=GROUP,
        )
        tokens = CounterMetricFamily("fluxgate_tokens", "Tokens by type.", labels=(*GROUP, "type"))
        requests = CounterMetricFamily(
            "fluxgate_requests", "LLM calls by outcome.", labels=(*GROUP, "status")
        )
        cache_hits = CounterMetricFamily(
            "fluxgate_cache_hits", "Calls served from the response cache.", labels=GROUP
        )
        fallbacks = CounterMetricFamily(
            "fluxgate_fallbacks", "Calls made as a fallback attempt.", labels=GROUP
        )
        latency = HistogramMetricFamily(
            "fluxgate_request_latency_seconds", "Latency of LLM calls.", labels=GROUP
        )
        for row in rows:
            labels = [
                slugs.get(row["team_key"], str(row["team_key"])) if row["team_key"] else "",
                row["feature"],
                row["provider"],
                row["model"],
            ]
            total = {name: row[f"s_{name}"] or 0 for name in _SUMMED}
            cost.add_metric(labels, float(from_units(total["cost_units"])))
            saved.add_metric(labels, float(from_units(total["cost_saved_units"])))
            for kind, field in TOKEN_TYPES.items():
                tokens.add_metric([*labels, kind], total[field])
            requests.add_metric([*labels, "success"], total["requests"] - total["errors"])
            requests.add_metric([*labels, "error"], total["errors"])
            requests.add_metric([*labels, "budget_exceeded"], total["budget_blocked"])
            cache_hits.add_metric(labels, total["cache_hits"])
            fallbacks.add_metric(labels, total["fallbacks"])
            latency.add_metric(
                labels, list(zip(_LE, _cumulative(total, BUCKET_FIELDS), strict=True)), None
            )
        yield from (cost, saved, tokens, requests, cache_hits, fallbacks, latency)

    def _budgets(self, slugs: dict[int, str]) -> Iterator[Any]:
        labels = ("team", "feature", "period", "budget")
        limit = GaugeMetricFamily("fluxgate_budget_limit_usd", "Budget limit.", labels=labels)
        spent = GaugeMetricFamily(
            "fluxgate_budget_spent_usd", "Spent in the budget's current window.", labels=labels
        )
        reserved = GaugeMetricFamily(
            "fluxgate_budget_reserved_usd",
            "Reserved by calls in flight in the budget's current window.",
            labels=labels,
        )
        budgets = Budget.objects.all()
        if self.team_ids is not None:
            budgets = budgets.filter(team_id__in=self.team_ids)
        budgets_list = list(budgets.order_by("team_id", "feature", "period", "pk"))
        starts = {period: window_start(period) for period in {b.period for b in budgets_list}}
        counters = {
            (c.budget_id, c.window_start): c
            for c in SpendCounter.objects.filter(
                budget__in=budgets_list, window_start__in=set(starts.values())
            )
        }
        for budget in budgets_list:
            values = [slugs.get(budget.team_id, ""), budget.feature, budget.period, str(budget.pk)]
            counter = counters.get((budget.pk, starts[budget.period]))
            limit.add_metric(values, float(budget.limit_usd))
            spent.add_metric(values, float(counter.spent) if counter else 0.0)
            reserved.add_metric(values, float(counter.reserved) if counter else 0.0)
        yield from (limit, spent, reserved)

    def _circuits(self) -> Iterator[Any]:
        circuit = GaugeMetricFamily(
            "fluxgate_circuit_open",
            "Circuit breaker state: 1 open, 0.5 half-open, 0 closed.",
            labels=("target",),
        )
        if self.team_ids is None:  # (site-wide state: not for one team's reader)
            for target, state in sorted(LLMService().health().items()):
                circuit.add_metric([target], _CIRCUIT.get(str(state.get("state")), 0.0))
        yield circuit


def _cumulative(total: dict[str, int], fields: Iterable[str]) -> list[int]:
    running, out = 0, []
    for field in fields:
        running += total[field]
        out.append(running)
    return out


def render(team_ids: list[int] | None) -> bytes:
    """The text exposition of the figures of ``team_ids`` (None: the whole site)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FluxGateCollector(team_ids))  # type: ignore[arg-type]
    return bytes(generate_latest(registry))


def allowed_address(request: Any) -> bool:
    """Whether the request comes from an address in ``METRICS_ALLOWED_IPS``."""
    allowed = fluxgate_settings.METRICS_ALLOWED_IPS
    if not allowed:
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(str(net), strict=False) for net in allowed)


class CanReadMetrics(BasePermission):
    message = (
        "Reading metrics needs a staff session, an API key with may_read_metrics, or an "
        "address in FLUXGATE['METRICS_ALLOWED_IPS']."
    )

    def has_permission(self, request: Request, view: Any) -> bool:
        key = api_key_of(request)
        if key is not None:
            return bool(key.may_read_metrics)
        user = request.user
        return bool(getattr(user, "is_staff", False)) or allowed_address(request)


class MetricsView(FluxGateAPIView):
    """``GET fluxgate/metrics``."""

    permission_classes = [CanReadMetrics]
    schema = None  # (text, not JSON: not part of the OpenAPI schema)

    def get(self, request: Request) -> HttpResponse:
        if generate_latest is None:
            return HttpResponse(
                "prometheus_client is not installed: pip install 'django-fluxgate[prometheus]'",
                status=501,
                content_type="text/plain",
            )
        user = request.user
        key = api_key_of(request)
        site_wide = key is None and (
            is_staff(request) or (not getattr(user, "is_staff", False) and allowed_address(request))
        )
        team_ids = None if site_wide else list(teams_for(request).values_list("pk", flat=True))
        return HttpResponse(render(team_ids), content_type=CONTENT_TYPE_LATEST)
