"""Django admin for FluxGate: read-only events (and dead letters), teams, API keys, price
overrides, budgets.

Who sees what (docs/security.md): every FluxGate admin is a :class:`TeamScopedAdmin`.
A superuser sees and changes every row. Anyone else sees only the rows of the teams they
are an *admin* of (``TeamMembership.role``), and only as far as their Django model
permissions (``view_*``, ``change_*``, ``add_*``, ``delete_*``) allow: changelists, change
and delete pages, history, actions, list filters, foreign-key choices and autocompletes
are all narrowed to those teams, and a row of another team answers 404, like one that
doesn't exist. Site-wide rows (price overrides), creating and deleting teams, and rows
without a team are for superusers only. Secrets are never shown once saved: a budget's
webhook URL (it often carries a token) shows as its scheme and host, with a field to
replace it; an API key's hash is never displayed.
"""

from __future__ import annotations

from decimal import Decimal
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import django
from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import Count, QuerySet
from django.db.models.constants import LOOKUP_SEP
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import path
from django.utils import timezone
from django.utils.html import format_html

from . import admin_report  # noqa: F401  (registers the cost report page, admin:fluxgate_report)
from .admin_report import administered_teams
from .admin_trace import trace_url, trace_view
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

# -- who sees which teams -----------------------------------------------------------------


def _team_id(obj: Any, path: str) -> Any:
    """The team id of ``obj`` along ``path`` (``"team"``, ``"budget__team"``; ``"pk"``:
    ``obj`` is a team)."""
    if path == "pk":
        return obj.pk
    *hops, last = path.split("__")
    for hop in hops:
        obj = getattr(obj, hop, None)
        if obj is None:
            return None
    return getattr(obj, f"{last}_id", None)


