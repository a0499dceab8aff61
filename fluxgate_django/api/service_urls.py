"""URLs of the LLM-service endpoints, under ``fluxgate/api/``: ``complete/``, ``metrics/``,
``config/strategy/`` and ``health/`` (see DESIGN.md, "Multi-provider service").

Their views belong in their own module(s) of this package (e.g. ``service_views.py``),
built on :class:`fluxgate_django.api.base.FluxGateAPIView` so they share the API's
authentication (API key or session), renderers and OpenAPI schema. Name each URL; they are
reversed as ``fluxgate:api:<name>``.
"""

from __future__ import annotations

from typing import Any

urlpatterns: list[Any] = []
