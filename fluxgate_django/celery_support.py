"""Celery integration: context propagation into tasks, and the beat schedule.

Context: a task enqueued inside a request or a ``tracking_context`` carries the FluxGate
context in its message headers, and LLM calls inside the task are attributed to the same
user, team, feature and request. A task can still override any field with its own
``tracking_context``. Connected from ``AppConfig.ready()`` when Celery is installed.

Periodic tasks: add FluxGate's to the site's beat schedule::

    from fluxgate_django.celery_support import beat_schedule
    app.conf.beat_schedule = {**app.conf.beat_schedule, **beat_schedule()}
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from .context import EMPTY_CONTEXT, TrackingContext, current_context, reset_context, set_context

HEADER = "fluxgate_context"
_tokens: dict[str, Any] = {}


def context_to_header(ctx: TrackingContext) -> dict[str, Any]:
    """A JSON-safe copy of the context (teams by slug, users by id/email/pk)."""
    out: dict[str, Any] = {}
    for name, value in ctx.as_dict().items():
        if name == "team" and not isinstance(value, (str, int)):
            value = getattr(value, "slug", None) or getattr(value, "pk", None)
        elif name == "user" and hasattr(value, "_meta"):
            value = {"id": str(value.pk), "pk": value.pk, "email": getattr(value, "email", "")}
        elif isinstance(value, Decimal):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif name == "metadata":
            value = dict(value)
        out[name] = value
    return out


def context_from_header(data: dict[str, Any]) -> TrackingContext:
    return EMPTY_CONTEXT.merge(**{k: v for k, v in data.items() if v is not None})


def _add_header(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    ctx = current_context()
    if headers is None or ctx is EMPTY_CONTEXT or HEADER in headers:
        return
    headers[HEADER] = context_to_header(ctx)


def _enter(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    request = getattr(task, "request", None)
    data = getattr(request, HEADER, None) or (getattr(request, "headers", None) or {}).get(HEADER)
    if data and task_id:
        _tokens[task_id] = set_context(context_from_header(data))


def _exit(task_id: str | None = None, **kwargs: Any) -> None:
    token = _tokens.pop(task_id or "", None)
    if token is not None:
        reset_context(token)


def connect_signals() -> None:
    from celery.signals import before_task_publish, task_postrun, task_prerun

    before_task_publish.connect(_add_header, weak=False, dispatch_uid="fluxgate_ctx_publish")
    task_prerun.connect(_enter, weak=False, dispatch_uid="fluxgate_ctx_prerun")
    task_postrun.connect(_exit, weak=False, dispatch_uid="fluxgate_ctx_postrun")


def beat_schedule(
    *,
    replay_spool: timedelta = timedelta(minutes=1),
    check_budgets: timedelta = timedelta(minutes=5),
    retention: timedelta = timedelta(hours=6),
) -> dict[str, dict[str, Any]]:
    """Beat entries for FluxGate's periodic tasks.

    * ``fluxgate.replay_spool`` — write events spooled during a database outage (they
      are also replayed by the next successful write in the process that spooled them,
      and by ``manage.py fluxgate_replay_spool``). A worker replays the spool of its own
      machine (``SPOOL_DIR``): schedule it where your web processes run too, or run the
      command there.
    * ``fluxgate.check_budgets`` — raise threshold alerts budgets have reached without a
      new call (a limit lowered in the admin).
    * ``fluxgate.apply_retention`` — delete events past ``RETENTION_DAYS`` in batches;
      rollups and budget counters stay, so reports over old periods still work.

    Two jobs need no task. **Rollup refresh**: the recorder adds each batch to the daily
    rollups in the transaction that stores its events, so they are always current; after
    editing or deleting events by hand, rebuild them with ``manage.py
    fluxgate_rebuild_rollups [--since DAY]``. **Budget window rollover**: a budget's
    counter is per window (day or month, site time zone) and the first reservation of a
    new window creates its counter, so windows roll over by date by themselves.
    """
    return {
        "fluxgate-replay-spool": {"task": "fluxgate.replay_spool", "schedule": replay_spool},
        "fluxgate-check-budgets": {"task": "fluxgate.check_budgets", "schedule": check_budgets},
        "fluxgate-retention": {"task": "fluxgate.apply_retention", "schedule": retention},
    }
