"""The OpenAPI schema (drf-spectacular): what it documents (every operation's error
responses among them), answers that match it, and a property-based run against it as staff
(schemathesis): whatever the generated request, the API never answers 5xx, and its
successful responses match the schema. (schemathesis' full run, as a team's API key:
tests/test_schemathesis.py.)"""

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

def _staff_session(world) -> dict:
    """``case.call()`` arguments authenticating as staff: session cookie and CSRF token."""
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
def test_generated_requests_as_staff_never_get_a_5xx(wsgi_app, settings, fake, mode):
    """Up to 30 valid and 20 invalid generated requests per operation as staff (with
    session and CSRF token), who may use every one: no 5xx; 2xx responses conform to the
    schema. (As a team's key, tests/test_schemathesis.py runs every check of
    schemathesis.) LLM calls go to the fake provider."""
    settings.FLUXGATE = {
        **settings.FLUXGATE,
        "PROVIDERS": {
            "openai": {"api_key": "sk-fake", "base_url": fake.openai_base_url, "timeout": 5},
            "anthropic": {"api_key": "sk-fake", "base_url": fake.anthropic_base_url},
        },
    }
    world = make_world()
    make_event(world.team_a)
    make_budget(world.team_a)
    schema = schemathesis.openapi.from_wsgi(f"{SCHEMA}?format=json", wsgi_app)
    auth = _staff_session(world)
    failures = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

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


# -- what the schema says every operation can answer, and that the answers say it too ----


def _schema() -> dict:
    return json.loads(Client().get(SCHEMA, {"format": "json"}).content)


def _operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                yield f"{method.upper()} {path}", operation


@pytest.mark.django_db
def test_every_operation_documents_its_error_responses():
    """Every operation (all need credentials): 401 with its challenge, 403, 429 with
    Retry-After; with parameters or a body, 400 (field messages); with an id or pages, 404;
    with a body, 413 and 415. Each error has its body's schema."""
    schema = _schema()
    components = schema["components"]["schemas"]
    assert components["Error"]["required"] == ["detail"]
    assert "ValidationError" in components
    for label, operation in _operations(schema):
        responses = operation["responses"]
        assert operation["security"], label
        assert {"401", "403", "429"} <= set(responses), label
        assert "WWW-Authenticate" in responses["401"]["headers"], label
        assert responses["429"]["headers"]["Retry-After"]["schema"]["type"] == "integer", label
        where = {p["in"] for p in operation.get("parameters", [])}
        names = {p["name"] for p in operation.get("parameters", [])}
        if "requestBody" in operation or "query" in where:
            body = responses["400"]["content"]["application/json"]["schema"]
            assert body == {"$ref": "#/components/schemas/ValidationError"}, label
        if "path" in where or names & {"page", "cursor"}:
            assert "404" in responses, label
        if "requestBody" in operation:
            assert {"413", "415"} <= set(responses), label
        for status, response in responses.items():
            if status[0] in "45":
                assert "application/json" in response["content"], (label, status)
    ingest = schema["paths"]["/fluxgate/api/events/"]["post"]
    assert ingest["responses"]["400"]["description"] == "Invalid event(s); nothing was stored."
    assert ingest["requestBody"]["required"] is True
    complete = schema["paths"]["/fluxgate/api/complete/"]["post"]
    assert {"402", "503"} <= set(complete["responses"])
    assert list(complete["requestBody"]["content"]) == ["application/json"]


def _validated(case, response) -> None:
    """Every check of the response against the operation's documented responses."""
    from schemathesis.checks import (
        content_type_conformance,
        response_headers_conformance,
        status_code_conformance,
    )

    case.validate_response(
        response,
        checks=[
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ],
    )


