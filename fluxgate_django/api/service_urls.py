"""URLs of the LLM-service endpoints, under ``fluxgate/api/``: ``complete/``, ``metrics/``,
``config/strategy/`` and ``health/`` (see DESIGN.md, "Multi-provider service")."""

from __future__ import annotations

from django.urls import path

from . import service_views

urlpatterns = [
    path("complete/", service_views.CompleteView.as_view(), name="complete"),
    path("metrics/", service_views.MetricsView.as_view(), name="metrics"),
    path("config/strategy/", service_views.StrategyView.as_view(), name="strategy"),
    path("health/", service_views.HealthView.as_view(), name="health"),
]
