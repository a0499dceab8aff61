"""Budget alerts: one ``BudgetAlert`` per budget, window and threshold, then notify.

The unique constraint on (budget, window, threshold) makes "once" hold across processes:
whoever inserts the row sends the signal and the notifications. Notifications (e-mail to
the team's admins through Django's mail, and the budget's webhook) go through a Celery
task when Celery is configured (``CELERY_BROKER_URL`` set and celery installed), else a
background thread — never on the caller's LLM call.
"""

from __future__ import annotations

import logging
import threading
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, router, transaction
from django.utils import timezone

from . import webhooks
from .celery_app import TASKS, celery_configured, site_celery_app
from .conf import fluxgate_settings
from .teams import email_field_name

logger = logging.getLogger("fluxgate.alerts")


def thresholds_crossed(budget_threshold: int, spent_units: int, limit_units: int) -> list[int]:
    """The thresholds (alert percent and 100) that ``spent`` has reached."""
    if limit_units <= 0:
        return []
    percent = Decimal(spent_units) * 100 / Decimal(limit_units)
    return [t for t in sorted({budget_threshold, 100}) if percent >= t]


def raise_alert(budget: Any, counter: Any, threshold: int, *, kind: str = "threshold") -> bool:
    """Create the alert for this window and threshold unless it exists; True if created."""
    from .models import BudgetAlert
    from .signals import budget_threshold_crossed

    # On the alerts' database, a savepoint inside the write's transaction there (or its
    # own transaction); announced once that commits.
    alias = str(router.db_for_write(BudgetAlert))
    try:
        with transaction.atomic(using=alias):
            alert = BudgetAlert.objects.using(alias).create(
                budget=budget,
                window_start=counter.window_start,
                threshold_percent=threshold,
                spent_usd=counter.spent,
                limit_usd=counter.limit,
                kind=kind,
            )
    except IntegrityError:
        return False  # someone (maybe another process) already raised it

    def announce() -> None:
        budget_threshold_crossed.send(
            sender=type(budget),
            budget=budget,
            alert=alert,
            threshold_percent=threshold,
            spent=alert.spent_usd,
            limit=alert.limit_usd,
            window_start=alert.window_start,
        )
        dispatch_notification(alert.pk)

    transaction.on_commit(announce, using=alias)
    return True


def check_thresholds(counter_ids: list[int]) -> None:
    """Raise the alerts that these counters' spend has reached (called after settling, in
    the same transaction: read where they were written, never a lagging replica)."""
    from .models import SpendCounter

    counters = SpendCounter.objects.db_manager(router.db_for_write(SpendCounter))
    for counter in counters.filter(id__in=counter_ids).select_related("budget"):
        for threshold in thresholds_crossed(
            counter.budget.alert_threshold_percent, counter.spent_units, counter.limit_units
        ):
            raise_alert(counter.budget, counter, threshold)


def dispatch_notification(alert_id: int) -> None:
    """Send the alert's e-mail and webhook off the caller's path."""
    _dispatch(TASKS.send_budget_alert, send_notifications, alert_id)


def _dispatch(task_name: str, send: Any, object_id: int) -> None:
    """Run ``send(object_id)`` as the Celery task ``task_name`` when Celery is configured,
    else in a background thread (also when the task can't be queued)."""
    if celery_configured():
        try:
            site_celery_app().send_task(task_name, args=[object_id])
            return
        except Exception:
            logger.warning("FluxGate could not queue %s; sending in-process", task_name)
    _start_thread(send, object_id)


_threads: list[threading.Thread] = []


def wait_for_notifications(timeout: float = 10) -> None:
    """Wait for in-process notification threads (tests, shutdown)."""
    while _threads:
        _threads.pop().join(timeout)


def dispatch_anomaly_notification(anomaly_id: int) -> None:
    """Tell the team's admins about a runaway, off the caller's path."""
    _dispatch(TASKS.send_anomaly_alert, send_anomaly_notifications, anomaly_id)


def _start_thread(func: Any, arg: int) -> None:
    thread = threading.Thread(
        target=_run_and_close, args=(func, arg), name="fluxgate-alert", daemon=True
    )
    thread.start()
    _threads.append(thread)


def _run_and_close(func: Any, arg: int, attempts: int = 5) -> None:
    import time

    from django.db import OperationalError, connections

    try:
        for attempt in range(attempts):
            try:
                func(arg)
                return
            except OperationalError:
                # A busy or briefly unreachable database: try again shortly.
                if attempt == attempts - 1:
                    raise
                connections.close_all()
                time.sleep(0.05 * 2**attempt)
    except Exception:
        logger.exception("FluxGate could not send a notification (%s %s)", func.__name__, arg)
    finally:
        connections.close_all()  # this thread's own, whichever databases it used


