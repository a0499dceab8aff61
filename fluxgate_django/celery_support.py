"""Celery integration: context propagation into tasks, and the beat schedule.

Context: a task enqueued inside a request or a ``tracking_context`` carries the FluxGate
context in its message headers, and LLM calls inside the task are attributed to the same
user, team, feature and request. A task can still override any field with its own
``tracking_context``. Connected from ``AppConfig.ready()`` when Celery is installed.

Periodic tasks: add FluxGate's to the site's beat schedule::

    from fluxgate_django.celery_support import beat_schedule
    app.conf.beat_schedule = {**app.conf.beat_schedule, **beat_schedule()}

Worker settings: what a worker needs so that the batch of a worker killed mid-batch
(SIGKILL, an OOM kill) is written by another within seconds, applied in one line after
the app is configured (:func:`configure_celery`)::

    from fluxgate_django.celery_support import configure_celery
    configure_celery(app)

or, as Django settings (``config_from_object(..., namespace="CELERY")``), with
:func:`celery_settings`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any

from .context import (
    EMPTY_CONTEXT,
    TrackingContext,
    current_context,
    reset_context,
    resolved,
    set_context,
)

HEADER = "fluxgate_context"
_tokens: dict[str, Any] = {}


def context_to_header(ctx: TrackingContext) -> dict[str, Any]:
    """A JSON-safe copy of the context (teams by slug, users by id/email/pk)."""
    out: dict[str, Any] = {}
    for name, value in ctx.as_dict().items():
        value = resolved(value)  # the middleware's lazy user and team
        if value is None:
            continue
        if name == "team" and not isinstance(value, (str, int)):
            value = getattr(value, "slug", None) or getattr(value, "pk", None)
        elif name == "user" and hasattr(value, "_meta"):
            value = {
                "id": str(value.pk),
                "pk": _json_pk(value.pk),
                "email": getattr(value, "email", ""),
            }
        elif name == "user" and isinstance(value, dict) and "pk" in value:
            value = {**value, "pk": _json_pk(value["pk"])}
        elif isinstance(value, Decimal):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif name == "metadata":
            value = dict(value)
        out[name] = value
    return out


def context_from_header(data: dict[str, Any]) -> TrackingContext:
    data = {k: v for k, v in data.items() if v is not None}
    user = data.get("user")
    if isinstance(user, dict) and isinstance(user.get("pk"), str):
        data["user"] = {**user, "pk": _user_pk(user["pk"])}
    return EMPTY_CONTEXT.merge(**data)


def _json_pk(pk: Any) -> Any:
    """A user's primary key as a header value any transport encodes (AMQP's headers take
    no UUID): an int as it is, any other as text (:func:`_user_pk` turns it back)."""
    return pk if pk is None or pk.__class__ in (int, str) else str(pk)


def _user_pk(text: str) -> Any:
    """A primary key sent as text, as the user model's own type (a UUID...)."""
    from django.contrib.auth import get_user_model
    from django.core.exceptions import ValidationError

    try:
        return get_user_model()._meta.pk.to_python(text)
    except ValidationError:
        return text


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


#: The hard time limit of ``fluxgate.record_events`` (seconds). A batch is written in well
#: under a second; one still running after this long is stuck (a stalled connection), its
#: pool process killed and its message handed back to the broker.
RECORD_EVENTS_TIME_LIMIT = 10.0
#: The longest wait between two retries of a batch while the database is unreachable.
RETRY_BACKOFF_MAX = 5
#: How often a Redis worker looks for messages whose worker died (seconds); kombu's
#: default is every 10 times 10 s.
RESTORE_INTERVAL = 1


