"""Budgets, their spend counters per window, alerts and runaway anomalies."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from ..money import from_units
from ..periods import window_start
from .teams import Team


class Budget(models.Model):
    """A spending limit for a team (optionally one feature) per day or month."""

    class Period(models.TextChoices):
        DAY = "day", _("Day")
        MONTH = "month", _("Month")

    class Action(models.TextChoices):
        BLOCK = "block", _("Block calls over the limit")
        ALERT = "alert", _("Alert only")

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="budgets")
    feature = models.CharField(
        max_length=100, blank=True, default="", help_text="Empty: applies to the whole team."
    )
    period = models.CharField(max_length=10, choices=Period.choices, default=Period.MONTH)
    limit_usd = models.DecimalField(
        max_digits=14, decimal_places=6, validators=[MinValueValidator(Decimal("0.000001"))]
    )
    alert_threshold_percent = models.PositiveSmallIntegerField(
        default=80, validators=[MinValueValidator(1), MaxValueValidator(100)]
    )
    action = models.CharField(max_length=10, choices=Action.choices, default=Action.BLOCK)
    webhook_url = models.URLField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(limit_usd__gt=0), name="fluxgate_budget_limit_positive"
            ),
            models.CheckConstraint(
                condition=models.Q(
                    alert_threshold_percent__gte=1, alert_threshold_percent__lte=100
                ),
                name="fluxgate_budget_threshold_range",
            ),
        ]

    def __str__(self) -> str:
        scope = f"{self.team} / {self.feature}" if self.feature else str(self.team)
        return f"{scope}: ${self.limit_usd} per {self.period}"

    #: The webhook URL as loaded from the database (None: a new budget).
    _saved_webhook_url: str | None = None

    @classmethod
    def from_db(cls, *args: Any, **kwargs: Any) -> Budget:
        instance = super().from_db(*args, **kwargs)
        instance._saved_webhook_url = instance.__dict__.get("webhook_url")
        return instance

    def clean(self) -> None:
        """A new webhook URL must be one FluxGate may call: https, to a public address
        (``webhooks``; checked again at each call, so an unchanged one is not re-resolved
        here: editing a budget does not depend on its webhook's DNS)."""
        super().clean()
        if self.webhook_url and self.webhook_url != self._saved_webhook_url:
            from ..webhooks import UnsafeWebhook, check_url

            try:
                check_url(self.webhook_url)
            except UnsafeWebhook as exc:
                raise ValidationError({"webhook_url": str(exc)}) from None

    def current_counter(self) -> SpendCounter | None:
        """The spend counter of the window in force now (None before the first call)."""
        return self.counters.filter(window_start=window_start(self.period)).first()


class SpendCounter(models.Model):
    """Spend and in-flight reservations of one budget in one window (a day or a month).

    ``limit_units`` and ``blocking`` are copied from the budget so that a reservation is a
    single conditional UPDATE of this row (``WHERE spent + reserved + x <= limit``).
    """

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="counters")
    window_start = models.DateField()
    limit_units = models.BigIntegerField()
    blocking = models.BooleanField()
    spent_units = models.BigIntegerField(default=0)
    reserved_units = models.BigIntegerField(default=0)
    #: How far calls' real costs have run past their reserved bound in this window (the
    #: largest ratio, decaying by 2 % a settlement): every process scales its next
    #: reservations by it, so one that starts late doesn't under-reserve.
    bound_scale = models.FloatField(default=1.0, db_default=1.0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["budget", "window_start"], name="fluxgate_unique_counter_window"
            )
        ]

    def __str__(self) -> str:
        return f"{self.budget} from {self.window_start}"

    @property
    def spent(self) -> Decimal:
        return from_units(self.spent_units)

    @property
    def reserved(self) -> Decimal:
        return from_units(self.reserved_units)

    @property
    def limit(self) -> Decimal:
        return from_units(self.limit_units)

    @property
    def percent_used(self) -> Decimal:
        if not self.limit_units:
            return Decimal(0)
        return (Decimal(self.spent_units) * 100 / Decimal(self.limit_units)).quantize(
            Decimal("0.1")
        )


class SettlementToken(models.Model):
    """A call whose reservation has been settled, by its event's ``tracking_id``.

    The settlement inserts it in the same statement that updates the counters, and does
    nothing if it is there already, so a settlement retried after a cut connection (it
    may or may not have committed) counts once. Deleted when the event is stored (no later
    settlement can happen then), and after ``TOKEN_DAYS`` at the latest."""

    TOKEN_DAYS = 30

    tracking_id = models.UUIDField(primary_key=True)
    created_at = models.DateTimeField(db_default=Now(), db_index=True)

    def __str__(self) -> str:
        return str(self.tracking_id)


class BudgetAlert(models.Model):
    """A budget crossed a threshold (its alert percent, or 100%) in a window: one row each."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    window_start = models.DateField()
    threshold_percent = models.PositiveSmallIntegerField()
    spent_usd = models.DecimalField(max_digits=20, decimal_places=10)
    limit_usd = models.DecimalField(max_digits=14, decimal_places=6)
    kind = models.CharField(max_length=20, default="threshold")
    created_at = models.DateTimeField(default=timezone.now)
    notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["budget", "window_start", "threshold_percent"],
                name="fluxgate_unique_alert",
            )
        ]

    def __str__(self) -> str:
        return f"{self.budget}: {self.threshold_percent}% on {self.window_start}"


class SpendAnomaly(models.Model):
    """A runaway: a team's or feature's spend rate far above its trailing average."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="anomalies")
    feature = models.CharField(max_length=100, blank=True, default="")
    window_minutes = models.PositiveSmallIntegerField()
    recent_usd = models.DecimalField(max_digits=20, decimal_places=10)
    baseline_usd = models.DecimalField(max_digits=20, decimal_places=10)
    blocked_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        scope = f"{self.team} / {self.feature}" if self.feature else str(self.team)
        return f"Runaway spend in {scope} at {self.created_at:%Y-%m-%d %H:%M}"


# -- report rollups (see fluxgate_django.reports) -----------------------------------------