@pytest.mark.django_db
def test_a_key_past_the_failed_authentication_limit_gets_the_documented_429(wsgi_app, settings):
    """Past AUTH_FAILURE_RATE, even the right key is refused: 429 with Retry-After, as
    the schema documents it for every operation."""
    settings.FLUXGATE = {**settings.FLUXGATE, "AUTH_FAILURE_RATE": "2/min"}
    world = make_world()
    schema = schemathesis.openapi.from_wsgi(f"{SCHEMA}?format=json", wsgi_app)
    events = schema["/fluxgate/api/events/"]["GET"]
    for _ in range(2):
        wrong = events.Case(headers={"Authorization": "Bearer fg_live_wrong"}).call()
        assert wrong.status_code == 401
        _validated(events.Case(), wrong)
    right = {"Authorization": f"Bearer {world.secret_a}"}
    for operation in (events, schema["/fluxgate/api/reports/breakdown/"]["GET"]):
        case = operation.Case(headers=right)
        throttled = case.call()
        assert throttled.status_code == 429
        headers = {name.lower(): values for name, values in throttled.headers.items()}
        assert int(headers["retry-after"][0]) >= 1
        _validated(case, throttled)


@pytest.mark.django_db
def test_a_hidden_webhook_url_is_answered_as_the_schema_says(wsgi_app):
    """A team member (and a key) sees a budget's webhook URL as "(hidden)": one of the
    values the schema gives for it."""
    world = make_world()
    make_budget(world.team_a, webhook_url="https://hooks.example.com/services/T0/B0/secret")
    schema = schemathesis.openapi.from_wsgi(f"{SCHEMA}?format=json", wsgi_app)
    budgets = schema["/fluxgate/api/budgets/"]["GET"]
    case = budgets.Case(headers={"Authorization": f"Bearer {world.secret_a}"})
    response = case.call()
    assert response.status_code == 200
    assert [b["webhook_url"] for b in response.json()["results"]] == ["(hidden)"]
    _validated(case, response)


@pytest.mark.django_db
def test_list_parameters_are_validated_as_given():
    """``page_size`` that is not a whole number from 1 is a 400, not silently the
    default; an empty ``team=`` is a 400, not every team; a date-time at the ends of the
    calendar filters like the first or last moment, not a 500."""
    world = make_world()
    event = make_event(world.team_a)
    key = world.client("key_a")
    for path in (f"{API}events/", f"{API}teams/", f"{API}budgets/"):
        for size in ("abc", "0", "-1", "1.5"):
            response = key.get(path, {"page_size": size})
            assert response.status_code == 400, (path, size)
            assert "page_size" in response.json()
        assert key.get(path, {"page_size": "5000"}).status_code == 200
    for path in (f"{API}events/", f"{API}reports/breakdown/", f"{API}reports/timeseries/"):
        response = key.get(path, {"team": ""})
        assert response.status_code == 400 and "team" in response.json(), path
    everything = key.get(
        f"{API}events/", {"start": "0001-01-01T00:00:00+01:00", "end": "9999-12-31"}
    )
    assert everything.status_code == 200
    assert [e["tracking_id"] for e in everything.json()["results"]] == [str(event.tracking_id)]
    late = key.get(f"{API}events/", {"end": "9999-12-31T23:59:59-23:59"})
    assert late.status_code == 200 and len(late.json()["results"]) == 1


@pytest.mark.django_db
def test_a_detail_url_with_any_id_is_the_documented_json_404():
    world = make_world()
    key = world.client("key_a")
    for path in ("budgets/1.5/", "teams/x.y/", "events/not-a-uuid/"):
        response = key.get(f"{API}{path}")
        assert response.status_code == 404, path
        assert response["Content-Type"] == "application/json"
        assert "detail" in response.json()


@pytest.mark.django_db
def test_complete_takes_json_only():
    """Its messages are a list of objects: a form is refused (415), as documented."""
    world = make_world()
    response = world.client("key_a").post(
        f"{API}complete/", {"model": "gpt-4o-mini", "messages": "hi"}
    )
    assert response.status_code == 415
