"""The admin's trace page: every LLM call of one request, conversation or LangChain run.

``reverse("admin:fluxgate_trace")`` with one of ``?request_id=``, ``?conversation_id=``
(or ``?session_id=``) or ``?run_id=`` — a LangChain run: the calls made under it, its own
and its children's, by ``run_id`` / ``parent_run_id`` / the ``root_run_id`` the handler
records — or ``?key=...&value=...`` (the page's form). It shows the calls on a timeline
(start, duration, model, tokens, cost, status, fallback attempts, cache hits) and their
totals: "why did this request cost $3?" on one page. Linked from each event (its change
page and the event list) and from the cost report's search box.

Who sees what: the admin's team scope (:func:`~fluxgate_django.admin_report.administered_teams`)
— a superuser every event, a team admin their teams' events only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse

from .admin_report import administered_teams
from .models import Event
from .records import FAILED_STATUSES, Status
from .reports import export

#: The keys a trace can be asked by, in the order a link prefers them.
KEYS = ("request_id", "conversation_id", "session_id", "run_id")
#: Most calls a trace page shows (the totals count them all).
MAX_CALLS = 500


@dataclasses.dataclass(frozen=True)
class TraceCall:
    """One call on the timeline."""

    event: Event
    start: dt.datetime
    offset_ms: float
    duration_ms: float
    left_percent: float
    width_percent: float

    @property
    def failed(self) -> bool:
        return self.event.status in FAILED_STATUSES or self.event.status == (
            Status.BUDGET_EXCEEDED.value
        )


def trace_url(event: Event) -> str | None:
    """The trace page ``event`` belongs to: its request's, else its conversation's or
    session's, else its LangChain root run's (None: it has none of those)."""
    for key in ("request_id", "conversation_id", "session_id"):
        value = getattr(event, key)
        if value:
            return f"{reverse('admin:fluxgate_trace')}?{urlencode({key: value})}"
    run = (event.metadata or {}).get("root_run_id") or event.parent_run_id or event.run_id
    return f"{reverse('admin:fluxgate_trace')}?{urlencode({'run_id': run})}" if run else None


def trace_events(key: str, value: str, teams: frozenset[int] | None) -> QuerySet[Event]:
    """The events of one trace, oldest first, within ``teams`` (None: all)."""
    if key == "run_id":
        match = Q(run_id=value) | Q(parent_run_id=value) | Q(metadata__root_run_id=value)
    else:
        match = Q(**{key: value})
    events = Event.objects.filter(match).select_related("team")
    if teams is not None:
        events = events.filter(team_id__in=teams)
    return events.order_by("created_at", "id")


def timeline(events: list[Event]) -> tuple[list[TraceCall], float]:
    """The calls placed on one time axis, and its length in ms. An event's
    ``created_at`` is when the call ended; it started ``latency_ms`` before."""
    spans = []
    for event in events:
        duration = float(event.latency_ms or 0.0)
        spans.append((event, event.created_at - dt.timedelta(milliseconds=duration), duration))
    if not spans:
        return [], 0.0
    origin = min(start for _, start, _ in spans)
    end = max(start + dt.timedelta(milliseconds=d) for _, start, d in spans)
    length = max((end - origin).total_seconds() * 1000, 1e-3)
    calls = []
    for event, start, duration in spans:
        offset = (start - origin).total_seconds() * 1000
        calls.append(
            TraceCall(
                event=event,
                start=start,
                offset_ms=offset,
                duration_ms=duration,
                left_percent=round(offset / length * 100, 2),
                width_percent=max(round(duration / length * 100, 2), 0.4),
            )
        )
    return calls, length


def trace_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    teams = administered_teams(request)
    if teams is not None and not teams:
        raise PermissionDenied("You are not an admin of any team.")
    asked = [(key, request.GET[key]) for key in KEYS if request.GET.get(key)]
    if request.GET.get("key") in KEYS and request.GET.get("value"):  # (the page's form)
        asked.append((request.GET["key"], request.GET["value"].strip()))
    context: dict[str, Any] = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": "Trace",
        "keys": KEYS,
        "asked": asked[0] if asked else None,
    }
    if len(asked) != 1:
        context["error"] = "Give one of: " + ", ".join(KEYS) + "."
        return TemplateResponse(
            request, "admin/fluxgate_django/trace.html", context, status=400 if asked else 200
        )
    key, value = asked[0]
    events = list(trace_events(key, value, teams)[: MAX_CALLS + 1])
    truncated = len(events) > MAX_CALLS
    calls, length = timeline(events[:MAX_CALLS])
    costs = [c.event.cost_usd for c in calls if c.event.cost_usd is not None]
    total_cost = sum(costs, Decimal(0)) if costs else None
    context.update(
        title=f"Trace of {key.replace('_', ' ')} {value}",
        calls=[_row(call) for call in calls],
        truncated=truncated,
        max_calls=MAX_CALLS,
        summary=[
            ("Calls", export.count(len(calls))),
            ("Cost", "unknown" if total_cost is None else export.usd(total_cost)),
            ("Unpriced calls", export.count(len(calls) - len(costs))),
            (
                "Tokens in / out",
                f"{export.count(sum(c.event.input_tokens for c in calls))} / "
                f"{export.count(sum(c.event.output_tokens for c in calls))}",
            ),
            ("Wall time", export.ms(length) if calls else "—"),
            ("Failed or refused", export.count(sum(c.failed for c in calls))),
            ("Fallback attempts", export.count(sum(c.event.fallback_attempt > 0 for c in calls))),
            ("Cache hits", export.count(sum(c.event.cache_hit for c in calls))),
        ],
    )
    return TemplateResponse(request, "admin/fluxgate_django/trace.html", context)


def _row(call: TraceCall) -> dict[str, Any]:
    event = call.event
    return {
        "call": call,
        "event": event,
        "url": reverse("admin:fluxgate_django_event_change", args=[event.pk]),
        "offset": export.ms(call.offset_ms),
        "duration": export.ms(call.duration_ms),
        "ttft": export.ms(event.time_to_first_token_ms),
        "cost": "unknown" if event.cost_usd is None else export.usd(event.cost_usd),
        "cost_exact": "" if event.cost_usd is None else f"{event.cost_usd.normalize():f}",
        "tokens": f"{export.count(event.input_tokens)} / {export.count(event.output_tokens)}",
        "cache_tokens": (
            f"{export.count(event.cache_read_tokens)} / {export.count(event.cache_write_tokens)}"
        ),
    }
