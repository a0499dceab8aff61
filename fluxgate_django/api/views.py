"""Events (ingest and list), teams, budgets and API keys.

Every queryset is narrowed to the teams the requester may see
(:func:`~fluxgate_django.api.permissions.teams_for`), so another team's objects are 404s.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, QuerySet
from drf_spectacular.utils import (
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema_view,
)
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer

from ..models import ApiKey, Budget, Event, SpendCounter, Team
from ..periods import window_start
from .base import (
    BoundedJSONParser,
    EventCursorPagination,
    FluxGateViewSetMixin,
    fluxgate_schema,
)
from .ingest import (
    EventBatchSerializer,
    EventIngestSerializer,
    IngestResultSerializer,
    accept_chunked_body,
    ingest,
    parse_ingest_body,
)
from .permissions import (
    CanManageTeamObjects,
    IsApiKey,
    IsSignedInUser,
    IsStaffOrReadOnly,
    api_key_of,
    is_staff,
    teams_for,
)
from .serializers import (
    ApiKeyCreatedSerializer,
    ApiKeySerializer,
    BudgetSerializer,
    EventFilterSerializer,
    EventSerializer,
    TeamSerializer,
    query_data,
)
from .throttling import IngestRateThrottle


def visible_events(request: Request) -> QuerySet[Event]:
    """Events of the teams the requester sees (staff: all, team-less ones included)."""
    events = Event.objects.select_related("team")
    if is_staff(request):
        return events
    return events.filter(team__in=teams_for(request))


@extend_schema_view(
    list=fluxgate_schema(
        summary="List events, newest first",
        parameters=[EventFilterSerializer],
    ),
    retrieve=fluxgate_schema(summary="One event by tracking_id"),
)
class EventViewSet(
    FluxGateViewSetMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """LLM call events: ``GET`` for your teams' events, ``POST`` to record events with a
    team API key (one event, or ``{"events": [...]}`` of up to 1000, all-or-nothing).

    Ingest is for API keys only (a signed-in session is refused): a key's
    ``may_charge_budgets`` decides whether the costs its events give count towards the
    team's budgets. (Were sessions let in, a team admin — who may set that flag on a key
    anyway — would charge them.)"""

    serializer_class = EventSerializer
    pagination_class = EventCursorPagination
    lookup_field = "tracking_id"

    def get_permissions(self) -> list[Any]:
        if self.action == "create":
            return [IsApiKey()]
        return [IsAuthenticated()]

    def get_throttles(self) -> list[Any]:
        if self.action == "create":
            return [IngestRateThrottle()]
        return super().get_throttles()

    def get_parsers(self) -> list[Any]:
        return [BoundedJSONParser()]

    def initialize_request(self, request: Any, *args: Any, **kwargs: Any) -> Request:
        if request.method == "POST":
            accept_chunked_body(request)  # (DRF reads no body without Content-Length)
        return super().initialize_request(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[Event]:
        events = visible_events(self.request)
        if self.action != "list":
            return events
        params = EventFilterSerializer(
            data=query_data(self.request), context=self.get_serializer_context()
        )
        params.is_valid(raise_exception=True)
        filters = dict(params.validated_data)
        if "start" in filters:
            events = events.filter(created_at__gte=filters.pop("start"))
        if "end" in filters:
            events = events.filter(created_at__lt=filters.pop("end"))
        return events.filter(**filters)

    @fluxgate_schema(
        summary="Record events (API key)",
        request=PolymorphicProxySerializer(
            component_name="EventIngestBody",
            serializers=[EventIngestSerializer, EventBatchSerializer],
            resource_type_field_name=None,
        ),
        responses={
            202: IngestResultSerializer,
            400: OpenApiResponse(description="Invalid event(s); nothing was stored."),
            413: OpenApiResponse(description="Body too large."),
            429: OpenApiResponse(description="Too many requests for this key."),
        },
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        key = api_key_of(request)
        assert key is not None  # IsApiKey
        events = parse_ingest_body(request.data, key.team)
        # A cost the client gives counts towards the team's budgets only if the key may
        # say so (a made-up cost must not exhaust them); costs priced here always count.
        result = ingest(events, key.team, charge_client_costs=key.may_charge_budgets)
        return Response(IngestResultSerializer(result).data, status=status.HTTP_202_ACCEPTED)


@extend_schema_view(
    list=fluxgate_schema(summary="Your teams"),
    retrieve=fluxgate_schema(summary="One of your teams"),
    create=fluxgate_schema(summary="Create a team (staff)"),
)
class TeamViewSet(
    FluxGateViewSetMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Teams you belong to (an API key: its team; staff: all). Staff create teams."""

    serializer_class = TeamSerializer
    permission_classes = [IsAuthenticated, IsStaffOrReadOnly]

    def get_queryset(self) -> QuerySet[Team]:
        return teams_for(self.request).order_by("name", "pk")


@extend_schema_view(
    list=fluxgate_schema(summary="Budgets of your teams"),
    retrieve=fluxgate_schema(summary="One budget"),
    create=fluxgate_schema(summary="Create a budget (team admins, staff)"),
    update=fluxgate_schema(summary="Replace a budget (team admins, staff)"),
    partial_update=fluxgate_schema(summary="Change a budget (team admins, staff)"),
    destroy=fluxgate_schema(summary="Delete a budget (team admins, staff)"),
)
class BudgetViewSet(FluxGateViewSetMixin, viewsets.ModelViewSet):
    """Budgets: read by anyone who sees the team; created, changed and deleted by the
    team's admins and staff (not by API keys). Each shows its current window's spend."""

    serializer_class = BudgetSerializer
    permission_classes = [IsAuthenticated, CanManageTeamObjects]

    def get_queryset(self) -> QuerySet[Budget]:
        windows = {window_start(period) for period in Budget.Period.values}
        counters = SpendCounter.objects.filter(window_start__in=windows)
        return (
            Budget.objects.filter(team__in=teams_for(self.request))
            .select_related("team")
            .prefetch_related(Prefetch("counters", queryset=counters, to_attr="window_counters"))
            .order_by("team__name", "feature", "period", "pk")
        )


@extend_schema_view(
    list=fluxgate_schema(summary="API keys of the teams you administer (no secrets)"),
    retrieve=fluxgate_schema(summary="One API key (no secret)"),
    create=fluxgate_schema(
        summary="Create an API key: its secret is in this response only",
        request=ApiKeySerializer,
        responses={201: ApiKeyCreatedSerializer},
    ),
)
class ApiKeyViewSet(
    FluxGateViewSetMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """API keys, managed by the admins of their team and by staff, signed in (an API key
    can't list or create keys). A new key's secret is returned once, by the create call;
    only a hash is stored. Revoke with ``POST api-keys/{id}/revoke/``."""

    serializer_class = ApiKeySerializer
    permission_classes = [IsSignedInUser]
    parser_classes = [BoundedJSONParser, FormParser, MultiPartParser]

    def get_queryset(self) -> QuerySet[ApiKey]:
        return (
            ApiKey.objects.filter(team__in=teams_for(self.request, manage=True))
            .select_related("team")
            .order_by("-created_at", "-pk")
        )

    def get_serializer_class(self) -> type[Serializer]:
        return ApiKeyCreatedSerializer if self.action == "create" else ApiKeySerializer

    @fluxgate_schema(summary="Revoke an API key", request=None, responses={200: ApiKeySerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: Any = None) -> Response:
        key = self.get_object()
        if key.is_active:
            key.revoke()
        return Response(ApiKeySerializer(key, context=self.get_serializer_context()).data)
