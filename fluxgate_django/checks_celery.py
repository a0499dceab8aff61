"""System checks of the Celery recorder's worker settings (``manage.py check``).

With ``RECORDER = "celery"``, a batch whose worker is killed (SIGKILL, an OOM kill) must
reach another worker within seconds; these warn when the site's settings would hold it
for long, and say how the settings of :func:`~fluxgate_django.celery_support.celery_settings`
fix it:

* ``fluxgate.W002``: a Redis broker whose transport options hold a dead worker's message
  for more than :data:`MAX_HOLD_SECONDS`. Redis gives such a message to another worker
  only once it has been unacknowledged for the ``visibility_timeout`` (1 hour unless
  set), found by a sweep every ``unacked_restore_interval`` times ``unacked_restore_throttle``
  seconds (100 s unless set);
* ``fluxgate.W003``: ``task_annotations`` that turn ``acks_late`` or
  ``reject_on_worker_lost`` off for ``fluxgate.record_events``: its message is then
  acknowledged when the worker takes it, and a worker killed mid-batch loses the batch.

The settings are read from the site's Celery app if one is found (``FLUXGATE["CELERY_APP"]``,
or the app the project created), else from the ``CELERY_*`` Django settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.checks import Tags, Warning, register

from .celery_app import TASKS, is_celery_fallback, site_celery_app
from .celery_support import is_redis_url
from .conf import fluxgate_settings

#: Longest a killed worker's batch may wait for redelivery without a warning (seconds).
MAX_HOLD_SECONDS = 120

# kombu's Redis transport defaults.
_VISIBILITY_TIMEOUT = 3600
_RESTORE_INTERVAL = 10
_RESTORE_THROTTLE = 10

_HINT = (
    "Apply FluxGate's worker settings: configure_celery(app) from "
    "fluxgate_django.celery_support (README, 'Running at scale', Celery)."
)


@register(Tags.compatibility)
def check_celery_worker_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    from django.conf import settings

    if not isinstance(getattr(settings, "FLUXGATE", {}), Mapping):
        return []  # (fluxgate.E001)
    try:
        if fluxgate_settings.RECORDER != "celery":
            return []
    except Exception:  # a bad FLUXGATE: checks.py reports it
        return []
    broker_url, options, annotations = _worker_settings()
    return [*_check_redelivery(broker_url, options), *_check_annotations(annotations)]


def _check_redelivery(broker_url: Any, options: Any) -> list[Any]:
    if not isinstance(broker_url, str) or not is_redis_url(broker_url):
        return []  # RabbitMQ requeues a dead consumer's messages at once
    options = options if isinstance(options, Mapping) else {}
    visibility = _number(options.get("visibility_timeout"), _VISIBILITY_TIMEOUT)
    sweep = _number(options.get("unacked_restore_interval"), _RESTORE_INTERVAL) * max(
        1.0, _number(options.get("unacked_restore_throttle"), _RESTORE_THROTTLE)
    )
    hold = visibility + sweep
    if hold <= MAX_HOLD_SECONDS:
        return []
    unset = "" if "visibility_timeout" in options else " (unset: Redis' default, 1 hour)"
    return [
        Warning(
            "RECORDER='celery' with a Redis broker: a worker killed mid-batch leaves its "
            f"batch undelivered for up to {hold:.0f} s (visibility_timeout "
            f"{visibility:.0f} s{unset}, plus a restore sweep every {sweep:.0f} s); "
            "its events are missing from reports and budgets until then.",
            hint=_HINT + " Or use RabbitMQ as the broker.",
            obj="CELERY_BROKER_TRANSPORT_OPTIONS",
            id="fluxgate.W002",
        )
    ]


def _check_annotations(annotations: Any) -> list[Any]:
    off = []
    for annotation in annotations if isinstance(annotations, (list, tuple)) else [annotations]:
        if not isinstance(annotation, Mapping):
            continue  # an object or a dotted path: not inspected
        for name in (TASKS.record_events, "*"):
            values = annotation.get(name)
            if isinstance(values, Mapping):
                off += [k for k in ("acks_late", "reject_on_worker_lost") if values.get(k) is False]
    if not off:
        return []
    return [
        Warning(
            f"task_annotations turn {' and '.join(sorted(set(off)))} off for "
            f"{TASKS.record_events}: a worker killed mid-batch loses its batch.",
            hint="Leave both on for FluxGate's tasks (they set them themselves). " + _HINT,
            obj="CELERY_TASK_ANNOTATIONS",
            id="fluxgate.W003",
        )
    ]


def _worker_settings() -> tuple[Any, Any, Any]:
    """The broker URL, transport options and task annotations the site's workers use."""
    from django.conf import settings

    app = None
    try:
        import celery  # noqa: F401
    except ImportError:
        pass
    else:
        try:
            app = site_celery_app()
        except Exception:  # a CELERY_APP that does not import: not this check's business
            app = None
        if app is not None and is_celery_fallback(app):
            app = None
    if app is not None:
        conf = app.conf
        return conf.broker_url, conf.broker_transport_options, conf.task_annotations
    return (
        getattr(settings, "CELERY_BROKER_URL", None),
        getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None),
        getattr(settings, "CELERY_TASK_ANNOTATIONS", None),
    )


def _number(value: Any, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return float(default)
    return float(value)
