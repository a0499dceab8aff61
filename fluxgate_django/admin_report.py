"""The admin's cost report page: ``reverse("admin:fluxgate_report")``.

``?by=feature|team|model|provider|user|day``, a date range (``range=today|7d|30d|month``
or ``start=`` / ``end=`` ISO dates, both included; default the last 30 days), filters
(``team`` slugs, ``feature``, ``provider``, ``model``; repeat a parameter or separate
values with commas), ``compare=a,b`` for features side by side (two or more: one alone is
a 400 with the form's error), and ``format=csv`` (the comparison when ``compare`` is
given, else the breakdown: what the page shows).

It is the "Cost report" entry of the FluxGate app on the admin index (a proxy model's
changelist). Who sees what (:func:`~fluxgate_django.reports.visible_teams`): the admin
needs ``is_staff``; superusers see every
team, a staff user who is an admin of some teams sees those teams only, and other staff
users get a 403. All numbers come from :mod:`fluxgate_django.reports.queries`, the same
functions ``manage.py fluxgate_report`` and the REST API call.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, cast

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, QueryDict
from django.template.response import TemplateResponse
from django.urls import path

from .models import CostReport
from .reports import export, queries
from .reports.chart import series_colour, stacked_bar_chart

#: Longest range the page shows (its chart has a bar per day).
MAX_DAYS = 366


# -- who sees which teams (the admin's pages and this report) -----------------------------

_REQUEST_CACHE = "_fluxgate_admin_teams"


def administered_teams(request: HttpRequest) -> frozenset[int] | None:
    """The ids of the teams whose rows ``request.user`` may reach in the admin; ``None``
    means every team (and rows without one): an active superuser.

    Anyone else: the teams they are an admin of (``TeamMembership.role`` ``admin``),
    possibly none — the cost report's rule (``reports.queries.visible_teams``), asked once
    per page for both. Django's model permissions then say what they may do with those rows.
    """
    cached: frozenset[int] | bool | None = getattr(request, _REQUEST_CACHE, False)
    if cached is not False:
        return cast("frozenset[int] | None", cached)
    visible = queries.visible_teams(getattr(request, "user", None))
    teams = None if visible is None else frozenset(visible)
    setattr(request, _REQUEST_CACHE, teams)
    return teams


@dataclasses.dataclass
class ReportRequest:
    """The report a request asks for, parsed and validated (invalid parts → ``errors``)."""

    by: str = "feature"
    preset: str = queries.DEFAULT_PRESET
    start: dt.date | None = None
    end: dt.date | None = None
    filters: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    compare: list[str] = dataclasses.field(default_factory=list)
    csv: bool = False
    errors: list[str] = dataclasses.field(default_factory=list)
    #: What is wrong with ``compare`` (the request is then answered with a 400).
    compare_error: str = ""

    @classmethod
    def from_query(cls, query: QueryDict, today: dt.date | None = None) -> ReportRequest:
        today = today or queries.site_today()
        req = cls()
        by = query.get("by") or "feature"
        if by in queries.DIMENSIONS:
            req.by = by
        else:
            req.errors.append(f"Unknown breakdown “{by}”; showing by feature.")
        req.csv = query.get("format") == "csv"
        for name in ("team", "feature", "provider", "model"):
            values = _list(query, name)
            if values:
                req.filters[name] = values
        req.compare = _list(query, "compare")
        if 0 < len(req.compare) < queries.MIN_COMPARED:
            req.compare_error = (
                f"Choose at least {queries.MIN_COMPARED} features to compare "
                f"(only “{req.compare[0]}” was given)."
            )

        start, end = _date(query, "start", req.errors), _date(query, "end", req.errors)
        if start or end:
            end = end or today
            start = start or end - dt.timedelta(days=29)
            if start > end:
                req.errors.append("The start date is after the end date; swapped them.")
                start, end = end, start
            if (end - start).days >= MAX_DAYS:
                req.errors.append(f"A report covers at most {MAX_DAYS} days; shortened it.")
                start = end - dt.timedelta(days=MAX_DAYS - 1)
            req.start, req.end = start, end
            # Dates that are a preset's (the filter form always sends both) keep it lit.
            req.preset = next(
                (p for p in queries.PRESETS if queries.preset_range(p, today) == (start, end)), ""
            )
        else:
            preset = query.get("range") or queries.DEFAULT_PRESET
            if preset not in queries.PRESETS:
                req.errors.append(f"Unknown date range “{preset}”; showing the last 30 days.")
                preset = queries.DEFAULT_PRESET
            req.preset = preset
            req.start, req.end = queries.preset_range(preset, today)
        return req


def _list(query: QueryDict, name: str) -> list[str]:
    values = [v.strip() for raw in query.getlist(name) for v in raw.split(",")]
    return list(dict.fromkeys(v for v in values if v))


def _date(query: QueryDict, name: str, errors: list[str]) -> dt.date | None:
    raw = query.get(name)
    if not raw:
        return None
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        errors.append(f"“{raw}” is not a date (YYYY-MM-DD); {name} ignored.")
        return None


def _url(query: QueryDict, **changes: Any) -> str:
    """The current query string with ``changes`` (None removes a parameter)."""
    q = query.copy()
    for key, value in changes.items():
        q.pop(key, None)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            q.setlist(key, list(value))
        else:
            q[key] = value
    encoded = q.urlencode()
    return f"?{encoded}" if encoded else "?"


#: Where a row of a breakdown leads: (next ``by``, filter set to the row's key).
DRILL_DOWN = {
    "feature": ("model", "feature"),
    "team": ("feature", "team"),
    "model": ("feature", "model"),
    "provider": ("model", "provider"),
}


def _drill_url(query: QueryDict, by: str, row: queries.BreakdownRow) -> str | None:
    if by == "day":
        return _url(query, by="feature", range=None, start=row.key, end=row.key)
    if by not in DRILL_DOWN or (by == "team" and row.key.startswith("#")):
        return None
    next_by, name = DRILL_DOWN[by]
    return _url(query, by=next_by, **{name: row.key})


def _display(row: queries.BreakdownRow, url: str | None = None) -> dict[str, Any]:
    """Formatted cells of a table row (the raw row stays available as ``row``)."""
    return {
        "row": row,
        "url": url,
        "cost": export.cost_text(row),
        "cost_plain": "" if row.cost_usd is None else queries.plain_decimal(row.cost_usd),
        "unpriced_only": row.cost_usd is None,
        "cost_per_request": export.usd(row.cost_per_request_usd),
        "share": export.percent(row.share_of_cost),
        "share_width": round((row.share_of_cost or 0) * 100, 1),
        "p50": export.ms(row.p50_latency_ms),
        "p95": export.ms(row.p95_latency_ms),
        "error_rate": export.percent(row.error_rate),
        "fallback_rate": export.percent(row.fallback_rate),
        "cache_hit_rate": export.percent(row.cache_hit_rate),
        "saved": export.usd(row.cost_saved_usd),
        "tokens": f"{export.count(row.input_tokens)} / {export.count(row.output_tokens)}",
        "cache_tokens": (
            f"{export.count(row.cache_read_tokens)} / {export.count(row.cache_write_tokens)}"
        ),
    }


@admin.register(CostReport)
class CostReportAdmin(admin.ModelAdmin):
    """Not a model list: the changelist of this proxy *is* the cost report page."""

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view(self.report_view)
        info = self.opts.app_label, self.opts.model_name
        return [
            path("", view, name="fluxgate_report"),
            path("", view, name="{}_{}_changelist".format(*info)),
        ]

    def _visible(self, request: HttpRequest) -> list[int] | None:
        teams = administered_teams(request)  # (the admin's, kept on the request)
        return None if teams is None else sorted(teams)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._visible(request) != []

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._visible(request) != []

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def report_view(self, request: HttpRequest) -> HttpResponse:
        teams = self._visible(request)
        if teams == []:
            raise PermissionDenied("You are not an admin of any team.")
        req = ReportRequest.from_query(request.GET)
        assert req.start is not None and req.end is not None
        if req.csv:
            return self._csv(req, teams)
        report = queries.breakdown(req.by, req.start, req.end, teams=teams, filters=req.filters)
        return TemplateResponse(
            request,
            "admin/fluxgate_django/report.html",
            {**self.admin_site.each_context(request), **self._context(request, req, report)},
            status=400 if req.compare_error else 200,
        )

    def _csv(self, req: ReportRequest, teams: list[int] | None) -> HttpResponse:
        """The CSV of what the page shows: the comparison when features are compared,
        else the breakdown."""
        assert req.start is not None and req.end is not None
        if req.compare_error:
            return HttpResponse(
                req.compare_error, status=400, content_type="text/plain; charset=utf-8"
            )
        if req.compare:
            report = queries.compare(
                req.compare, req.start, req.end, teams=teams, filters=req.filters
            )
            filename = f"fluxgate-compare-features-{req.start}-{req.end}.csv"
        else:
            report = queries.breakdown(req.by, req.start, req.end, teams=teams, filters=req.filters)
            filename = f"fluxgate-cost-by-{req.by}-{req.start}-{req.end}.csv"
        response = HttpResponse(export.to_csv(report), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response

    def _context(
        self, request: HttpRequest, req: ReportRequest, report: queries.Breakdown
    ) -> dict[str, Any]:
        assert req.start is not None and req.end is not None
        teams = self._visible(request)
        query = request.GET
        series = queries.timeseries(req.by, req.start, req.end, teams=teams, filters=req.filters)
        comparison: list[queries.BreakdownRow] = (
            queries.compare(req.compare, req.start, req.end, teams=teams, filters=req.filters).rows
            if req.compare and not req.compare_error
            else []
        )
        choices = queries.filter_choices(teams, req.start, req.end)
        # Values seen in the range, and those selected even if they have no calls in it.
        for name in ("feature", "provider", "model"):
            selected = req.filters.get(name, []) + (req.compare if name == "feature" else [])
            choices[name] = sorted(set(choices[name]) | set(selected))
        team_names = dict(choices["team"])
        total = report.total
        return {
            "title": f"Cost Breakdown by {req.by.title()}",
            "opts": self.opts,
            "req": req,
            "report": report,
            "rows": [_display(r, _drill_url(query, req.by, r)) for r in report.rows],
            "total": _display(total),
            "summary": [
                ("Cost", export.cost_text(total)),
                ("Requests", export.count(total.requests)),
                (
                    "p50 / p95 latency",
                    f"{export.ms(total.p50_latency_ms)} / {export.ms(total.p95_latency_ms)}",
                ),
                ("Error rate", export.percent(total.error_rate)),
                ("Cache savings", export.usd(total.cost_saved_usd)),
            ],
            "chart": stacked_bar_chart(series),
            "chart_series": [
                (s.label, series_colour(i, s.key)) for i, s in enumerate(series.series)
            ],
            "comparison": [_display(r) for r in comparison],
            "budgets": [
                {
                    "state": b,
                    "width": min(float(b.percent_used), 100.0),
                    "spent": export.usd(b.spent_usd),
                    "reserved": export.usd(b.reserved_usd),
                    "limit": export.usd(b.limit_usd),
                }
                for b in queries.budget_state(teams)
            ],
            "scope": (
                "All teams" if teams is None else "Your teams: " + ", ".join(team_names.values())
            ),
            "dimensions": [
                (name.title(), _url(query, by=name), name == req.by) for name in queries.DIMENSIONS
            ],
            "presets": [
                (label, _url(query, range=name, start=None, end=None), name == req.preset)
                for name, label in queries.PRESETS.items()
            ],
            # The breakdown's CSV (the comparison has its own link).
            "csv_url": _url(query, format="csv", compare=None),
            "compare_csv_url": _url(query, format="csv") if comparison else None,
            "clear_filters_url": _url(
                query, team=None, feature=None, provider=None, model=None, compare=None
            ),
            "choices": choices,
            "compare_size": min(max(len(choices["feature"]), 2), 8),
            "filter_menus": [
                (
                    name,
                    name.title(),
                    {"options": choices[name], "selected": req.filters.get(name, [])},
                )
                for name in ("feature", "provider", "model")
            ],
            "hidden": [
                (k, v)
                for k in ("by", "range", "start", "end", "team", "feature", "provider", "model")
                for v in query.getlist(k)
            ],
        }