class TeamScopedAdmin(admin.ModelAdmin):
    """The base of every FluxGate ``ModelAdmin``: rows narrowed to the teams the user
    administers (:func:`administered_teams`), on top of Django's model permissions.

    ``get_queryset`` is the scope, so the changelist, search, date hierarchy, actions
    (``delete_selected`` too), the change, delete and history pages (through
    ``get_object``, where a row out of scope is a 404), and other admins' autocompletes
    and foreign-key choices of this model all follow it. The ``has_*_permission`` hooks
    check the row's team as well, and a row saved into a team out of scope is refused.
    """

    #: How a row reaches its team (a lookup path; ``"pk"`` for teams themselves), or
    #: ``None`` for site-wide rows: superusers only.
    team_path: str | None = "team"
    #: Whether a team admin (with the Django permission) may add / delete rows of their
    #: teams; ``False``: superusers only.
    team_admins_add: bool = True
    team_admins_delete: bool = True
    #: Fields never shown once saved, which no changelist URL may filter on either
    #: (``?webhook_url__startswith=...`` would read them out a character at a time).
    secret_fields: tuple[str, ...] = ()

    def in_scope(self, request: HttpRequest, obj: Any = None) -> bool:
        """Whether the user may reach ``obj`` (``None``: some row of this model)."""
        teams = administered_teams(request)
        if teams is None:
            return True
        if self.team_path is None or not teams:
            return False
        return obj is None or _team_id(obj, self.team_path) in teams

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)
        teams = administered_teams(request)
        if teams is None:
            return queryset
        if self.team_path is None or not teams:
            return queryset.none()
        return queryset.filter(**{f"{self.team_path}__in": teams})

    def get_object(self, request: HttpRequest, object_id: str, from_field: Any = None) -> Any:
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            # Not there, or not yours: the same answer (existence is not revealed).
            raise Http404(f"No {self.opts.verbose_name} with this id.")
        return obj

    def has_module_permission(self, request: HttpRequest) -> bool:
        return super().has_module_permission(request) and self.in_scope(request)

    def lookup_allowed(self, lookup: str, value: str, request: Any = None) -> bool:
        if lookup.split(LOOKUP_SEP)[0] in self.secret_fields:
            return False  # (answered 400 by the changelist)
        if django.VERSION < (5, 0):
            return super().lookup_allowed(lookup, value)  # type: ignore[call-arg]
        return super().lookup_allowed(lookup, value, request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_view_permission(request, obj) and self.in_scope(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and self.in_scope(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        if not self.team_admins_add and administered_teams(request) is not None:
            return False
        return super().has_add_permission(request) and self.in_scope(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if not self.team_admins_delete and administered_teams(request) is not None:
            return False
        return super().has_delete_permission(request, obj) and self.in_scope(request, obj)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        return super().formfield_for_foreignkey(
            db_field, request, **_scoped_choices(self.admin_site, db_field, request, kwargs)
        )

    def formfield_for_manytomany(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        return super().formfield_for_manytomany(
            db_field, request, **_scoped_choices(self.admin_site, db_field, request, kwargs)
        )

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> Any:
        obj = super().save_form(request, form, change)
        # (The form's choices are scoped already; this holds even if a form isn't.)
        if not self.in_scope(request, obj):
            raise PermissionDenied("That team is not one you administer.")
        return obj


def _scoped_choices(
    site: admin.AdminSite, db_field: Any, request: HttpRequest, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """``kwargs`` with ``queryset`` narrowed to what the related model's FluxGate admin
    shows the user (another team is not a choice), unless a queryset is given."""
    if "queryset" in kwargs or administered_teams(request) is None:
        return kwargs
    related = site._registry.get(db_field.related_model)
    if isinstance(related, TeamScopedAdmin):
        return {**kwargs, "queryset": related.get_queryset(request)}
    return kwargs


class TeamScopedInline(admin.options.InlineModelAdmin):
    """The same rule for the inlines on a team's page (rows of that team): the team's
    page is reachable only in scope; this narrows the inline's own permissions and
    choices the same way, in case an inline is used elsewhere."""

    def _parent_in_scope(self, request: HttpRequest, parent: Any) -> bool:
        """Whether the user reaches the team ``parent`` (``None``: some team)."""
        teams = administered_teams(request)
        if teams is None:
            return True
        return bool(teams) if parent is None else parent.pk in teams

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)
        teams = administered_teams(request)
        return queryset if teams is None else queryset.filter(team__in=teams)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_view_permission(request, obj) and self._parent_in_scope(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and self._parent_in_scope(request, obj)

    def has_add_permission(self, request: HttpRequest, obj: Any) -> bool:  # type: ignore[override]
        return super().has_add_permission(request, obj) and self._parent_in_scope(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and self._parent_in_scope(request, obj)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        return super().formfield_for_foreignkey(
            db_field, request, **_scoped_choices(self.admin_site, db_field, request, kwargs)
        )


class TeamListFilter(admin.RelatedFieldListFilter):
    """A team filter listing only the teams the user reaches (not every team's name)."""

    def field_choices(self, field: Any, request: HttpRequest, model_admin: Any) -> Any:
        ordering = self.field_admin_ordering(field, request, model_admin)
        teams = administered_teams(request)
        if teams is None:
            return field.get_choices(include_blank=False, ordering=ordering)
        return field.get_choices(
            include_blank=False, limit_choices_to={"pk__in": teams}, ordering=ordering
        )


# -- secrets: webhook URLs ------------------------------------------------------------------


def webhook_summary(url: str) -> str:
    """What the admin shows of a stored webhook URL: its scheme and host only (the path
    and query often carry a token: Slack, Teams)."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(set; not shown)"
    if not parts.scheme or not host:
        return "(set; not shown)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}/…"


def _https_by_default(db_field: Any, **kwargs: Any) -> Any:
    """Form fields of the budget form (a URL without a scheme is https). The admin passes
    its own callback, but the form's fields are made once when the class is defined,
    where Django 5 warns of a URL field with no ``assume_scheme``."""
    if isinstance(db_field, models.URLField) and django.VERSION >= (5, 0):
        kwargs.setdefault("assume_scheme", "https")
    return db_field.formfield(**kwargs)


class BudgetForm(forms.ModelForm):
    """A budget's form: a saved webhook URL is never sent back to the browser. Its field
    becomes "replace": empty keeps the stored URL, a URL replaces it, and
    ``remove_webhook`` clears it."""

    remove_webhook = forms.BooleanField(required=False, label="Remove webhook")

    class Meta:
        model = Budget
        fields = (
            "team",
            "feature",
            "period",
            "limit_usd",
            "alert_threshold_percent",
            "action",
            "webhook_url",
        )
        formfield_callback = _https_by_default

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stored_webhook = self.instance.webhook_url if self.instance.pk else ""
        field = self.fields.get("webhook_url")
        if field is not None and self._stored_webhook:
            self.initial["webhook_url"] = ""
            field.label = "Replace webhook URL"
            field.help_text = (
                f"A webhook is set ({webhook_summary(self._stored_webhook)}); its URL is "
                "not shown. Leave this empty to keep it."
            )

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if "webhook_url" in self.fields:
            if data.get("remove_webhook"):
                data["webhook_url"] = ""
            elif not data.get("webhook_url") and self._stored_webhook:
                data["webhook_url"] = self._stored_webhook
        return data


class WebhookFieldsMixin:
    """The webhook columns of a budget form: on a saved budget the masked URL (read-only)
    and the replace / remove fields; to someone who can only view, the masked URL alone."""

    @admin.display(description="webhook")
    def webhook(self, obj: Budget) -> str:
        return webhook_summary(obj.webhook_url) if obj and obj.pk else ""

    def webhook_fields(self, request: HttpRequest, obj: Any, editable: bool) -> tuple[str, ...]:
        if not editable:
            return ("webhook",)
        if obj is None:
            return ("webhook_url",)
        return ("webhook", "webhook_url", "remove_webhook")


# -- events -------------------------------------------------------------------------------


class ModelListFilter(admin.SimpleListFilter):
    """Models seen in events, narrowed to the provider chosen in the provider filter."""

    title = "model"
    parameter_name = "model"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        events = model_admin.get_queryset(request)  # the user's teams' models only
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
class EventAdmin(TeamScopedAdmin):
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
        "trace",
    )
    list_filter = (
        "provider",
        ModelListFilter,
        "status",
        "feature",
        ("team", TeamListFilter),
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
                    "trace",
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

    @admin.display(description="trace")
    def trace(self, obj: Event) -> str:
        url = trace_url(obj)
        return format_html('<a href="{}">trace</a>', url) if url else ""

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view(partial(trace_view, self))
        return [path("trace/", view, name="fluxgate_trace"), *super().get_urls()]


def _plain_decimal(value: Decimal) -> str:
    """``0.0001250000`` → ``0.000125``; ``0E-10`` → ``0``."""
    text = format(value.normalize(), "f")
    return text if text != "-0" else "0"


# -- teams --------------------------------------------------------------------------------


class TeamMembershipInline(TeamScopedInline, admin.TabularInline):
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


class BudgetInline(WebhookFieldsMixin, BudgetStateMixin, TeamScopedInline, admin.TabularInline):
    model = Budget
    form = BudgetForm
    extra = 0
    readonly_fields = ("webhook", "spent_now", "reserved_now", "percent_now")

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # obj is the team: one set of columns for all its budgets. Without the change
        # permission the existing rows are shown read-only: the masked URL only.
        editable = self.has_change_permission(request, obj)
        return (
            "feature",
            "period",
            "limit_usd",
            "alert_threshold_percent",
            "action",
            *self.webhook_fields(request, obj, editable),
            "spent_now",
            "reserved_now",
            "percent_now",
        )

    formfield_overrides = {
        models.URLField: {"assume_scheme": "https"} if django.VERSION >= (5, 0) else {}
    }


@admin.register(Team)
class TeamAdmin(TeamScopedAdmin):
    """A team admin edits their teams (name, members, budgets); creating and deleting
    teams is site-wide: superusers only."""

    team_path = "pk"
    team_admins_add = False
    team_admins_delete = False
    list_display = ("name", "slug", "member_count", "created_at")
    search_fields = ("name", "slug")
    # (Meta.ordering doesn't apply to the annotated queryset: the autocomplete pages it.)
    ordering = ("name", "pk")
    prepopulated_fields = {"slug": ("name",)}
    inlines = (TeamMembershipInline, BudgetInline)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Team]:
        return super().get_queryset(request).annotate(_member_count=Count("memberships"))

    @admin.display(description="members", ordering="_member_count")
    def member_count(self, obj: Any) -> int:
        return obj._member_count


# -- API keys -----------------------------------------------------------------------------


@admin.register(ApiKey)
class ApiKeyAdmin(TeamScopedAdmin):
    """Keys are created here with a generated secret that is shown once; only its hash is
    stored (and never displayed). A key's team cannot change; revoke it instead.
    ``may_charge_budgets``: whether costs its ingested events give count towards the
    team's budgets (set by whoever manages the team's keys)."""

    list_display = (
        "display_prefix",
        "name",
        "team",
        "may_charge_budgets",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    list_filter = (
        ("revoked_at", admin.EmptyFieldListFilter),
        ("team", TeamListFilter),
        "may_charge_budgets",
    )
    search_fields = ("name", "prefix", "team__name", "team__slug")
    list_select_related = ("team",)
    autocomplete_fields = ("team",)
    actions = ("revoke_keys",)
    secret_fields = ("hashed_key",)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ("team", "name", "may_charge_budgets")
        return (
            "name",
            "team",
            "display_prefix",
            "may_charge_budgets",
            "created_at",
            "last_used_at",
            "revoked_at",
        )

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
        key, secret = ApiKey.objects.create_key(
            team=obj.team, name=obj.name, may_charge_budgets=obj.may_charge_budgets
        )
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
class ModelPriceAdmin(TeamScopedAdmin):
    """Price overrides apply to every team's calls: superusers only."""

    team_path = None
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
                "input price, a 1-hour cache write to the cache-write price.",
                "fields": (
                    ("input_per_mtok", "output_per_mtok"),
                    ("cache_read_per_mtok", "cache_write_per_mtok", "cache_write_1h_per_mtok"),
                ),
            },
        ),
        (
            "Long-context tier",
            {
                "description": "Over this many input tokens (cache included), the tier's "
                "prices apply to every token of the request.",
                "fields": (
                    "tier_threshold_tokens",
                    ("tier_input_per_mtok", "tier_output_per_mtok"),
                    (
                        "tier_cache_read_per_mtok",
                        "tier_cache_write_per_mtok",
                        "tier_cache_write_1h_per_mtok",
                    ),
                ),
            },
        ),
    )


@admin.register(Budget)
class BudgetAdmin(WebhookFieldsMixin, BudgetStateMixin, TeamScopedAdmin):
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
    list_filter = ("period", "action", ("team", TeamListFilter))
    search_fields = ("team__name", "team__slug", "feature")
    list_select_related = ("team",)
    autocomplete_fields = ("team",)
    form = BudgetForm
    secret_fields = ("webhook_url",)
    readonly_fields = ("webhook",)
    # Webhook URLs are https; also silences Django 5's "default scheme will change" warning.
    formfield_overrides = {
        models.URLField: {"assume_scheme": "https"} if django.VERSION >= (5, 0) else {}
    }

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        editable = (
            self.has_add_permission(request)
            if obj is None
            else self.has_change_permission(request, obj)
        )
        stored = obj is not None and bool(obj.webhook_url)
        return (
            "team",
            "feature",
            "period",
            "limit_usd",
            "alert_threshold_percent",
            "action",
            *self.webhook_fields(request, obj if stored else None, editable),
        )


class ReadOnlyAdmin(TeamScopedAdmin):
    """Rows FluxGate writes itself: listed for people, never edited by hand (a team
    admin with the Django permission may delete their teams' rows)."""

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
    list_filter = ("kind", "threshold_percent", ("budget__team", TeamListFilter))
    team_path = "budget__team"
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
    list_filter = (("team", TeamListFilter),)
    list_select_related = ("team",)
    date_hierarchy = "created_at"


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin):
    """Events the database refused, quarantined by the recorder with the reason (see
    ``recording.quarantine``): listed and filtered by team like events, never edited."""

    list_display = ("quarantined_at", "tracking_id", "team", "provider", "model", "feature")
    list_filter = (("team", TeamListFilter), "provider", "source")
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
