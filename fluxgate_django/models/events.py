"""LLM call events, and the price overrides they are priced with."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from ..records import Source, Status
from .teams import Team


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
    #: Of the cache writes, those to Anthropic's 1-hour cache (priced apart).
    cache_write_1h_tokens = models.PositiveIntegerField(default=0)
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