def celery_settings(
    *,
    time_limit: float = RECORD_EVENTS_TIME_LIMIT,
    broker_url: str | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    """The Celery settings a worker writing FluxGate's batches needs.

    * ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged
      once its task has run, and the message of a pool process that dies goes back to
      the broker at once. FluxGate's tasks set both on themselves; these make them the
      default of the site's tasks too (leave them out if yours are not safe to run twice);
    * ``worker_prefetch_multiplier = 1``: no batch waits, unacknowledged, in the buffer of
      a worker that may die;
    * ``fluxgate.record_events`` gets ``time_limit`` as its hard time limit;
    * Redis only: a message whose whole worker died is delivered again only once it has
      been unacknowledged for the ``visibility_timeout`` — 1 hour by default, found by a
      sweep every 100 s. Here it is matched to the time limit
      (:func:`visibility_timeout_for`: the time limit, plus the longest retry wait, plus
      2 s), and the sweep runs every second. **It applies to every task on that Redis
      broker**: a task of the site that runs (or waits for its ``countdown``/``eta``)
      longer is delivered a second time. A site with such tasks gives FluxGate's batches
      a Celery app and worker of their own on another Redis database (README, "Running
      at scale", Celery), or uses RabbitMQ, which requeues a dead consumer's messages at
      once and needs none of this (publisher confirms are turned on instead).

    ``broker_url`` (by default ``settings.CELERY_BROKER_URL``) says which broker it is.
    ``namespace="CELERY"`` gives the keys as Django settings (``CELERY_TASK_ACKS_LATE``...);
    else they are Celery's own. This returns new values for ``task_annotations`` and
    ``broker_transport_options``: to merge them into yours, use :func:`configure_celery`.
    """
    if broker_url is None:
        from django.conf import settings

        broker_url = getattr(settings, "CELERY_BROKER_URL", None) or ""
    limit = float(time_limit)
    conf: dict[str, Any] = {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_annotations": {"fluxgate.record_events": {"time_limit": limit}},
    }
    options = broker_transport_options(broker_url, time_limit=limit)
    if options:
        conf["broker_transport_options"] = options
    if namespace:
        return {f"{namespace}_{key.upper()}": value for key, value in conf.items()}
    return conf


def configure_celery(app: Any, *, time_limit: float = RECORD_EVENTS_TIME_LIMIT) -> None:
    """Apply :func:`celery_settings` to ``app``, merged into its
    ``broker_transport_options`` and ``task_annotations`` (ours win for our keys).

    Call it after the app's own configuration (``config_from_object``...). It is applied
    when the app reads its configuration, as Celery does (so ``on_after_configure``
    handlers connected later still run), or at once if the app is configured already."""
    if app.configured:
        _apply(app, time_limit)
        return

    def apply_when_configured(sender: Any = None, **kwargs: Any) -> None:
        _apply(app, time_limit)

    app.on_after_configure.connect(apply_when_configured, weak=False)


def _apply(app: Any, time_limit: float) -> None:
    broker_url = app.conf.broker_url
    conf = celery_settings(
        time_limit=time_limit, broker_url=broker_url if isinstance(broker_url, str) else ""
    )
    options = conf.pop("broker_transport_options", None)
    if options:
        current = app.conf.broker_transport_options
        conf["broker_transport_options"] = {
            **(current if isinstance(current, Mapping) else {}),
            **options,
        }
    ours = conf.pop("task_annotations")
    current = app.conf.task_annotations
    if current is None:
        conf["task_annotations"] = ours
    elif isinstance(current, Mapping):
        merged = dict(current)
        for name, values in ours.items():
            merged[name] = {**(current.get(name) or {}), **values}
        conf["task_annotations"] = merged
    else:  # a list of annotations (dicts, objects, dotted paths): ours come first
        conf["task_annotations"] = [ours, *(current if isinstance(current, list) else [current])]
    app.conf.update(conf)


def broker_transport_options(broker_url: str, *, time_limit: float) -> dict[str, Any]:
    """Our transport options for ``broker_url``'s broker ({} for one that needs none)."""
    if broker_url.startswith(("amqp", "pyamqp")):
        return {"confirm_publish": True}
    if is_redis_url(broker_url):
        visibility = visibility_timeout_for(time_limit)
        return {
            "visibility_timeout": visibility,
            "unacked_restore_interval": RESTORE_INTERVAL,
            "unacked_restore_throttle": 1,
            # A worker killed while it held the restore sweep's mutex blocks the sweep
            # for this long (kombu's default: 5 minutes).
            "unacked_mutex_expire": max(10, visibility),
        }
    return {}


def visibility_timeout_for(time_limit: float) -> int:
    """The Redis visibility timeout matched to the batch task's time limit: longer than
    a live worker ever holds a batch unacknowledged (a retry's wait, then its run)."""
    return math.ceil(float(time_limit) + RETRY_BACKOFF_MAX + 2)


def is_redis_url(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "redis+socket://", "sentinel://", "socket://"))
