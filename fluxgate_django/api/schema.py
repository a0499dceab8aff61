"""The OpenAPI schema of FluxGate's API (drf-spectacular) and its Swagger UI docs page.

Both are public (the schema describes endpoints, never data). The schema covers
FluxGate's own views only, wherever the site mounts them and whatever else the site
serves with DRF, and is built with FluxGate's settings (:data:`SCHEMA_SETTINGS`), not the
site's ``SPECTACULAR_SETTINGS``. The docs page serves Swagger UI from
``drf-spectacular-sidecar`` (no CDN, works offline) when ``drf_spectacular_sidecar`` is
in ``INSTALLED_APPS``, else from drf-spectacular's default CDN.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.http import HttpResponse, HttpResponseNotFound
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.generators import EndpointEnumerator, SchemaGenerator
from drf_spectacular.settings import patched_settings
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.reverse import reverse

#: drf-spectacular settings used for FluxGate's schema and docs page.
SCHEMA_SETTINGS: dict[str, Any] = {
    "TITLE": "FluxGate API",
    "DESCRIPTION": (
        "LLM cost tracking: record events, read events and cost reports, manage budgets "
        "and API keys. Authenticate with `Authorization: Bearer <api key>` (a team's key "
        "sees that team only) or a signed-in session (with the CSRF token for writes)."
    ),
    "VERSION": "1",
    # Read-only fields are not required in request bodies.
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/.*/api/",
    "ENUM_NAME_OVERRIDES": {
        "EventStatusEnum": "fluxgate_django.api.ingest.STATUSES",
    },
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "persistAuthorization": True},
}


def _docs_settings() -> dict[str, Any]:
    if apps.is_installed("drf_spectacular_sidecar"):
        return {
            **SCHEMA_SETTINGS,
            "SWAGGER_UI_DIST": "SIDECAR",
            "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
        }
    return SCHEMA_SETTINGS


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Describes :class:`~fluxgate_django.api.authentication.ApiKeyAuthentication`."""

    target_class = "fluxgate_django.api.authentication.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "fg_live_…",
            "description": "A team's FluxGate API key.",
        }


class FluxGateEndpointEnumerator(EndpointEnumerator):
    """Only FluxGate's own API views, wherever they are mounted."""

    def should_include_endpoint(self, path: str, callback: Any) -> bool:
        cls = getattr(callback, "cls", None)
        if cls is None or not cls.__module__.startswith("fluxgate_django."):
            return False
        return super().should_include_endpoint(path, callback)


class FluxGateSchemaGenerator(SchemaGenerator):
    endpoint_inspector_cls = FluxGateEndpointEnumerator


class SchemaView(SpectacularAPIView):
    """The OpenAPI 3 schema: YAML by default, JSON with ``?format=json``."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    generator_class = FluxGateSchemaGenerator
    custom_settings = SCHEMA_SETTINGS
    serve_public = True
    urlconf = None
    versioning_class = None
    schema = None  # not part of the schema it serves (nor of a site-wide one)


class DocsView(SpectacularSwaggerView):
    """Swagger UI for the schema (its "Authorize" button takes an API key)."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    title = SCHEMA_SETTINGS["TITLE"]
    versioning_class = None
    schema = None

    def get(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponse:
        if not apps.is_installed("drf_spectacular"):
            # Its templates are needed: say so rather than fail with a 500.
            return HttpResponseNotFound(
                "The API docs page needs 'drf_spectacular' in INSTALLED_APPS.",
                content_type="text/plain",
            )
        with patched_settings(_docs_settings()):
            return super().get(request, *args, **kwargs)

    def _get_schema_url(self, request: Request) -> str:
        # The schema's URL name in the namespace this page was reached under.
        namespace = request.resolver_match.namespace if request.resolver_match else ""
        name = f"{namespace}:schema" if namespace else "schema"
        return reverse(name)
