"""The OpenAPI schema (drf-spectacular) and a property-based run against it (schemathesis):
whatever the generated request, as a team's API key or as staff, the API never answers 5xx,
and its successful responses match the schema."""

from __future__ import annotations

import json

import pytest
import schemathesis
from django.conf import settings as django_settings
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.middleware.csrf import _get_new_csrf_string
from django.test import Client
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

from tests.api_helpers import API, make_budget, make_event, make_world

SCHEMA = f"{API}schema/"

ENDPOINTS = {
    "/fluxgate/api/events/": {"get", "post"},
    "/fluxgate/api/events/{tracking_id}/": {"get"},
    "/fluxgate/api/reports/breakdown/": {"get"},
    "/fluxgate/api/reports/timeseries/": {"get"},
    "/fluxgate/api/teams/": {"get", "post"},
    "/fluxgate/api/teams/{id}/": {"get"},
    "/fluxgate/api/budgets/": {"get", "post"},
    "/fluxgate/api/budgets/{id}/": {"get", "put", "patch", "delete"},
    "/fluxgate/api/api-keys/": {"get", "post"},
    "/fluxgate/api/api-keys/{id}/": {"get"},
    "/fluxgate/api/api-keys/{id}/revoke/": {"post"},
}


@pytest.mark.django_db
def test_schema_describes_every_endpoint_and_the_bearer_key():
    response = Client().get(SCHEMA, {"format": "json"})
    assert response.status_code == 200
    schema = json.loads(response.content)
    paths = {
        path: set(ops) & {"get", "post", "put", "patch", "delete"}
        for path, ops in schema["paths"].items()
    }
    assert {p: m for p, m in paths.items() if p in ENDPOINTS} == ENDPOINTS
    assert schema["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "fg_live_…",
        "description": "A team's FluxGate API key.",
    }
    ingest = schema["paths"]["/fluxgate/api/events/"]["post"]
    assert set(ingest["responses"]) >= {"202", "400", "413", "429"}
    yaml = Client().get(SCHEMA)
    assert yaml.status_code == 200 and b"openapi: 3" in yaml.content


@pytest.mark.django_db
def test_docs_page_serves_swagger_ui_without_a_cdn():
    page = Client().get(f"{SCHEMA}docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html
    assert f'"{SCHEMA}"' in html or f"'{SCHEMA}'" in html


# -- property-based: schemathesis against the live WSGI application -----------------------


@pytest.fixture
def wsgi_app():
    """Django's real WSGI handler, without closing the test's database connection after
    each request (the test client's handler does the same)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield get_wsgi_application()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


EXAMPLES = {
    # Valid requests, then requests that break the schema (wrong types, bad values...).
    GenerationMode.POSITIVE: settings(
        max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    ),
    GenerationMode.NEGATIVE: settings(
        max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    ),
}

#: Writes an API key is refused before its body is read (see test_api_permissions):
#: generating bodies for them as a key would only test the 403 again.
_KEY_REFUSED = ("POST /fluxgate/api/teams/", "/fluxgate/api/budgets/", "/fluxgate/api/api-keys/")


def _refused_to_keys(label: str) -> bool:
    method, path = label.split(" ", 1)
    return method != "GET" and any(
        label.startswith(prefix) or path.startswith(prefix) for prefix in _KEY_REFUSED
    )


def _auth(world, who: str) -> dict:
    """``case.call()`` arguments authenticating as ``who``."""
    if who == "key":
        return {"headers": {"Authorization": f"Bearer {world.secret_a}"}}
    client = Client()
    client.force_login(world.staff)
    token = _get_new_csrf_string()
    session = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    return {
        "cookies": {
            django_settings.SESSION_COOKIE_NAME: session,
            django_settings.CSRF_COOKIE_NAME: token,
        },
        "headers": {"X-CSRFToken": token},
    }


@pytest.mark.django_db
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("who", ["key", "staff"])
def test_generated_requests_never_get_a_5xx(wsgi_app, who, mode):
    """Up to 30 valid and 20 invalid generated requests per operation, as team A's key and
    as staff (with session and CSRF token): no 5xx; 2xx responses conform to the schema."""
    world = make_world()
    make_event(world.team_a)
    make_budget(world.team_a)
    schema = schemathesis.openapi.from_wsgi(f"{SCHEMA}?format=json", wsgi_app)
    auth = _auth(world, who)
    failures = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        if who == "key" and _refused_to_keys(operation.label):
            continue

        @EXAMPLES[mode]
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case):
            response = case.call(**auth)
            case.validate_response(response, checks=[not_a_server_error])
            if 200 <= response.status_code < 300:
                case.validate_response(response, checks=[response_schema_conformance])

        try:
            run()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures[operation.label] = exc
    assert operations >= sum(len(methods) for methods in ENDPOINTS.values())
    assert not failures, "\n\n".join(f"{label}: {exc}" for label, exc in failures.items())
