"""Celery tasks (``pip install 'django-fluxgate[celery]'``). Found by the Celery app's
``autodiscover_tasks()``; the periodic ones are scheduled with
:func:`fluxgate_django.celery_support.beat_schedule`."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import DatabaseError, InterfaceError, OperationalError

from .alerts import send_anomaly_notifications, send_notifications


@shared_task(
    name="fluxgate.record_events",
    ignore_result=True,  # nobody waits for it: no result-backend write per batch
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=None,
)
def record_events(payload: str | list[dict[str, Any]]) -> int:
    """Write one batch of events (idempotent by ``tracking_id``; budgets settle once).

    ``payload``: the batch packed by :func:`~fluxgate_django.records.pack_records` (or,
    from an earlier version, a list of ``EventRecord.to_json()`` dicts).

    ``acks_late`` + ``reject_on_worker_lost``: a worker that dies mid-batch leaves the
    message to the broker, which delivers it again (the rows it may have committed are
    skipped by ``tracking_id``). While the database is unreachable the task is retried
    with backoff, so the batch waits in the broker rather than on a worker's disk. Any
    other database error (a batch the database refuses) is not cured by retrying: the
    batch goes to the worker's spool, where it is logged and kept.
    """
    from .recording.base import write_events
    from .recording.celery import payload_records

    records = payload_records(payload)
    try:
        return write_events(records, spool_on_error=False)
    except (OperationalError, InterfaceError):
        raise
    except DatabaseError:
        return write_events(records)


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
    """Raise any threshold alert a budget has reached (e.g. after a limit was lowered), and
    send again the notifications that failed."""
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
    # Alerts whose notification failed (mail server down...) are sent again.
    from datetime import timedelta

    from django.utils import timezone

    from .alerts import send_notifications
    from .models import BudgetAlert

    stale = timezone.now() - timedelta(minutes=1)
    for alert_id in BudgetAlert.objects.filter(
        notified_at__isnull=True, created_at__lt=stale
    ).values_list("id", flat=True):
        send_notifications(alert_id)
    return len(ids)


@shared_task(name="fluxgate.apply_retention")
def apply_retention(batch_size: int = 10_000) -> int:
    """Delete events older than ``FLUXGATE["RETENTION_DAYS"]`` in batches (rollups stay)."""
    from .retention import delete_old_events

    return delete_old_events(batch_size=batch_size)
