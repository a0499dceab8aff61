"""URLs of FluxGate's REST API, mounted at ``fluxgate/api/`` by ``fluxgate_django.urls``
(namespace ``fluxgate:api``)."""

from __future__ import annotations

from django.urls import include, path
from rest_framework.routers import DefaultRouter

from . import otlp, reports, schema, views

app_name = "api"

router = DefaultRouter()
router.register("events", views.EventViewSet, basename="event")
router.register("teams", views.TeamViewSet, basename="team")
router.register("budgets", views.BudgetViewSet, basename="budget")
router.register("api-keys", views.ApiKeyViewSet, basename="api-key")

urlpatterns = [
    path("reports/breakdown/", reports.BreakdownView.as_view(), name="report-breakdown"),
    path("reports/timeseries/", reports.TimeseriesView.as_view(), name="report-timeseries"),
    path("schema/", schema.SchemaView.as_view(), name="schema"),
    path("schema/docs/", schema.DocsView.as_view(), name="docs"),
    # OpenTelemetry GenAI spans in (OTLP/HTTP's path for traces).
    path("otlp/v1/traces", otlp.OTLPTracesView.as_view(), name="otlp-traces"),
    # The LLM-service endpoints: complete/, metrics/, config/strategy/, health/.
    path("", include("fluxgate_django.api.service_urls")),
    *router.urls,
]
