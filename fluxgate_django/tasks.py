"""Celery tasks (``pip install 'django-fluxgate[celery]'``). Found by the Celery app's
``autodiscover_tasks()``; the periodic ones are scheduled with
:func:`fluxgate_django.celery.beat_schedule`."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import DatabaseError

from .alerts import send_anomaly_notifications, send_notifications


@shared_task(
    name="fluxgate.record_events",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(DatabaseError,),
    retry_backoff=True,
    max_retries=None,
)
def record_events(payload: list[dict[str, Any]]) -> int:
    """Write one batch of events (idempotent by ``tracking_id``; budgets settle once)."""
    from .recording.base import write_events
    from .recording.celery import payload_records

    return write_events(payload_records(payload))


@shared_task(name="fluxgate.send_budget_alert", acks_late=True, max_retries=3)
def send_budget_alert(alert_id: int) -> None:
    send_notifications(alert_id)


@shared_task(name="fluxgate.send_anomaly_alert", acks_late=True, max_retries=3)
def send_anomaly_alert(anomaly_id: int) -> None:
    send_anomaly_notifications(anomaly_id)


@shared_task(name="fluxgate.replay_spool")
def replay_spool() -> int:
    """Write spooled events (left by a database outage) to the database."""
    from .recording import spool
    from .recording.base import write_events

    return spool.replay(write_events)


@shared_task(name="fluxgate.check_budgets")
def check_budgets() -> int:
    """Raise any threshold alert a budget has reached (e.g. after a limit was lowered)."""
    from .alerts import check_thresholds
    from .budgets import window_start
    from .models import Budget, SpendCounter

    ids = [
        counter.id
        for budget in Budget.objects.all()
        for counter in SpendCounter.objects.filter(
            budget=budget, window_start=window_start(budget.period)
        )
    ]
    check_thresholds(ids)
    return len(ids)


@shared_task(name="fluxgate.apply_retention")
def apply_retention(batch_size: int = 10_000) -> int:
    """Delete events older than ``FLUXGATE["RETENTION_DAYS"]`` in batches (rollups stay)."""
    from .retention import delete_old_events

    return delete_old_events(batch_size=batch_size)
