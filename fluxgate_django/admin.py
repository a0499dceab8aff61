"""Django admin for FluxGate: read-only events (and dead letters), teams, API keys, price
overrides, budgets."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import django
from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.db import models
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.html import format_html

from . import admin_report  # noqa: F401  (registers the cost report page, admin:fluxgate_report)
from .models import (
    ApiKey,
    Budget,
    BudgetAlert,
    DeadLetter,
    Event,
    ModelPrice,
    SpendAnomaly,
    Team,
    TeamMembership,
)
from .models.teams import forget_api_keys

# -- events -------------------------------------------------------------------------------


class ModelListFilter(admin.SimpleListFilter):
    """Models seen in events, narrowed to the provider chosen in the provider filter."""

    title = "model"
    parameter_name = "model"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        events = Event.objects.all()
        # "provider" since Django 5.0, "provider__exact" before.
        provider = request.GET.get("provider") or request.GET.get("provider__exact")
        if provider:
            events = events.filter(provider=provider)
        models = events.order_by("model").values_list("model", flat=True).distinct()
        return [(m, m) for m in models if m]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Event]) -> QuerySet[Event]:
        if self.value():
            return queryset.filter(model=self.value())
        return queryset


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    """Events are written only by the recorder: viewable, never added, changed or deleted."""

    list_display = (
        "created_at",
        "provider",
        "model",
        "feature",
        "team",
        "status",
        "input_tokens",
        "output_tokens",
        "cost",
        "latency",
    )
    list_filter = (
        "provider",
        ModelListFilter,
        "status",
        "feature",
        "team",
        "source",
        "streamed",
    )
    date_hierarchy = "created_at"
    search_fields = (
        "tracking_id",
        "feature",
        "end_user_id",
        "session_id",
        "request_id",
        "model",
    )
    list_select_related = ("team",)
    # COUNT(*) over a large table on every changelist page is the slow part; skip it.
    show_full_result_count = False
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "tracking_id",
                    "created_at",
                    "provider",
                    ("model", "requested_model"),
                    "operation",
                    "status",
                    "finish_reason",
                    "source",
                )
            },
        ),
        (
            "Attribution",
            {
                "fields": (
                    "team",
                    "user",
                    ("end_user_id", "end_user_email"),
                    "feature",
                    "step",
                    "session_id",
                    "conversation_id",
                    "request_id",
                    ("run_id", "parent_run_id"),
                    "metadata",
                    "tags",
                )
            },
        ),
        (
            "Tokens and cost",
            {
                "fields": (
                    ("input_tokens", "output_tokens", "reasoning_tokens"),
                    ("cache_read_tokens", "cache_write_tokens"),
                    ("cost_usd", "cost_source", "cost_saved_usd"),
                    "service_tier",
                )
            },
        ),
        (
            "Timing",
            {
                "fields": (
                    "latency_ms",
                    "time_to_first_token_ms",
                    "stream_duration_ms",
                    ("streamed", "cache_hit", "fallback_attempt"),
                )
            },
        ),
        ("Error", {"fields": ("error_type", "error_message"), "classes": ("collapse",)}),
        ("Content", {"fields": ("content",), "classes": ("collapse",)}),
    )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return flatten_fieldsets(self.fieldsets)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="cost (USD)", ordering="cost_usd")
    def cost(self, obj: Event) -> str:
        if obj.cost_usd is None:
            return "unknown"
        return f"${_plain_decimal(obj.cost_usd)}"

    @admin.display(description="latency", ordering="latency_ms")
    def latency(self, obj: Event) -> str:
        return "" if obj.latency_ms is None else f"{obj.latency_ms:,.0f} ms"


def _plain_decimal(value: Decimal) -> str:
    """``0.0001250000`` → ``0.000125``; ``0E-10`` → ``0``."""
    text = format(value.normalize(), "f")
    return text if text != "-0" else "0"


# -- teams --------------------------------------------------------------------------------


class TeamMembershipInline(admin.TabularInline):
    model = TeamMembership
    extra = 1
    # raw_id rather than autocomplete: autocomplete needs an admin with search_fields for
    # the project's user model, which a custom user model may not have.
    raw_id_fields = ("user",)


class BudgetStateMixin:
    """Spent / reserved / limit / % of a budget's current window, for list and inline."""

    @admin.display(description="spent this window")
    def spent_now(self, obj: Budget) -> str:
        counter = obj.current_counter() if obj.pk else None
        return f"${counter.spent:.4f}" if counter else "$0"

    @admin.display(description="in flight")
    def reserved_now(self, obj: Budget) -> str:
        counter = obj.current_counter() if obj.pk else None
        return f"${counter.reserved:.4f}" if counter else "$0"

    @admin.display(description="used")
    def percent_now(self, obj: Budget) -> str:
        counter = obj.current_counter() if obj.pk else None
        percent = counter.percent_used if counter else Decimal(0)
        colour = "#ba2121" if percent >= 100 else "#c77c00" if percent >= 80 else "inherit"
        return format_html('<strong style="color:{}">{}%</strong>', colour, percent)


