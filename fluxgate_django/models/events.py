"""LLM call events, and the price overrides they are priced with."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from ..records import Source, Status
from .teams import Team


def _price_field(verbose_name: str, help_text: str = "", *, required: bool = False) -> Any:
    """A price in USD per million tokens (``ModelPrice.clean`` refuses a negative one)."""
    return models.DecimalField(
        verbose_name,
        max_digits=14,
        decimal_places=6,
        null=not required,
        blank=not required,
        help_text=help_text,
    )


class ModelPrice(models.Model):
    """A negotiated or self-hosted price that overrides genai-prices for one model.

    Prices are USD per million tokens. Empty cache prices fall back: a cache read or a
    cache write to the input price, a 1-hour cache write to the (5-minute) cache-write
    price. With ``tier_threshold_tokens`` set, a request whose total input (cache reads
    and writes included) is over it pays the tier prices on *every* token (long-context
    pricing, as Anthropic and Google bill it); empty tier cache prices fall back the same
    way to the tier's prices.
    """

    provider = models.CharField(max_length=50)
    model = models.CharField(max_length=200)
    input_per_mtok = _price_field("input per MTok", required=True)
    output_per_mtok = _price_field("output per MTok", required=True)
    cache_read_per_mtok = _price_field("cache read per MTok", "Empty: the input price.")
    cache_write_per_mtok = _price_field(
        "cache write per MTok", "5-minute cache writes. Empty: the input price."
    )
    cache_write_1h_per_mtok = _price_field(
        "1-hour cache write per MTok", "Empty: the cache-write price."
    )
    tier_threshold_tokens = models.PositiveIntegerField(
        "long-context tier over (input tokens)",
        null=True,
        blank=True,
        help_text="A request with more input tokens than this (cache included) pays the "
        "tier prices below on every token. Empty: no tier.",
    )
    tier_input_per_mtok = _price_field("tier input per MTok")
    tier_output_per_mtok = _price_field("tier output per MTok")
    tier_cache_read_per_mtok = _price_field("tier cache read per MTok")
    tier_cache_write_per_mtok = _price_field("tier cache write per MTok")
    tier_cache_write_1h_per_mtok = _price_field("tier 1-hour cache write per MTok")
    note = models.CharField(max_length=200, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    #: The tier's prices, each with the base price it stands for above the threshold.
    TIER_FIELDS = (
        ("tier_input_per_mtok", "input_per_mtok"),
        ("tier_output_per_mtok", "output_per_mtok"),
        ("tier_cache_read_per_mtok", "cache_read_per_mtok"),
        ("tier_cache_write_per_mtok", "cache_write_per_mtok"),
        ("tier_cache_write_1h_per_mtok", "cache_write_1h_per_mtok"),
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["provider", "model"], name="fluxgate_unique_price")
        ]

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}"

    def clean(self) -> None:
        """Refuse an override that would price calls wrongly without saying so: a negative
        price, a name that can't match a call, a tier that is half set."""
        errors: dict[str, list[str]] = {}

        def error(field: str, message: str) -> None:
            errors.setdefault(field, []).append(message)

        for field in ("provider", "model"):
            value = getattr(self, field) or ""
            if value != value.strip():
                error(field, "No leading or trailing spaces: calls are matched exactly.")
        for field in (f.name for f in self._meta.fields if f.name.endswith("_per_mtok")):
            value = getattr(self, field)
            if isinstance(value, Decimal) and (not value.is_finite() or value < 0):
                error(field, "A price can't be negative.")
        tier_prices = {f: getattr(self, f) for f, _ in self.TIER_FIELDS}
        if self.tier_threshold_tokens is None:
            for field, value in tier_prices.items():
                if value is not None:
                    error(field, "A tier price needs the tier's threshold (input tokens).")
        else:
            if self.tier_threshold_tokens <= 0:
                error("tier_threshold_tokens", "The threshold must be at least 1 token.")
            for field in ("tier_input_per_mtok", "tier_output_per_mtok"):
                if tier_prices[field] is None:
                    error(field, "A tier needs its input and output prices.")
            for field, base in self.TIER_FIELDS:
                if getattr(self, base) is not None and tier_prices[field] is None:
                    # Else the tier would charge these tokens at the tier's input price.
                    error(field, "Give the tier's price too, as the base one is set.")
        if errors:
            raise ValidationError(errors)


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
