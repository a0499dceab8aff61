"""FluxGate's REST API (Django REST framework), mounted at ``fluxgate/api/``.

``fluxgate_django.urls`` mounts :mod:`fluxgate_django.api.urls`; a site includes it with
``path("fluxgate/", include("fluxgate_django.urls"))`` and adds ``"rest_framework"``,
``"drf_spectacular"`` and ``"drf_spectacular_sidecar"`` to ``INSTALLED_APPS``.

Modules: :mod:`.authentication` (API keys), :mod:`.permissions` (who sees which team),
:mod:`.ingest` (validating and recording posted events), :mod:`.serializers`,
:mod:`.views` (events, teams, budgets, API keys), :mod:`.reports` (report endpoints),
:mod:`.schema` (OpenAPI schema and docs page), :mod:`.throttling`, :mod:`.base` (what
every FluxGate API view shares), :mod:`.service_urls` and :mod:`.service_views` (the
LLM-service endpoints).
"""
