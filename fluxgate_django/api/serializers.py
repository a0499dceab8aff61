"""Serializers of the API's resources (events out, teams, budgets, API keys) and of the
query parameters of lists and reports. Event ingest is in :mod:`.ingest`."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import PermissionDenied

from ..models import COST_FIELD, ApiKey, Budget, Event, SpendCounter, Team
from ..periods import window_start
from ..records import Source, Status
from .permissions import teams_for

# -- query parameters -------------------------------------------------------------------


def query_data(request: Any) -> dict[str, str]:
    """The query parameters to validate, each its last value, as a plain dict: so that an
    empty one (``?team=``) is validated as given (DRF skips an empty optional field of a
    ``QueryDict``, and ``?team=`` would then silently mean every team)."""
    return request.query_params.dict()


_EARLIEST = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
_LATEST = dt.datetime.max.replace(tzinfo=dt.timezone.utc)


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "format": "date"},
            {"type": "string", "format": "date-time"},
        ]
    }
)
class DateOrDateTimeField(serializers.Field):
    """An ISO date (``2025-01-31``) or date-time (``2025-01-31T12:00:00Z``) → an aware datetime.

    A date means the start of that day in the site's time zone, or with ``end_of_day``
    the start of the next day (so ``end=2025-01-31`` includes the 31st). A moment beyond
    what the database's date-times hold (``0001-01-01T00:00:00+01:00``; the day after
    9999-12-31) is clamped to the first or last one: it filters the same events.
    """

    default_error_messages = {
        "invalid": "Expected an ISO date (YYYY-MM-DD) or date-time (YYYY-MM-DDTHH:MM:SS±HH:MM)."
    }

    def __init__(self, *, end_of_day: bool = False, **kwargs: Any) -> None:
        self.end_of_day = end_of_day
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> dt.datetime:
        invalid = serializers.ValidationError(self.error_messages["invalid"], code="invalid")
        if not isinstance(data, str) or len(data) > 64:
            raise invalid
        try:
            # A date first: parse_datetime() takes "2025-01-31" as that day's midnight.
            day = parse_date(data)
            moment = None if day is not None else parse_datetime(data)
        except ValueError:
            raise invalid from None
        tz = timezone.get_current_timezone()
        if moment is None:
            if day is None:
                raise invalid
            if self.end_of_day and day == dt.date.max:
                return _LATEST
            if self.end_of_day:
                day += dt.timedelta(days=1)
            moment = dt.datetime.combine(day, dt.time.min)
        if timezone.is_naive(moment):
            try:
                moment = timezone.make_aware(moment, tz)
            except OverflowError:  # (zoneinfo, at the ends of the calendar)
                return _EARLIEST if moment.year == 1 else _LATEST
        try:
            return moment.astimezone(dt.timezone.utc)
        except OverflowError:
            return _EARLIEST if moment.year == 1 else _LATEST

    def to_representation(self, value: Any) -> str:
        return value.isoformat()


class RangeFilterSerializer(serializers.Serializer):
    """``start`` (inclusive) and ``end`` (inclusive day, or exclusive instant)."""

    start = DateOrDateTimeField(required=False, help_text="ISO date or date-time (inclusive).")
    end = DateOrDateTimeField(
        required=False,
        end_of_day=True,
        help_text="ISO date (that whole day included) or date-time (exclusive).",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        start, end = attrs.get("start"), attrs.get("end")
        if start is not None and end is not None and start >= end:
            raise serializers.ValidationError({"end": ["Must be after start."]})
        return attrs


class TeamFilterMixin(serializers.Serializer):
    """``team=<slug>``: one of the teams the requester sees (any other is invalid alike)."""

    team = serializers.CharField(
        required=False, max_length=100, help_text="Slug of one of your teams."
    )

    def validate_team(self, value: str) -> Team:
        team = teams_for(self.context["request"]).filter(slug=value).first()
        if team is None:
            raise serializers.ValidationError("Unknown team.")
        return team


class EventFilterSerializer(TeamFilterMixin, RangeFilterSerializer):
    """Query parameters of ``GET events/``."""

    feature = serializers.CharField(required=False, max_length=100)
    provider = serializers.CharField(required=False, max_length=50)
    model = serializers.CharField(required=False, max_length=200)
    status = serializers.ChoiceField(choices=[s.value for s in Status], required=False)
    source = serializers.ChoiceField(choices=[s.value for s in Source], required=False)
    session_id = serializers.CharField(required=False, max_length=255)
    conversation_id = serializers.CharField(required=False, max_length=255)


# -- events -----------------------------------------------------------------------------


class EventSerializer(serializers.ModelSerializer):
    """A stored event (prompts and completions are never returned by the API)."""

    team = serializers.CharField(source="team.slug", read_only=True, allow_null=True)
    user = serializers.IntegerField(source="user_id", read_only=True, allow_null=True)
    cost_usd = serializers.DecimalField(
        **COST_FIELD, coerce_to_string=True, read_only=True, allow_null=True
    )
    cost_saved_usd = serializers.DecimalField(
        **COST_FIELD, coerce_to_string=True, read_only=True, allow_null=True
    )

    class Meta:
        model = Event
        fields = [
            "tracking_id",
            "created_at",
            "team",
            "user",
            "end_user_id",
            "end_user_email",
            "session_id",
            "conversation_id",
            "request_id",
            "feature",
            "step",
            "provider",
            "model",
            "requested_model",
            "operation",
            "status",
            "finish_reason",
            "error_type",
            "error_message",
            "input_tokens",
            "output_tokens",
            "reasoning_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "cost_usd",
            "cost_source",
            "cost_saved_usd",
            "latency_ms",
            "time_to_first_token_ms",
            "stream_duration_ms",
            "streamed",
            "cache_hit",
            "fallback_attempt",
            "service_tier",
            "source",
            "run_id",
            "parent_run_id",
            "metadata",
            "tags",
        ]
        read_only_fields = fields


# -- teams ------------------------------------------------------------------------------


class TeamSerializer(serializers.ModelSerializer):
    class Meta:
        model = Team
        fields = ["id", "name", "slug", "created_at"]
        read_only_fields = ["id", "created_at"]


class ManagedTeamField(serializers.SlugRelatedField):
    """A team slug, among the teams the requester sees; choosing a team they can't manage
    is a 403 (an unseen team is "does not exist", revealing nothing)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(slug_field="slug", queryset=Team.objects.none(), **kwargs)

    def get_queryset(self) -> Any:
        request = self.context.get("request")
        return teams_for(request) if request is not None else Team.objects.none()

    def to_internal_value(self, data: Any) -> Team:
        if isinstance(data, str) and "\x00" in data:
            # PostgreSQL can't even compare a string holding NUL: a 400, not a 500.
            raise serializers.ValidationError("Null characters are not allowed.")
        team = super().to_internal_value(data)
        if not teams_for(self.context["request"], manage=True).filter(pk=team.pk).exists():
            raise PermissionDenied(f"Only admins of team {team.slug!r} and staff can do this.")
        return team


