"""``teams/``, ``budgets/`` and ``api-keys/``: validation, current budget window, secrets."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from fluxgate_django.budgets import window_start
from fluxgate_django.models import ApiKey, Budget, SpendCounter, hash_secret, to_units
from tests.api_helpers import (
    API,
    event_payload,
    make_budget,
    make_world,
    patch_json,
    post_json,
)

pytestmark = pytest.mark.django_db

SECRET = re.compile(r"fg_live_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}")


@pytest.fixture
def w():
    return make_world()


@pytest.fixture
def admin(w):
    return w.client("admin_a")


# -- budgets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"limit_usd": "0"}, "limit_usd", "greater than or equal to 0.000001"),
        ({"limit_usd": "-5"}, "limit_usd", "greater than or equal to 0.000001"),
        ({"limit_usd": "abc"}, "limit_usd", "valid number"),
        ({"limit_usd": "1" * 20}, "limit_usd", "no more than 14 digits"),
        ({"alert_threshold_percent": 0}, "alert_threshold_percent", "greater than or equal to 1"),
        ({"alert_threshold_percent": 101}, "alert_threshold_percent", "less than or equal to 100"),
        ({"period": "week"}, "period", "not a valid choice"),
        ({"action": "explode"}, "action", "not a valid choice"),
        ({"feature": "f" * 101}, "feature", "no more than 100 characters"),
        ({"webhook_url": "not a url"}, "webhook_url", "valid URL"),
        ({"webhook_url": "http://93.184.216.34/hook"}, "webhook_url", "must use https"),
        ({"webhook_url": "https://127.0.0.1/hook"}, "webhook_url", "public addresses"),
        ({"webhook_url": "https://169.254.169.254/latest"}, "webhook_url", "public addresses"),
        ({"team": "nope"}, "team", "does not exist"),
        ({"team": None}, "team", "may not be null"),
        ({"team": "a\x00"}, "team", "Null characters"),  # PostgreSQL can't compare it
    ],
)
def test_budget_validation(admin, fields, field, message):
    body = {"team": "a", "limit_usd": "10", **fields}
    response = post_json(admin, f"{API}budgets/", body)
    assert response.status_code == 400
    assert message in str(response.json()[field])
    assert not Budget.objects.exists()


def test_budget_validation_on_update(admin, w):
    budget = make_budget(w.team_a)
    for fields in ({"limit_usd": "0"}, {"alert_threshold_percent": 150}, {"period": "year"}):
        response = patch_json(admin, f"{API}budgets/{budget.pk}/", fields)
        assert response.status_code == 400, fields
    budget.refresh_from_db()
    assert (budget.limit_usd, budget.alert_threshold_percent, budget.period) == (
        Decimal("10"),
        80,
        "month",
    )


def test_budget_crud_and_current_window(admin, w):
    created = post_json(
        admin,
        f"{API}budgets/",
        {"team": "a", "limit_usd": "2.5", "period": "day", "alert_threshold_percent": 50},
    )
    assert created.status_code == 201, created.json()
    budget = Budget.objects.get(pk=created.json()["id"])
    body = created.json()
    assert (body["spent_usd"], body["reserved_usd"], body["percent_used"]) == ("0", "0", "0.0")
    assert body["window_start"] == window_start("day").isoformat()

    SpendCounter.objects.create(
        budget=budget,
        window_start=window_start("day"),
        limit_units=to_units(Decimal("2.5")),
        blocking=True,
        spent_units=to_units(Decimal("1.25")),
        reserved_units=to_units(Decimal("0.1")),
    )
    shown = admin.get(f"{API}budgets/{budget.pk}/").json()
    assert (shown["spent_usd"], shown["reserved_usd"], shown["percent_used"]) == (
        "1.25",
        "0.1",
        "50.0",
    )
    (listed,) = admin.get(f"{API}budgets/").json()["results"]
    assert listed == shown

    # read-only fields can't be written
    changed = patch_json(admin, f"{API}budgets/{budget.pk}/", {"limit_usd": "5", "spent_usd": "0"})
    assert changed.status_code == 200
    assert changed.json()["spent_usd"] == "1.25" and changed.json()["limit_usd"] == "5.000000"
    assert SpendCounter.objects.get(budget=budget).limit_units == to_units(Decimal("5"))

    assert admin.delete(f"{API}budgets/{budget.pk}/").status_code == 204
    assert not Budget.objects.exists()


def test_budget_spend_matches_ingested_events(w):
    budget = make_budget(w.team_a, limit_usd=Decimal("1"))
    post_json(w.client("key_a"), f"{API}events/", event_payload(cache_read_tokens=200))
    shown = w.client("key_a").get(f"{API}budgets/{budget.pk}/").json()
    assert shown["spent_usd"] == "0.00725"
    assert shown["percent_used"] == "0.7"


def test_an_unchanged_webhook_is_not_checked_again_but_a_new_one_is(admin, w):
    """Editing a budget does not depend on its webhook's DNS (hooks.example.com resolves
    nowhere here); a new URL is checked (a loopback address: refused)."""
    budget = make_budget(w.team_a, webhook_url="https://hooks.example.com/T000/secret-token")
    path = f"{API}budgets/{budget.pk}/"
    same = {"limit_usd": "7", "webhook_url": budget.webhook_url}
    assert patch_json(admin, path, same).status_code == 200
    refused = patch_json(admin, path, {"webhook_url": "https://127.0.0.1/hook"})
    assert refused.status_code == 400 and "public addresses" in str(refused.json())


def test_webhook_urls_are_shown_only_to_the_team_managers(w):
    make_budget(w.team_a, webhook_url="https://hooks.example.com/T000/secret-token")
    for who, visible in [("admin_a", True), ("staff", True), ("member_a", False), ("key_a", False)]:
        (budget,) = w.client(who).get(f"{API}budgets/").json()["results"]
        assert ("secret-token" in budget["webhook_url"]) is visible, who


# -- API keys ---------------------------------------------------------------------------


def test_a_created_key_shows_its_secret_once_and_stores_only_a_hash(admin, w):
    response = post_json(admin, f"{API}api-keys/", {"team": "a", "name": "deploy"})
    assert response.status_code == 201
    body = response.json()
    secret = body["secret"]
    assert SECRET.fullmatch(secret)
    key = ApiKey.objects.get(pk=body["id"])
    assert key.hashed_key == hash_secret(secret) and secret not in key.hashed_key
    assert all(secret not in str(getattr(key, f.attname)) for f in ApiKey._meta.concrete_fields)
    assert body["prefix"] == f"{key.prefix}…" and secret.startswith(key.prefix)

    listed = admin.get(f"{API}api-keys/").content.decode()
    detail = admin.get(f"{API}api-keys/{key.pk}/").content.decode()
    for page in (listed, detail):
        assert secret not in page and '"secret"' not in page
        assert secret[len(key.prefix) :] not in page

    # The new key works, for its team only.
    from tests.api_helpers import key_client

    new = key_client(secret)
    assert {t["slug"] for t in new.get(f"{API}teams/").json()["results"]} == {"a"}


def test_revoked_keys_stop_working(admin, w):
    api = w.client("key_a")
    assert api.get(f"{API}events/").status_code == 200
    response = post_json(admin, f"{API}api-keys/{w.key_a.pk}/revoke/")
    assert response.status_code == 200
    assert response.json()["is_active"] is False and response.json()["revoked_at"]
    revoked_at = response.json()["revoked_at"]
    assert api.get(f"{API}events/").status_code == 401
    again = post_json(admin, f"{API}api-keys/{w.key_a.pk}/revoke/")
    assert again.json()["revoked_at"] == revoked_at  # idempotent


@pytest.mark.parametrize(
    ("body", "field"),
    [({"team": "a"}, "name"), ({"team": "a", "name": ""}, "name"),
     ({"team": "a", "name": "n" * 101}, "name"), ({"name": "x"}, "team"),
     ({"team": "\x00", "name": "x"}, "team")],
)  # fmt: skip
def test_api_key_validation(admin, body, field):
    response = post_json(admin, f"{API}api-keys/", body)
    assert response.status_code == 400 and field in response.json()


def test_api_keys_cannot_be_changed_or_deleted_over_the_api(admin, w):
    path = f"{API}api-keys/{w.key_a.pk}/"
    assert patch_json(admin, path, {"name": "x"}).status_code == 405
    assert admin.delete(path).status_code == 405


# -- teams ------------------------------------------------------------------------------


def test_teams_are_read_only_except_creation_by_staff(w):
    staff = w.client("staff")
    path = f"{API}teams/{w.team_a.pk}/"
    assert staff.get(path).json() == {
        "id": w.team_a.pk,
        "name": "Alpha",
        "slug": "a",
        "created_at": staff.get(path).json()["created_at"],
    }
    assert patch_json(staff, path, {"name": "x"}).status_code == 405
    assert staff.delete(path).status_code == 405
    bad = post_json(staff, f"{API}teams/", {"name": "Bad", "slug": "not a slug"})
    assert bad.status_code == 400 and "slug" in bad.json()