class BudgetInline(BudgetStateMixin, admin.TabularInline):
    model = Budget
    extra = 0
    fields = (
        "feature",
        "period",
        "limit_usd",
        "alert_threshold_percent",
        "action",
        "webhook_url",
        "spent_now",
        "reserved_now",
        "percent_now",
    )
    readonly_fields = ("spent_now", "reserved_now", "percent_now")
    formfield_overrides = {
        models.URLField: {"assume_scheme": "https"} if django.VERSION >= (5, 0) else {}
    }


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "member_count", "created_at")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    inlines = (TeamMembershipInline, BudgetInline)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Team]:
        return super().get_queryset(request).annotate(_member_count=Count("memberships"))

    @admin.display(description="members", ordering="_member_count")
    def member_count(self, obj: Any) -> int:
        return obj._member_count


# -- API keys -----------------------------------------------------------------------------


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are created here with a generated secret that is shown once; only its hash is
    stored (and never displayed). A key's team cannot change; revoke it instead."""

    list_display = ("display_prefix", "name", "team", "created_at", "last_used_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter), "team")
    search_fields = ("name", "prefix", "team__name", "team__slug")
    list_select_related = ("team",)
    autocomplete_fields = ("team",)
    actions = ("revoke_keys",)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ("team", "name")
        return ("name", "team", "display_prefix", "created_at", "last_used_at", "revoked_at")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ()
        return ("team", "display_prefix", "created_at", "last_used_at", "revoked_at")

    @admin.display(description="key", ordering="prefix")
    def display_prefix(self, obj: ApiKey) -> str:
        return f"{obj.prefix}…"

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> Any:
        obj = super().save_form(request, form, change)
        if change:
            return obj
        # The secret exists only here: create the key through the manager, which stores
        # its hash, and keep the secret on the instance for response_add's message.
        key, secret = ApiKey.objects.create_key(team=obj.team, name=obj.name)
        key._fluxgate_secret = secret  # type: ignore[attr-defined]
        return key

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
        # A new key was already saved by create_key() in save_form().

    def response_add(self, request: HttpRequest, obj: Any, post_url_continue: Any = None) -> Any:
        secret = obj.__dict__.pop("_fluxgate_secret", None)
        if secret is not None:
            self.message_user(
                request,
                format_html(
                    "The secret of API key “{}” is <code>{}</code>. "
                    "Copy it now, it will not be shown again.",
                    obj.name,
                    secret,
                ),
                messages.SUCCESS,
            )
        return super().response_add(request, obj, post_url_continue)

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> HttpResponse | None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        forget_api_keys()  # (an update sends no signal)
        self.message_user(request, f"Revoked {count} API key{'s' if count != 1 else ''}.")
        return None


# -- prices and budgets -------------------------------------------------------------------


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = (
        "provider",
        "model",
        "input_per_mtok",
        "output_per_mtok",
        "cache_read_per_mtok",
        "cache_write_per_mtok",
        "note",
        "updated_at",
    )
    list_filter = ("provider",)
    search_fields = ("provider", "model", "note")
    fieldsets = (
        (None, {"fields": ("provider", "model", "note")}),
        (
            "Prices",
            {
                "description": "USD per million tokens. They apply to the next tracked call, "
                "instead of the genai-prices data. Empty cache prices fall back to the "
                "input price.",
                "fields": (
                    ("input_per_mtok", "output_per_mtok"),
                    ("cache_read_per_mtok", "cache_write_per_mtok"),
                ),
            },
        ),
    )


@admin.register(Budget)
class BudgetAdmin(BudgetStateMixin, admin.ModelAdmin):
    list_display = (
        "team",
        "feature",
        "period",
        "limit_usd",
        "spent_now",
        "reserved_now",
        "percent_now",
        "alert_threshold_percent",
        "action",
    )
    list_filter = ("period", "action", "team")
    search_fields = ("team__name", "team__slug", "feature")
    list_select_related = ("team",)
    autocomplete_fields = ("team",)
    # Webhook URLs are https; also silences Django 5's "default scheme will change" warning.
    formfield_overrides = {
        models.URLField: {"assume_scheme": "https"} if django.VERSION >= (5, 0) else {}
    }


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows FluxGate writes itself: listed for people, never edited by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "budget",
        "window_start",
        "threshold_percent",
        "kind",
        "spent_usd",
        "limit_usd",
        "notified_at",
    )
    list_filter = ("kind", "threshold_percent", "budget__team")
    list_select_related = ("budget__team",)
    date_hierarchy = "created_at"


@admin.register(SpendAnomaly)
class SpendAnomalyAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "team",
        "feature",
        "window_minutes",
        "recent_usd",
        "baseline_usd",
        "blocked_until",
    )
    list_filter = ("team",)
    list_select_related = ("team",)
    date_hierarchy = "created_at"


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin):
    """Events the database refused, quarantined by the recorder with the reason (see
    ``recording.quarantine``): listed and filtered by team like events, never edited."""

    list_display = ("quarantined_at", "tracking_id", "team", "provider", "model", "feature")
    list_filter = ("team", "provider", "source")
    search_fields = ("tracking_id", "feature", "model", "reason")
    list_select_related = ("team",)
    date_hierarchy = "quarantined_at"
    fields = (
        "tracking_id",
        "quarantined_at",
        "created_at",
        "team",
        ("provider", "model"),
        ("feature", "source"),
        "reason",
        "record",
    )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return flatten_fieldsets([(None, {"fields": self.fields})])
