"""``reports/breakdown/`` and ``reports/timeseries/``: thin views over the report query
layer (:mod:`fluxgate_django.reports.queries`), which the admin report page and
``manage.py fluxgate_report`` use too, so all three give the same numbers.

Reports cover the teams the requester sees (:func:`~.permissions.teams_for`); staff see
every event, those without a team included.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from ..reports import queries
from .base import FluxGateAPIView, fluxgate_schema
from .permissions import is_staff, teams_for
from .serializers import TeamFilterMixin, query_data

#: Longest report, in days (a timeseries has a value per day).
MAX_REPORT_DAYS = 366
_FILTER_MAX_VALUES = 50
_FILTER_MAX_LENGTH = 255


class ReportParamsSerializer(TeamFilterMixin, serializers.Serializer):
    """Query parameters shared by the reports. Dates are days in the site's time zone,
    both included; without them, ``range`` (default: the last 30 days)."""

    by = serializers.ChoiceField(choices=list(queries.DIMENSIONS), default="feature")
    start = serializers.DateField(required=False, help_text="First day (YYYY-MM-DD).")
    end = serializers.DateField(required=False, help_text="Last day, included (YYYY-MM-DD).")
    range = serializers.ChoiceField(
        choices=list(queries.PRESETS),
        required=False,
        help_text="A preset range, used when start and end are not given.",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        start: dt.date | None = attrs.get("start")
        end: dt.date | None = attrs.get("end")
        preset_start, preset_end = queries.preset_range(
            attrs.get("range") or queries.DEFAULT_PRESET
        )
        span = (preset_end - preset_start).days
        # One of start and end alone: a range as long as the preset's from (or to) it.
        if end is None:
            end = preset_end if start is None else _shift(start, span)
            if start is None:
                start = preset_start
        elif start is None:
            start = _shift(end, -span)
        if start > end:
            raise serializers.ValidationError({"end": ["Must not be before start."]})
        if (end - start).days + 1 > MAX_REPORT_DAYS:
            raise serializers.ValidationError(
                {"end": [f"A report covers at most {MAX_REPORT_DAYS} days."]}
            )
        attrs["start"], attrs["end"] = start, end
        return attrs


def _shift(day: dt.date, days: int) -> dt.date:
    """``day`` + ``days``, clamped to the representable dates."""
    try:
        return day + dt.timedelta(days=days)
    except OverflowError:
        return dt.date.max if days > 0 else dt.date.min


class TimeseriesParamsSerializer(ReportParamsSerializer):
    by = serializers.ChoiceField(choices=list(queries.DIMENSIONS), default="day")
    top = serializers.IntegerField(
        min_value=1, max_value=50, default=8, help_text="Series shown; the rest is 'Other'."
    )


_FILTER_PARAMETERS = [
    OpenApiParameter(
        name,
        {
            "type": "array",
            "items": {"type": "string", "maxLength": _FILTER_MAX_LENGTH},
            "maxItems": _FILTER_MAX_VALUES,
        },
        explode=True,
        description=f"Keep only these {label} (repeat the parameter for several, at most "
        f"{_FILTER_MAX_VALUES}).",
    )
    for name, label in (
        ("feature", "features"),
        ("provider", "providers"),
        ("model", "models"),
        ("user", "end-user ids"),
    )
]


class BreakdownRowSerializer(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()
    requests = serializers.IntegerField()
    errors = serializers.IntegerField()
    error_rate = serializers.FloatField(allow_null=True)
    fallbacks = serializers.IntegerField()
    fallback_rate = serializers.FloatField(allow_null=True)
    cache_hits = serializers.IntegerField()
    cache_hit_rate = serializers.FloatField(allow_null=True)
    budget_blocked = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cache_read_tokens = serializers.IntegerField()
    cache_write_tokens = serializers.IntegerField()
    reasoning_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(
        max_digits=30,
        decimal_places=10,
        coerce_to_string=True,
        allow_null=True,
        help_text="null: unpriced.",
    )
    unpriced = serializers.IntegerField()
    cost_per_request_usd = serializers.DecimalField(
        max_digits=30, decimal_places=10, coerce_to_string=True, allow_null=True
    )
    cost_saved_usd = serializers.DecimalField(
        max_digits=30, decimal_places=10, coerce_to_string=True
    )
    p50_latency_ms = serializers.FloatField(allow_null=True)
    p95_latency_ms = serializers.FloatField(allow_null=True)
    share_of_cost = serializers.FloatField(allow_null=True)


class BreakdownSerializer(serializers.Serializer):
    by = serializers.CharField()
    start = serializers.DateField()
    end = serializers.DateField()
    rows = BreakdownRowSerializer(many=True)
    total = BreakdownRowSerializer()


class SeriesSerializer(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()
    costs = serializers.ListField(
        child=serializers.DecimalField(max_digits=30, decimal_places=10, coerce_to_string=True)
    )


class TimeseriesSerializer(serializers.Serializer):
    by = serializers.CharField()
    start = serializers.DateField()
    end = serializers.DateField()
    days = serializers.ListField(child=serializers.DateField())
    series = SeriesSerializer(many=True)


class _ReportView(FluxGateAPIView):
    params_class: type[ReportParamsSerializer] = ReportParamsSerializer

    def report_arguments(self, request: Request) -> dict[str, Any]:
        """Validated ``by``, ``start``, ``end``, ``teams`` and ``filters`` (400 if invalid)."""
        params = self.params_class(data=query_data(request), context={"request": request})
        params.is_valid(raise_exception=True)
        data = dict(params.validated_data)
        filters: dict[str, list[Any]] = {}
        errors: dict[str, list[str]] = {}
        for name in ("feature", "provider", "model", "user"):
            values = request.query_params.getlist(name)
            if len(values) > _FILTER_MAX_VALUES:
                errors[name] = [f"At most {_FILTER_MAX_VALUES} values."]
            elif any(len(v) > _FILTER_MAX_LENGTH for v in values):
                errors[name] = [
                    f"Ensure this field has no more than {_FILTER_MAX_LENGTH} characters."
                ]
            elif any("\x00" in v for v in values):
                errors[name] = ["Null characters are not allowed."]
            elif values:
                filters[name] = values
        if errors:
            raise serializers.ValidationError(errors)
        if "team" in data:
            filters["team"] = [data.pop("team").pk]
        teams = None if is_staff(request) else list(teams_for(request).values_list("pk", flat=True))
        return {**data, "teams": teams, "filters": filters}


class BreakdownView(_ReportView):
    """Cost, requests, tokens, latency, error/fallback/cache rates per feature, team, model,
    provider, end user or day, with the total: the admin cost report's numbers."""

    @fluxgate_schema(
        summary="Cost breakdown",
        parameters=[ReportParamsSerializer, *_FILTER_PARAMETERS],
        responses={200: BreakdownSerializer},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        args_ = self.report_arguments(request)
        report = queries.breakdown(
            args_["by"],
            args_["start"],
            args_["end"],
            teams=args_["teams"],
            filters=args_["filters"],
        )
        return Response(report.as_dict())


class TimeseriesView(_ReportView):
    """Cost per day, split into the ``top`` costliest groups of ``by`` (and "Other")."""

    params_class = TimeseriesParamsSerializer

    @fluxgate_schema(
        summary="Daily cost",
        parameters=[TimeseriesParamsSerializer, *_FILTER_PARAMETERS],
        responses={200: TimeseriesSerializer},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        args_ = self.report_arguments(request)
        series = queries.timeseries(
            args_["by"],
            args_["start"],
            args_["end"],
            teams=args_["teams"],
            filters=args_["filters"],
            top=args_["top"],
        )
        return Response(
            {
                "start": args_["start"].isoformat(),
                "end": args_["end"].isoformat(),
                **series.as_dict(),
            }
        )
