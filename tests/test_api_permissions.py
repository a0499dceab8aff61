"""Who may do what, endpoint by endpoint: anonymous, team A's key, team A's member and
admin, team B's admin, an outsider and staff. Another team's objects are 404s."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.middleware.csrf import _get_new_csrf_string

from fluxgate_django.models import ApiKey, Budget, Team
from tests.api_helpers import (
    API,
    event_payload,
    make_budget,
    make_event,
    make_world,
    patch_json,
    post_json,
)

pytestmark = pytest.mark.django_db

WHO = ["anon", "key_a", "member_a", "admin_a", "admin_b", "outsider", "staff"]


@pytest.fixture
def w():
    world = make_world()
    world.event_a = make_event(world.team_a)
    world.event_b = make_event(world.team_b)
    world.budget_a = make_budget(world.team_a)
    world.budget_b = make_budget(world.team_b)
    return world


def request(w: Any, who: str, method: str, path: str, data: Any = None) -> Any:
    client = w.client(who)
    path = path.format(w=w)
    if method == "get":
        return client.get(path)
    if method == "patch":
        return patch_json(client, path, data)
    if method == "delete":
        return client.delete(path)
    return post_json(client, path, data or {})


# (method, path, body, {who: expected status}); who not listed: the default of the row.
MATRIX: list[tuple[str, str, Any, dict[str, int]]] = [
    ("get", "events/", None, {"anon": 401, "*": 200}),
    ("get", "events/{w.event_a.tracking_id}/", None,
     {"anon": 401, "admin_b": 404, "outsider": 404, "*": 200}),
    ("get", "events/{w.event_b.tracking_id}/", None,
     {"anon": 401, "admin_b": 200, "staff": 200, "*": 404}),
    ("post", "events/", "event", {"anon": 401, "key_a": 202, "*": 403}),
    ("get", "reports/breakdown/", None, {"anon": 401, "*": 200}),
    ("get", "reports/timeseries/", None, {"anon": 401, "*": 200}),
    ("get", "teams/", None, {"anon": 401, "*": 200}),
    ("get", "teams/{w.team_b.pk}/", None, {"anon": 401, "admin_b": 200, "staff": 200, "*": 404}),
    ("post", "teams/", {"name": "Gamma", "slug": "g"}, {"anon": 401, "staff": 201, "*": 403}),
    ("get", "budgets/", None, {"anon": 401, "*": 200}),
    ("get", "budgets/{w.budget_a.pk}/", None,
     {"anon": 401, "admin_b": 404, "outsider": 404, "*": 200}),
    ("post", "budgets/", {"team": "a", "limit_usd": "5"},
     {"anon": 401, "key_a": 403, "member_a": 403, "admin_a": 201, "staff": 201, "*": 400}),
    ("patch", "budgets/{w.budget_a.pk}/", {"limit_usd": "7"},
     {"anon": 401, "key_a": 403, "member_a": 403, "admin_a": 200, "staff": 200, "*": 404}),
    ("delete", "budgets/{w.budget_a.pk}/", None,
     {"anon": 401, "key_a": 403, "member_a": 403, "admin_a": 204, "staff": 204, "*": 404}),
    ("get", "api-keys/", None, {"anon": 401, "key_a": 403, "*": 200}),
    ("get", "api-keys/{w.key_a.pk}/", None,
     {"anon": 401, "key_a": 403, "admin_a": 200, "staff": 200, "*": 404}),
    ("post", "api-keys/", {"team": "a", "name": "new"},
     {"anon": 401, "key_a": 403, "member_a": 403, "admin_a": 201, "staff": 201, "*": 400}),
    ("post", "api-keys/{w.key_a.pk}/revoke/", None,
     {"anon": 401, "key_a": 403, "admin_a": 200, "staff": 200, "*": 404}),
    ("get", "schema/", None, {"*": 200}),
    ("get", "schema/docs/", None, {"*": 200}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "expected", "who"),
    [(m, p, b, e, who) for m, p, b, e in MATRIX for who in WHO],
    ids=[f"{m} {p} as {who}" for m, p, _, _ in MATRIX for who in WHO],
)
def test_permission_matrix(w, method, path, body, expected, who):
    if body == "event":
        body = event_payload()
    response = request(w, who, method, API + path, body)
    status = expected.get(who, expected["*"])
    assert response.status_code == status, getattr(response, "data", response.content)


def test_each_principal_sees_only_its_teams_data(w):
    def listed(who: str, what: str, key: str) -> set[Any]:
        return {row[key] for row in w.client(who).get(f"{API}{what}/").json()["results"]}

    assert listed("key_a", "events", "team") == {"a"}
    assert listed("member_a", "events", "team") == {"a"}
    assert listed("admin_b", "events", "team") == {"b"}
    assert listed("outsider", "events", "team") == set()
    assert listed("staff", "events", "team") == {"a", "b"}

    assert listed("key_a", "teams", "slug") == {"a"}
    assert listed("outsider", "teams", "slug") == set()
    assert listed("staff", "teams", "slug") == {"a", "b"}

    assert listed("key_a", "budgets", "team") == {"a"}
    assert listed("member_a", "budgets", "team") == {"a"}
    assert listed("staff", "budgets", "team") == {"a", "b"}

    assert listed("admin_a", "api-keys", "team") == {"a"}
    assert listed("member_a", "api-keys", "team") == set()  # members don't manage keys
    assert listed("staff", "api-keys", "team") == {"a", "b"}


def test_writes_never_reach_another_team(w):
    # Team A's admin can't create in, move to, or touch team B.
    admin_a = w.client("admin_a")
    assert post_json(admin_a, f"{API}budgets/", {"team": "b", "limit_usd": "5"}).status_code == 400
    moved = patch_json(admin_a, f"{API}budgets/{w.budget_a.pk}/", {"team": "b"})
    assert moved.status_code == 400
    assert post_json(admin_a, f"{API}api-keys/", {"team": "b", "name": "x"}).status_code == 400
    assert post_json(admin_a, f"{API}api-keys/{w.key_b.pk}/revoke/").status_code == 404
    assert Budget.objects.filter(team=w.team_b).count() == 1
    assert ApiKey.objects.filter(team=w.team_b).count() == 1
    w.key_b.refresh_from_db()
    assert w.key_b.is_active
    # ... nor can a member of A who is also admin of B move A's budget to B.
    from fluxgate_django.models import TeamMembership

    TeamMembership.objects.create(user=w.member_a, team=w.team_b, role="admin")
    response = patch_json(w.client("member_a"), f"{API}budgets/{w.budget_a.pk}/", {"team": "b"})
    assert response.status_code == 403


def test_session_writes_need_the_csrf_token(w):
    client = w.client("admin_a", enforce_csrf_checks=True)
    body = {"team": "a", "limit_usd": "5"}
    refused = post_json(client, f"{API}budgets/", body)
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]
    token = _get_new_csrf_string()
    client.cookies[settings.CSRF_COOKIE_NAME] = token
    accepted = post_json(client, f"{API}budgets/", body, headers={"X-CSRFToken": token})
    assert accepted.status_code == 201
    assert client.get(f"{API}budgets/").status_code == 200  # reads need no token


def test_api_key_requests_need_no_csrf_token(w):
    client = w.client("key_a", enforce_csrf_checks=True)
    assert post_json(client, f"{API}events/", event_payload()).status_code == 202


def test_inactive_staff_sees_nothing(w):
    client = w.client("staff")
    w.staff.is_active = False
    w.staff.save()
    assert client.get(f"{API}teams/").status_code in (401, 403)


def test_a_team_created_by_staff(w):
    response = post_json(w.client("staff"), f"{API}teams/", {"name": "Gamma", "slug": "gamma"})
    assert response.status_code == 201
    assert Team.objects.filter(slug="gamma").exists()
    duplicate = post_json(w.client("staff"), f"{API}teams/", {"name": "G2", "slug": "gamma"})
    assert duplicate.status_code == 400 and "slug" in duplicate.json()