# -- budgets ----------------------------------------------------------------------------

#: How the read-only money fields look in the schema: decimal strings, like every amount.
_DECIMAL_STRING = serializers.DecimalField(max_digits=30, decimal_places=10, coerce_to_string=True)


class WebhookUrlField(serializers.URLField):
    """A budget's webhook URL (answered as :data:`HIDDEN` to who can't manage its team:
    :meth:`BudgetSerializer.to_representation`; the schema says so)."""


#: A budget's webhook URL, as answered to who can't manage the budget's team.
HIDDEN = "(hidden)"


class BudgetSerializer(serializers.ModelSerializer):
    """A budget and the state of its current window (read-only)."""

    team = ManagedTeamField(help_text="Slug of a team you are an admin of.")
    webhook_url = WebhookUrlField(max_length=200, required=False, allow_blank=True)
    window_start = serializers.SerializerMethodField()
    spent_usd = serializers.SerializerMethodField()
    reserved_usd = serializers.SerializerMethodField()
    percent_used = serializers.SerializerMethodField()

    class Meta:
        model = Budget
        fields = [
            "id",
            "team",
            "feature",
            "period",
            "limit_usd",
            "alert_threshold_percent",
            "action",
            "webhook_url",
            "created_at",
            "window_start",
            "spent_usd",
            "reserved_usd",
            "percent_used",
        ]
        read_only_fields = ["id", "created_at"]
        extra_kwargs = {"limit_usd": {"coerce_to_string": True}}

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """The model's own ``clean()`` too, so the API refuses what the admin refuses."""
        instance = Budget(**{**self._current_values(), **attrs})
        # (The stored webhook, so that an unchanged one is not resolved again: clean().)
        instance._saved_webhook_url = self.instance.webhook_url if self.instance else None
        try:
            instance.clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(serializers.as_serializer_error(exc)) from exc
        return attrs

    def _current_values(self) -> dict[str, Any]:
        if self.instance is None:
            return {}
        return {f: getattr(self.instance, f) for f in ("team", "feature", "period", "limit_usd")}

    def to_representation(self, instance: Budget) -> dict[str, Any]:
        data = super().to_representation(instance)
        # A webhook URL often carries a token (Slack, Teams): only its managers see it.
        if data.get("webhook_url") and instance.team_id not in self._managed_team_ids():
            data["webhook_url"] = HIDDEN
        return data

    def _managed_team_ids(self) -> set[int]:
        cache = self.context.setdefault("_managed_team_ids", None)
        if cache is None:
            request = self.context.get("request")
            cache = set()
            if request is not None:
                cache = set(teams_for(request, manage=True).values_list("pk", flat=True))
            self.context["_managed_team_ids"] = cache
        return cache

    def _counter(self, obj: Budget) -> SpendCounter | None:
        start = window_start(obj.period)
        counters = getattr(obj, "window_counters", None)
        if counters is None:
            return obj.current_counter()
        return next((c for c in counters if c.window_start == start), None)

    @extend_schema_field(OpenApiTypes.DATE)
    def get_window_start(self, obj: Budget) -> dt.date:
        return window_start(obj.period)

    @extend_schema_field(_DECIMAL_STRING)
    def get_spent_usd(self, obj: Budget) -> str:
        counter = self._counter(obj)
        return _money(counter.spent if counter else Decimal(0))

    @extend_schema_field(_DECIMAL_STRING)
    def get_reserved_usd(self, obj: Budget) -> str:
        counter = self._counter(obj)
        return _money(counter.reserved if counter else Decimal(0))

    @extend_schema_field(_DECIMAL_STRING)
    def get_percent_used(self, obj: Budget) -> str:
        counter = self._counter(obj)
        return str(counter.percent_used if counter else Decimal("0.0"))


