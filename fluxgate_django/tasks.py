"""Celery tasks (used when Celery is configured: ``pip install 'django-fluxgate[celery]'``)."""

from __future__ import annotations

from celery import shared_task

from .alerts import send_anomaly_notifications, send_notifications


@shared_task(name="fluxgate.send_budget_alert", acks_late=True, max_retries=3)
def send_budget_alert(alert_id: int) -> None:
    send_notifications(alert_id)


@shared_task(name="fluxgate.send_anomaly_alert", acks_late=True, max_retries=3)
def send_anomaly_alert(anomaly_id: int) -> None:
    send_anomaly_notifications(anomaly_id)
