"""The site's Celery app, and FluxGate's task names.

FluxGate's tasks (:mod:`fluxgate_django.tasks`) are published by name and imported by no
module of the app: a worker finds them with ``autodiscover_tasks()``. Publishers find the
site's app here.

The recorder publishes from its writer thread, where Celery has no current app of its
own (Celery keeps the current app per thread, and a thread without one gets an
unconfigured fallback app that talks to ``amqp://localhost``). So the app is found
explicitly: ``FLUXGATE["CELERY_APP"]`` (a dotted path, or the app) if set, else the app
current in this thread, else the one Celery app the process created.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from .conf import fluxgate_settings


class TASKS:
    """The names FluxGate's Celery tasks are registered under."""

    record_events = "fluxgate.record_events"
    send_budget_alert = "fluxgate.send_budget_alert"
    send_anomaly_alert = "fluxgate.send_anomaly_alert"
    replay_spool = "fluxgate.replay_spool"
    check_budgets = "fluxgate.check_budgets"
    apply_retention = "fluxgate.apply_retention"


def celery_configured() -> bool:
    """Celery is installed and the site names a broker."""
    if not getattr(settings, "CELERY_BROKER_URL", None):
        return False
    try:
        import celery  # noqa: F401
    except ImportError:
        return False
    return True


def site_celery_app() -> Any:
    """The site's Celery app (see the module docstring for how it is found)."""
    configured = fluxgate_settings.CELERY_APP
    if configured:
        return import_string(configured) if isinstance(configured, str) else configured
    from celery import _state

    candidates = (_state._tls.current_app, _state.default_app, *_state._get_active_apps())
    for app in candidates:
        if app is not None and not is_celery_fallback(app):
            return app
    return _state.get_current_app()


def is_celery_fallback(app: Any) -> bool:
    """Whether ``app`` is what ``celery._state`` creates for a thread with no current app."""
    return bool(app.main == "default" and not app.fixups)