def _admin_emails(team: Any) -> list[str]:
    """The e-mail addresses of the team's admins (none if the user model has no e-mail
    field: ``EMAIL_FIELD``, default ``email``)."""
    from .models import TeamMembership

    field = email_field_name()
    if field is None:
        return []
    return [
        email
        for email in TeamMembership.objects.filter(
            team=team, role=TeamMembership.Role.ADMIN
        ).values_list(f"user__{field}", flat=True)
        if email
    ]


def send_anomaly_notifications(anomaly_id: int) -> None:
    from django.core.mail import send_mail

    from .models import SpendAnomaly

    anomaly = SpendAnomaly.objects.select_related("team").get(pk=anomaly_id)
    recipients = _admin_emails(anomaly.team)
    if not recipients:
        return
    scope = anomaly.team.name + (f" / {anomaly.feature}" if anomaly.feature else "")
    blocked = (
        f"Calls are blocked until {anomaly.blocked_until:%Y-%m-%d %H:%M %Z}.\n"
        if anomaly.blocked_until
        else ""
    )
    send_mail(
        f"[FluxGate] Runaway LLM spend in {scope}",
        f"{scope} spent ${anomaly.recent_usd} in the last {anomaly.window_minutes} minutes, "
        f"against a usual ${anomaly.baseline_usd:.4f} per {anomaly.window_minutes} minutes.\n"
        f"{blocked}",
        fluxgate_settings.ALERT_FROM_EMAIL,
        recipients,
    )


def send_notifications(alert_id: int) -> None:
    """E-mail the team's admins and call the budget's webhook (once per alert)."""
    from django.core.mail import send_mail

    from .models import BudgetAlert

    # Claim the alert first: whoever flips notified_at sends it, once, even if this is a
    # retry or another worker got the same task.
    if not BudgetAlert.objects.filter(pk=alert_id, notified_at__isnull=True).update(
        notified_at=timezone.now()
    ):
        return
    alert = BudgetAlert.objects.select_related("budget__team").get(pk=alert_id)
    try:
        _send_budget_alert(alert, send_mail)
    except Exception:
        # Not sent: release the claim so a retry (or check_budgets) can send it.
        BudgetAlert.objects.filter(pk=alert_id).update(notified_at=None)
        raise


def _send_budget_alert(alert: Any, send_mail: Any) -> None:
    budget = alert.budget
    recipients = _admin_emails(budget.team)
    scope = f"{budget.team.name}" + (f" / {budget.feature}" if budget.feature else "")
    subject = (
        f"[FluxGate] {scope}: {alert.threshold_percent}% of the {budget.period}ly budget "
        f"(${alert.spent_usd:.4f} of ${alert.limit_usd:.2f})"
    )
    body = (
        f"The {budget.period}ly LLM budget of {scope} reached {alert.threshold_percent}% "
        f"in the window starting {alert.window_start}.\n\n"
        f"Spent: ${alert.spent_usd}\nLimit: ${alert.limit_usd}\n"
        f"Action when exceeded: {budget.get_action_display()}\n"
    )
    if recipients:
        send_mail(subject, body, fluxgate_settings.ALERT_FROM_EMAIL, recipients)
    if budget.webhook_url:
        _post_webhook(
            budget,
            {
                "type": "budget_threshold_crossed",
                "team": budget.team.slug,
                "feature": budget.feature,
                "period": budget.period,
                "window_start": alert.window_start.isoformat(),
                "threshold_percent": alert.threshold_percent,
                "spent_usd": str(alert.spent_usd),
                "limit_usd": str(alert.limit_usd),
                "kind": alert.kind,
            },
        )


def _post_webhook(budget: Any, payload: dict[str, Any]) -> None:
    """The budget's webhook, signed, to a public address only (``webhooks.post``). A URL
    refused now (it resolves inside the network) is logged, not retried: a retry would be
    refused too; a failed delivery raises, so that the alert is sent again."""
    try:
        webhooks.post(budget.webhook_url, payload, secret=webhooks.site_secret())
    except webhooks.UnsafeWebhook as exc:  # (the URL itself is not logged: it may hold a token)
        logger.warning("FluxGate did not call the webhook of budget %s: %s", budget.pk, exc)
