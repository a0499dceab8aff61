"""FluxGate's tables: teams and their keys, budgets, price overrides, and LLM call events."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .records import Source, Status
from .reports.histogram import BUCKET_FIELDS
from .reports.managers import RollupQuerySet

# Money columns: costs are Decimal(20, 10) (1e-10 USD, enough for one cheap token);
# prices and limits Decimal(14, 6). (Spelled out on each field for the type checker.)
COST_FIELD = {"max_digits": 20, "decimal_places": 10}
PRICE_FIELD = {"max_digits": 14, "decimal_places": 6}


class Team(models.Model):
    """A group of people whose LLM spend is attributed, budgeted and reported together."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="TeamMembership", related_name="fluxgate_teams"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TeamMembership(models.Model):
    class Role(models.TextChoices):
        ADMIN = "admin", _("Admin")
        MEMBER = "member", _("Member")

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="fluxgate_memberships"
    )
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "team"], name="fluxgate_unique_membership")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"


KEY_PREFIX = "fg_live_"


def hash_secret(secret: str) -> str:
    """SHA-256 of an API key secret. Keys carry 256 bits of randomness, so a fast hash is
    enough (as for GitHub tokens); only the hash is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeyManager(models.Manager["ApiKey"]):
    def create_key(self, *, team: Team, name: str, **extra: Any) -> tuple[ApiKey, str]:
        """Create a key; returns ``(api_key, secret)``. The secret is not stored: show it once."""
        lookup = secrets.token_hex(6)
        secret = f"{KEY_PREFIX}{lookup}_{secrets.token_urlsafe(32)}"
        key = self.create(
            team=team,
            name=name,
            prefix=f"{KEY_PREFIX}{lookup}",
            hashed_key=hash_secret(secret),
            **extra,
        )
        return key, secret

    def get_from_secret(self, secret: str) -> ApiKey | None:
        """The active key whose secret this is, compared in constant time; else ``None``."""
        if not secret.startswith(KEY_PREFIX) or secret.count("_") < 3:
            return None
        prefix = secret[: secret.index("_", len(KEY_PREFIX))]
        key = self.filter(prefix=prefix, revoked_at__isnull=True).select_related("team").first()
        if key is None or not hmac.compare_digest(key.hashed_key, hash_secret(secret)):
            return None
        return key


class ApiKey(models.Model):
    """A team's key for the FluxGate HTTP API. Only a hash of the secret is stored."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=32, unique=True, editable=False)
    hashed_key = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyManager()

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def revoke(self) -> None:
        self.revoked_at = timezone.now()
        self.save(update_fields=["revoked_at"])


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

    def current_counter(self) -> SpendCounter | None:
        """The spend counter of the window in force now (None before the first call)."""
        from .budgets import window_start

        return self.counters.filter(window_start=window_start(self.period)).first()


class ModelPrice(models.Model):
    """A negotiated or self-hosted price that overrides genai-prices for one model.

    Prices are USD per million tokens. Empty cache prices fall back to the input price.
    """

    provider = models.CharField(max_length=50)
    model = models.CharField(max_length=200)
    input_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, validators=[MinValueValidator(0)]
    )
    output_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, validators=[MinValueValidator(0)]
    )
    cache_read_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    cache_write_per_mtok = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    note = models.CharField(max_length=200, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["provider", "model"], name="fluxgate_unique_price")
        ]

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}"


class EventQuerySet(models.QuerySet["Event"]):
    def for_team(self, team: Team | int) -> EventQuerySet:
        return self.filter(team=team)

    def total_cost(self) -> Decimal:
        return self.aggregate(total=models.Sum("cost_usd"))["total"] or Decimal(0)


