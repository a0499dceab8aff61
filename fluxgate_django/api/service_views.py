"""The LLM service over HTTP: ``complete/``, ``metrics/``, ``config/strategy/``, ``health/``.

``POST complete/`` runs :class:`~fluxgate_django.LLMService` for the requester's team
(an API key's team, or a team the signed-in user belongs to), so budgets apply exactly
as for in-process calls. A blocked call is 402 (``budget_exceeded``); no provider able
to answer is 503 with the attempts; a request the provider rejected is 400.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response

from ..conf import fluxgate_settings
from ..exceptions import BudgetExceeded, CallRefused
from ..model_refs import UnknownModel, resolve_model
from ..service import STRATEGIES, AllProvidersFailed, LLMService, classify, set_strategy
from ..service.metrics import provider_metrics
from .base import BoundedJSONParser, FluxGateAPIView, fluxgate_schema
from .permissions import api_key_of, is_staff, teams_for

#: The longest window of ``GET metrics/`` (a week), in minutes.
MAX_METRICS_MINUTES = 7 * 24 * 60


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "user", "assistant"])
    content = serializers.CharField(max_length=200_000, allow_blank=True, trim_whitespace=False)


class CompleteSerializer(serializers.Serializer):
    messages = MessageSerializer(many=True, allow_empty=False, max_length=500)
    route = serializers.CharField(required=False, max_length=100)
    model = serializers.CharField(required=False, max_length=200)
    priority = serializers.ChoiceField(choices=["low", "medium", "high"], required=False)
    max_tokens = serializers.IntegerField(required=False, min_value=1, max_value=1_000_000)
    temperature = serializers.FloatField(required=False, min_value=0, max_value=2)
    cache_ttl = serializers.IntegerField(required=False, min_value=0, max_value=30 * 86400)
    timeout = serializers.FloatField(required=False, min_value=0.1, max_value=600)
    system = serializers.CharField(required=False, max_length=200_000, allow_blank=True)
    documents = serializers.ListField(
        child=serializers.CharField(max_length=1_000_000), required=False, max_length=20
    )
    team = serializers.SlugField(required=False, max_length=100)
    feature = serializers.CharField(required=False, max_length=100)
    step = serializers.CharField(required=False, max_length=200)
    user = serializers.CharField(required=False, max_length=255, help_text="End-user id.")
    session_id = serializers.CharField(required=False, max_length=255)
    conversation_id = serializers.CharField(required=False, max_length=255)
    metadata = serializers.DictField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        route, model = attrs.get("route"), attrs.get("model")
        if not route and not model:
            raise serializers.ValidationError({"route": "Give a route or a model."})
        if route and route not in fluxgate_settings.ROUTES:
            raise serializers.ValidationError(
                {"route": f"Unknown route; known: {', '.join(sorted(fluxgate_settings.ROUTES))}"}
            )
        if model:
            try:
                resolve_model(model)
            except UnknownModel as exc:
                raise serializers.ValidationError({"model": str(exc)}) from exc
        if not any(m["role"] == "user" for m in attrs["messages"]):
            raise serializers.ValidationError({"messages": "Need at least one user message."})
        return attrs


class StrategySerializer(serializers.Serializer):
    route = serializers.CharField(max_length=100)
    strategy = serializers.ChoiceField(choices=list(STRATEGIES))

    def validate_route(self, value: str) -> str:
        if value not in fluxgate_settings.ROUTES:
            raise serializers.ValidationError("Unknown route.")
        return value


class IsStaffUser(BasePermission):
    message = "Only staff can change routing strategies."

    def has_permission(self, request: Request, view: Any) -> bool:
        return is_staff(request)


def _team_for(request: Request, slug: str | None) -> Any:
    key = api_key_of(request)
    if key is not None:
        if slug and slug != key.team.slug:
            raise PermissionDenied("An API key calls for its own team only.")
        return key.team
    teams = teams_for(request)
    if slug:
        team = teams.filter(slug=slug).first()
        if team is None:
            raise PermissionDenied("You are not a member of that team.")
        return team
    return teams.order_by("name").first() if not is_staff(request) else None


class CompleteView(FluxGateAPIView):
    """Run the LLM service for your team: ``messages`` and a ``route`` or ``model``."""

    # JSON only: the messages are a list of objects, which a form can't carry.
    parser_classes = [BoundedJSONParser]

    @fluxgate_schema(
        request=CompleteSerializer,
        responses={
            200: dict,
            400: OpenApiResponse(
                description="Invalid request (field messages), or the provider rejected it "
                "(`code`: `provider_rejected_request`)."
            ),
            402: OpenApiResponse(
                description="A budget blocks the call (`code`: `budget_exceeded`)."
            ),
            503: OpenApiResponse(
                description="No provider could answer (`code`: `providers_unavailable`, with the "
                "`attempts`), or the budget store is unreachable (`budget_store_unavailable`)."
            ),
        },
        operation_id="complete",
    )
    def post(self, request: Request) -> Response:
        data = CompleteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        params = dict(data.validated_data)
        team = _team_for(request, params.pop("team", None))
        end_user = params.pop("user", None)
        user_ctx: Any = {"id": end_user} if end_user else None
        if user_ctx is None and api_key_of(request) is None:
            user_ctx = {"id": str(request.user.pk), "pk": request.user.pk}
        messages = params.pop("messages")
        try:
            answer = LLMService().complete(messages, team=team, user=user_ctx, **params)
        except BudgetExceeded as exc:
            return Response(
                {"detail": str(exc), "code": "budget_exceeded"},
                status=status.HTTP_402_PAYMENT_REQUIRED,
            )
        except CallRefused as exc:  # the budget store is unreachable (budgets fail closed)
            return Response(
                {"detail": str(exc), "code": "budget_store_unavailable"},
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        except AllProvidersFailed as exc:
            return Response(
                {
                    "detail": str(exc),
                    "code": "providers_unavailable",
                    "attempts": [
                        {"provider": a.provider, "model": a.model, "outcome": a.outcome}
                        for a in exc.attempts
                    ],
                },
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        except Exception as exc:
            if classify(exc) == "fatal" and getattr(exc, "status_code", None):
                return Response(
                    {"detail": str(exc)[:500], "code": "provider_rejected_request"},
                    status=status.HTTP_400_BAD_REQUEST,
                )
            raise
        return Response(answer.to_json())


class MetricsView(FluxGateAPIView):
    """Per provider and model over the last ``minutes``: requests, errors, latency, cost
    and savings, for your teams (staff: all)."""

    @fluxgate_schema(
        parameters=[
            OpenApiParameter(
                "minutes",
                {"type": "integer", "minimum": 1, "maximum": MAX_METRICS_MINUTES},
                description="The window: the last N minutes (default 60).",
            )
        ],
        responses={200: dict},
        operation_id="metrics",
    )
    def get(self, request: Request) -> Response:
        try:
            minutes = int(request.query_params.get("minutes", 60))
        except ValueError:
            minutes = 0
        if not 1 <= minutes <= MAX_METRICS_MINUTES:
            return Response(
                {"minutes": [f"A whole number of minutes from 1 to {MAX_METRICS_MINUTES}."]},
                status=status.HTTP_400_BAD_REQUEST,
            )
        teams = None if is_staff(request) else list(teams_for(request).values_list("id", flat=True))
        rows = provider_metrics(minutes, teams=teams)
        for row in rows:
            row["cost_usd"] = str(row["cost_usd"])
            row["saved_usd"] = str(row["saved_usd"])
        return Response({"window_minutes": minutes, "providers": rows})


class StrategyView(FluxGateAPIView):
    """The routing strategy of each configured route (staff): read, or set one's."""

    permission_classes = [IsStaffUser]

    @fluxgate_schema(responses={200: dict}, operation_id="strategy_list")
    def get(self, request: Request) -> Response:
        from ..service import strategy_for

        return Response({route: strategy_for(route) for route in fluxgate_settings.ROUTES})

    @fluxgate_schema(request=StrategySerializer, responses={200: dict}, operation_id="strategy")
    def put(self, request: Request) -> Response:
        data = StrategySerializer(data=request.data)
        data.is_valid(raise_exception=True)
        set_strategy(data.validated_data["route"], data.validated_data["strategy"])
        return Response(data.validated_data)


class HealthView(FluxGateAPIView):
    """The circuit breaker of each model the routes name: ``degraded`` if one is open."""

    @fluxgate_schema(responses={200: dict}, operation_id="health")
    def get(self, request: Request) -> Response:
        circuits = LLMService().health()
        healthy = all(c["state"] != "open" for c in circuits.values())
        return Response({"status": "ok" if healthy else "degraded", "circuits": circuits})
