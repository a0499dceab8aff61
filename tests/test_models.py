"""Models: migrations in sync, API key secrets hashed at rest, budget validation."""

from __future__ import annotations

import hmac
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command

from fluxgate_django.models import KEY_PREFIX, ApiKey, Budget, Team, hash_secret
from fluxgate_django.models import teams as fluxgate_models

pytestmark = pytest.mark.django_db


def test_no_missing_migrations() -> None:
    # Exits with SystemExit(1) if a model change has no migration.
    call_command("makemigrations", "fluxgate_django", "--check", "--dry-run", verbosity=0)


@pytest.fixture
def team() -> Team:
    return Team.objects.create(name="Acme", slug="acme")


# -- API keys ------------------------------------------------------------------------------


def test_secret_is_hashed_at_rest(team: Team) -> None:
    key, secret = ApiKey.objects.create_key(team=team, name="ci")
    assert secret.startswith(key.prefix + "_")
    assert key.prefix.startswith(KEY_PREFIX)
    assert key.hashed_key == hash_secret(secret)
    row = ApiKey.objects.filter(pk=key.pk).values().get()
    assert not [column for column, value in row.items() if secret in str(value)]
    # the random part after the prefix is not stored either
    random_part = secret[len(key.prefix) + 1 :]
    assert len(random_part) >= 40
    assert not [column for column, value in row.items() if random_part in str(value)]


def test_secrets_are_unique(team: Team) -> None:
    secrets = {ApiKey.objects.create_key(team=team, name=f"k{i}")[1] for i in range(20)}
    assert len(secrets) == 20


def test_get_from_secret(team: Team) -> None:
    key, secret = ApiKey.objects.create_key(team=team, name="ci")
    found = ApiKey.objects.get_from_secret(secret)
    assert found == key
    assert found is not None and found.team == team


@pytest.mark.parametrize(
    "bad",
    ["", "fg_live_", "sk-not-ours", "fg_live_nounderscore", "fg_live_abc_def", "FG_LIVE_x_y"],
)
def test_get_from_secret_rejects_malformed(team: Team, bad: str) -> None:
    ApiKey.objects.create_key(team=team, name="ci")
    assert ApiKey.objects.get_from_secret(bad) is None


def test_get_from_secret_compares_in_constant_time(team: Team, monkeypatch: Any) -> None:
    key, secret = ApiKey.objects.create_key(team=team, name="ci")
    calls: list[tuple[str, str]] = []
    compare_digest = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(fluxgate_models.hmac, "compare_digest", spy)
    wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")

    assert ApiKey.objects.get_from_secret(wrong) is None
    assert ApiKey.objects.get_from_secret(secret) == key
    # Same prefix, so both reached the hash comparison, which went through compare_digest.
    assert calls == [(key.hashed_key, hash_secret(wrong)), (key.hashed_key, hash_secret(secret))]


def test_revoked_key_is_rejected(team: Team) -> None:
    key, secret = ApiKey.objects.create_key(team=team, name="ci")
    assert key.is_active
    key.revoke()
    assert not key.is_active
    assert ApiKey.objects.get_from_secret(secret) is None


# -- budgets -------------------------------------------------------------------------------


def make_budget(team: Team, **fields: Any) -> Budget:
    values = {
        "team": team,
        "period": "month",
        "limit_usd": Decimal("50"),
        "alert_threshold_percent": 80,
        "action": "block",
    }
    return Budget(**{**values, **fields})


def test_valid_budget(team: Team) -> None:
    make_budget(team).full_clean()
    make_budget(team, period="day", action="alert", alert_threshold_percent=100).full_clean()
    make_budget(team, limit_usd=Decimal("0.000001"), alert_threshold_percent=1).full_clean()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"limit_usd": Decimal("0")}, "limit_usd"),
        ({"limit_usd": Decimal("-5")}, "limit_usd"),
        ({"alert_threshold_percent": 0}, "alert_threshold_percent"),
        ({"alert_threshold_percent": 101}, "alert_threshold_percent"),
        ({"period": "week"}, "period"),
        ({"action": "explode"}, "action"),
    ],
)
def test_budget_validation(team: Team, fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        make_budget(team, **fields).full_clean()
    assert field in info.value.message_dict
    assert set(info.value.message_dict) == {field}