def _money(value: Decimal) -> str:
    """A plain decimal string (never exponent notation)."""
    return format(value, "f")


# -- API keys ---------------------------------------------------------------------------


class ApiKeySerializer(serializers.ModelSerializer):
    """An API key, without its secret (only a hash is stored)."""

    team = ManagedTeamField(help_text="Slug of a team you are an admin of.")
    prefix = serializers.SerializerMethodField(help_text="How the key starts: fg_live_xxxx…")
    is_active = serializers.BooleanField(read_only=True)

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "team",
            "name",
            "prefix",
            "created_at",
            "last_used_at",
            "revoked_at",
            "is_active",
            "may_charge_budgets",
        ]
        read_only_fields = ["id", "created_at", "last_used_at", "revoked_at"]

    def get_prefix(self, obj: ApiKey) -> str:
        return f"{obj.prefix}…"


class ApiKeyCreatedSerializer(ApiKeySerializer):
    """The answer to creating a key: the only time its secret is shown."""

    secret = serializers.SerializerMethodField(
        help_text="The key itself. Shown only now: it is not stored and can't be shown again."
    )

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "secret"]

    def create(self, validated_data: dict[str, Any]) -> ApiKey:
        key, secret = ApiKey.objects.create_key(
            team=validated_data["team"],
            name=validated_data["name"],
            may_charge_budgets=validated_data.get("may_charge_budgets", False),
        )
        key._created_secret = secret  # type: ignore[attr-defined]
        return key

    def get_secret(self, obj: ApiKey) -> str:
        return getattr(obj, "_created_secret", "")