class Event(models.Model):
    """One LLM call attempt: tokens, cost, latency, status, and who/what caused it."""

    tracking_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # No index of its own: (team, created_at) below serves every lookup by team, and an
    # index less is ~10% less work per inserted event.
    team = models.ForeignKey(
        Team,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="events",
        db_index=False,
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="fluxgate_events",
    )
    end_user_id = models.CharField(max_length=255, blank=True, default="")
    end_user_email = models.CharField(max_length=254, blank=True, default="")
    session_id = models.CharField(max_length=255, blank=True, default="")
    conversation_id = models.CharField(max_length=255, blank=True, default="")
    request_id = models.CharField(max_length=255, blank=True, default="")
    feature = models.CharField(max_length=100, blank=True, default="")
    step = models.CharField(max_length=200, blank=True, default="")

    provider = models.CharField(max_length=50)
    model = models.CharField(max_length=200, blank=True, default="")
    requested_model = models.CharField(max_length=200, blank=True, default="")
    operation = models.CharField(max_length=50, blank=True, default="")
    status = models.CharField(
        max_length=20, choices=[(s.value, s.value) for s in Status], default=Status.SUCCESS.value
    )
    finish_reason = models.CharField(max_length=50, blank=True, default="")
    error_type = models.CharField(max_length=200, blank=True, default="")
    error_message = models.TextField(blank=True, default="")

    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    cache_read_tokens = models.PositiveIntegerField(default=0)
    cache_write_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=20, decimal_places=10, null=True, blank=True)
    cost_source = models.CharField(max_length=50, blank=True, default="")
    cost_saved_usd = models.DecimalField(max_digits=20, decimal_places=10, null=True, blank=True)

    latency_ms = models.FloatField(null=True, blank=True)
    time_to_first_token_ms = models.FloatField(null=True, blank=True)
    stream_duration_ms = models.FloatField(null=True, blank=True)
    streamed = models.BooleanField(default=False)
    cache_hit = models.BooleanField(default=False)
    fallback_attempt = models.PositiveSmallIntegerField(default=0)
    service_tier = models.CharField(max_length=50, blank=True, default="")
    source = models.CharField(
        max_length=20, choices=[(s.value, s.value) for s in Source], default=Source.SDK.value
    )
    run_id = models.CharField(max_length=64, blank=True, default="")
    parent_run_id = models.CharField(max_length=64, blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    tags = models.JSONField(default=list, blank=True)
    #: Prompt and completion, only when FLUXGATE["STORE_CONTENT"] is on.
    content = models.JSONField(null=True, blank=True)

    objects = EventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["team", "created_at"], name="fluxgate_ev_team_created"),
            models.Index(fields=["feature", "created_at"], name="fluxgate_ev_feature_created"),
            models.Index(
                fields=["provider", "model", "created_at"], name="fluxgate_ev_model_created"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider}/{self.model} {self.status} {self.tracking_id}"


#: Budget counters hold money as integers of 1e-10 USD (the precision of ``Event.cost_usd``),
#: so that the conditional UPDATE that reserves spend is exact on every database.
MONEY_UNIT = Decimal("1e-10")


def to_units(amount: Decimal) -> int:
    return int((amount / MONEY_UNIT).to_integral_value(rounding="ROUND_CEILING"))


def from_units(units: int) -> Decimal:
    return (Decimal(units) * MONEY_UNIT).normalize() if units else Decimal(0)


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


class RollupBase(models.Model):
    """Daily totals of the events of one group, kept current by the recorder.

    ``day`` is the events' date in the site's time zone (``TIME_ZONE``). ``team_key`` is
    the team id, or 0 for events without a team (a plain integer, not a foreign key, so
    that it can be part of the unique key and a deleted team never fails a write).
    ``requests`` counts the calls sent to a provider (or served from the response cache);
    calls refused by a budget are counted apart in ``budget_blocked`` and in nothing else.
    ``errors`` are ERROR and MALFORMED_REQUEST calls. Money is kept in integer units of
    1e-10 USD (``from_units``): ``priced`` calls have a known cost, summed in
    ``cost_units``; ``unpriced`` calls have none (unknown model price), and failed calls
    that were not billed are neither. ``lat_00`` … are latency histogram buckets (see
    ``fluxgate_django.reports.histogram``).
    """

    day = models.DateField()
    team_key = models.BigIntegerField(default=0)
    feature = models.CharField(max_length=100, blank=True, default="")
    provider = models.CharField(max_length=50)
    model = models.CharField(max_length=200, blank=True, default="")

    requests = models.IntegerField(default=0)
    errors = models.IntegerField(default=0)
    budget_blocked = models.IntegerField(default=0)
    fallbacks = models.IntegerField(default=0)
    cache_hits = models.IntegerField(default=0)
    priced = models.IntegerField(default=0)
    unpriced = models.IntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cache_read_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    cost_units = models.BigIntegerField(default=0)
    cost_saved_units = models.BigIntegerField(default=0)

    objects = RollupQuerySet.as_manager()

    class Meta:
        abstract = True


for _bucket in BUCKET_FIELDS:
    RollupBase.add_to_class(_bucket, models.IntegerField(default=0))


class UsageRollup(RollupBase):
    """One row per day, team, feature, provider and model: what every report but the
    per-user one reads."""

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "team_key", "feature", "provider", "model"],
                name="fluxgate_unique_usage_rollup",
            )
        ]

    def __str__(self) -> str:
        return f"{self.day} team {self.team_key} {self.feature} {self.provider}/{self.model}"


class EndUserUsageRollup(RollupBase):
    """The same totals also split per end user (``Event.end_user_id``), for the per-user
    report. Kept apart because end users are many: the other reports stay at
    groups x days rows however many users a site has."""

    end_user_id = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "team_key", "feature", "provider", "model", "end_user_id"],
                name="fluxgate_unique_user_rollup",
            )
        ]

    def __str__(self) -> str:
        return f"{self.day} user {self.end_user_id!r} {self.feature} {self.provider}/{self.model}"


class CostReport(UsageRollup):
    """The admin's cost report page (a proxy: it links the report from the admin index)."""

    class Meta:
        proxy = True
        verbose_name = "cost report"
        verbose_name_plural = "cost report"
