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
from drf_spectacular.extensions import (
    OpenApiAuthenticationExtension,
    OpenApiSerializerFieldExtension,
)
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
        "sees that team only) or a signed-in session (with the CSRF token for writes). "
        "Invalid input is a 400 with the messages of each invalid field, and nothing is "
        "done; text never holds NUL characters (refused as invalid)."
    ),
    "VERSION": "1",
    # Read-only fields are not required in request bodies.
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/.*/api/",
    "ENUM_NAME_OVERRIDES": {
        "EventStatusEnum": "fluxgate_django.api.ingest.STATUSES",
    },
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "persistAuthorization": True},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "fluxgate_django.api.schema.document_error_responses",
    ],
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


class MetadataFieldSchema(OpenApiSerializerFieldExtension):
    """An event's ``metadata`` is a JSON object (not any JSON value, nor null)."""

    target_class = "fluxgate_django.api.ingest.MetadataField"

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": {}}


class WebhookUrlFieldSchema(OpenApiSerializerFieldExtension):
    """A budget's webhook URL: in answers, ``(hidden)`` to who can't manage its team."""

    target_class = "fluxgate_django.api.serializers.WebhookUrlField"

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        schema = auto_schema._map_serializer_field(self.target, direction, bypass_extensions=True)
        if direction != "response":
            return schema
        # (anyOf: a validator that does not check formats takes each for a URL too)
        return {
            "anyOf": [
                {"type": "string", "format": "uri"},
                {"type": "string", "maxLength": 0},
                {"type": "string", "enum": ["(hidden)"]},
            ],
            "description": "Empty: none. `(hidden)` unless you manage the budget's team "
            "(a webhook URL often carries a token).",
        }


# -- the error responses every operation can give ------------------------------------------

_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

#: Components of the error bodies (DRF's).
ERROR_COMPONENTS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "description": "A refused request: why, in `detail`.",
        "properties": {"detail": {"type": "string"}},
        "required": ["detail"],
    },
    "ValidationError": {
        "type": "object",
        "description": "Invalid input, nothing done: the messages of each invalid field, "
        "by field name (a list of strings, or an object for a nested field or a batch's "
        "events by index); `non_field_errors` for the request as a whole.",
        "additionalProperties": {},
    },
}

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 0},
    }
}


def _error(description: str, component: str = "Error", **extra: Any) -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{component}"}}}
    return {"description": description, "content": content, **extra}


def _error_responses(operation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What ``operation`` answers besides its documented successes (see the module)."""
    parameters = operation.get("parameters", [])
    where = {p.get("in") for p in parameters}
    has_body = "requestBody" in operation
    responses: dict[str, dict[str, Any]] = {}
    if has_body or "query" in where:
        responses["400"] = _error(
            "Invalid input (field messages); nothing was done.", "ValidationError"
        )
    if operation.get("security"):
        responses["401"] = _error(
            "No credentials, or an unknown, revoked or malformed API key.",
            headers={
                "WWW-Authenticate": {
                    "description": 'The scheme to use: `Bearer realm="fluxgate"`.',
                    "schema": {"type": "string"},
                }
            },
        )
        responses["403"] = _error(
            "Not allowed to you (an API key, or a user who does not manage the team), or a "
            "signed-in session's write without its CSRF token."
        )
    paginated = {p.get("name") for p in parameters if p.get("in") == "query"} & {"page", "cursor"}
    if "path" in where or paginated:
        responses["404"] = _error(
            "Not found, or not visible to you"
            + (" (or no such page)." if paginated else ".")
        )
    if has_body:
        responses["413"] = _error("Request body too large (`DATA_UPLOAD_MAX_MEMORY_SIZE`).")
        responses["415"] = _error("Unsupported `Content-Type` (send `application/json`).")
    if operation.get("security"):
        responses["429"] = _error(
            "Too many requests: the key's ingest rate, the site's DRF throttles, or too many "
            "failed API-key authentications from this address (then every request with a "
            "Bearer key is refused until the window ends).",
            headers=_RETRY_AFTER,
        )
    return responses


def document_error_responses(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: every operation's error responses.

    Each operation that needs credentials (all of FluxGate's) can answer 401 (none, or an
    unknown key), 403 (not yours to do; a session write without CSRF token) and 429 (the
    key's ingest rate, the site's DRF throttles, and the failed-authentication limit, which
    refuses every Bearer request from an address past it) with ``Retry-After``; one taking
    query parameters or a body, 400 with field messages; one with path parameters or
    pages, 404; one with a body, 413 and 415. Responses an operation documents itself
    keep their description; every error response without a body gets the error body.
    """
    components = result.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in ERROR_COMPONENTS.items():
        components.setdefault(name, schema)
    for item in result.get("paths", {}).values():
        for method, operation in item.items():
            if method not in _HTTP_METHODS:
                continue
            responses = operation.setdefault("responses", {})
            for status, response in _error_responses(operation).items():
                documented = responses.get(status)
                if documented is None:
                    responses[status] = response
                else:
                    for key, value in response.items():
                        documented.setdefault(key, value)
            for status, response in responses.items():
                if status[0] in "45" and "content" not in response:
                    component = "ValidationError" if status == "400" else "Error"
                    response["content"] = _error("", component)["content"]
            operation["responses"] = dict(sorted(responses.items()))
    return result


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
