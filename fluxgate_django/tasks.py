"""Celery tasks (``pip install 'django-fluxgate[celery]'``). Found by the Celery app's
``autodiscover_tasks()``; the periodic ones are scheduled with
:func:`fluxgate_django.celery_support.beat_schedule`."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from celery import shared_task
from django.db import DatabaseError
from django.utils import timezone

from .alerts import check_thresholds, send_anomaly_notifications, send_notifications
from .celery_app import TASKS
from .celery_support import RECORD_EVENTS_TIME_LIMIT, RETRY_BACKOFF_MAX
from .models import Budget, BudgetAlert, SpendCounter
from .periods import window_start
from .recording import failures, spool
from .recording.celery import payload_records
from .recording.rows import events_alias
from .recording.write import write_events
from .retention import delete_old_events, delete_old_settlement_tokens

try:
    import psycopg
except ImportError:  # pragma: no cover - sites without PostgreSQL
    psycopg = None  # type: ignore[assignment]

logger = logging.getLogger("fluxgate.recording")

#: What the batch task retries on: every database error, Django's and psycopg's own
#: (raised as they are by ``COPY``, which ``except DatabaseError`` never sees).
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    (DatabaseError, psycopg.Error) if psycopg is not None else (DatabaseError,)
)


@shared_task(
    name=TASKS.record_events,
    ignore_result=True,  # nobody waits for it: no result-backend write per batch
    acks_late=True,
    reject_on_worker_lost=True,
    # A batch still running after this long is stuck (a stalled connection): its pool
    # process is killed and, with acks_on_timeout off, the message goes back to the
    # broker at once (the batch is idempotent). (acks_on_failure_or_timeout: the same
    # for Celery < 5.5, which has only that one; a failure is a bug, its batch spooled.)
    time_limit=RECORD_EVENTS_TIME_LIMIT,
    acks_on_timeout=False,
    acks_on_failure=True,
    acks_on_failure_or_timeout=False,
    autoretry_for=DATABASE_ERRORS,
    retry_backoff=True,
    # Below the visibility timeout of celery_support.celery_settings(): a retry waiting
    # for its countdown in a live worker is not delivered a second time meanwhile.
    retry_backoff_max=RETRY_BACKOFF_MAX,
    max_retries=None,
)
def record_events(payload: str | list[dict[str, Any]]) -> int:
    """Write one batch of events (idempotent by ``tracking_id``; budgets settle once).

    ``payload``: the batch packed by :func:`~fluxgate_django.recording.celery.pack_payload`
    (or, from an earlier version, a list of ``EventRecord.to_json()`` dicts).

    ``acks_late`` + ``reject_on_worker_lost``: a worker that dies mid-batch leaves the
    message to the broker, which delivers it again (the rows it may have committed are
    skipped by ``tracking_id``). On any database error — psycopg's own included, at any
    statement or at ``COMMIT`` — the task is retried with backoff (``write_events`` has
    already retried once quickly), so the batch waits in the broker rather than on a
    worker's disk, and is never acknowledged unwritten. Any other exception is a bug:
    the batch goes to this worker's spool (kept, replayed later) before the task fails.
    """
    records = payload_records(payload)
    try:
        return write_events(records, spool_on_error=False)
    except DATABASE_ERRORS:
        # A psycopg error raised unwrapped (COPY) does not mark the connection unusable
        # for Django, which would hand the broken one to the next task: the next attempt
        # (in this process) opens a new one.
        failures.discard_connection(events_alias())
        raise  # autoretry_for: retried with backoff
    except Exception:
        logger.exception(
            "FluxGate could not write a batch of %d events (a bug); spooling them",
            len(records),
        )
        spool.append(records)
        raise


@shared_task(name=TASKS.send_budget_alert, acks_late=True, max_retries=3)
def send_budget_alert(alert_id: int) -> None:
    send_notifications(alert_id)


@shared_task(name=TASKS.send_anomaly_alert, acks_late=True, max_retries=3)
def send_anomaly_alert(anomaly_id: int) -> None:
    send_anomaly_notifications(anomaly_id)


@shared_task(name=TASKS.replay_spool)
def replay_spool() -> int:
    """Write spooled events (left by a database outage) to the database."""
    return spool.replay(write_events)


@shared_task(name=TASKS.check_budgets)
def check_budgets() -> int:
    """Raise any threshold alert a budget has reached (e.g. after a limit was lowered), and
    send again the notifications that failed."""
    ids = [
        counter.id
        for budget in Budget.objects.all()
        for counter in SpendCounter.objects.filter(
            budget=budget, window_start=window_start(budget.period)
        )
    ]
    check_thresholds(ids)
    # Alerts whose notification failed (mail server down...) are sent again.
    stale = timezone.now() - dt.timedelta(minutes=1)
    for alert_id in BudgetAlert.objects.filter(
        notified_at__isnull=True, created_at__lt=stale
    ).values_list("id", flat=True):
        send_notifications(alert_id)
    return len(ids)


@shared_task(name=TASKS.apply_retention)
def apply_retention(batch_size: int = 10_000) -> int:
    """Delete events older than ``FLUXGATE["RETENTION_DAYS"]`` in batches (rollups stay),
    and budget settlement tokens left behind (see ``delete_old_settlement_tokens``)."""
    delete_old_settlement_tokens()
    return delete_old_events(batch_size=batch_size)
