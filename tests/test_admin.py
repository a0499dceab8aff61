"""The FluxGate admin, driven as a superuser through the test client."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from fluxgate_django import track_openai
from fluxgate_django.budgets import window_start
from fluxgate_django.models import (
    ApiKey,
    Budget,
    Event,
    ModelPrice,
    Team,
    TeamMembership,
    hash_secret,
)
from fluxgate_django.pricing import price_book
from fluxgate_django.testing import FakeProvider, FakeReply

pytestmark = pytest.mark.django_db

SECRET = re.compile(r"fg_live_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}")


def url(name: str, *args: Any) -> str:
    return reverse(f"admin:fluxgate_django_{name}", args=args)


@pytest.fixture
def team() -> Team:
    return Team.objects.create(name="Acme", slug="acme")


@pytest.fixture
def events(team: Team) -> list[Event]:
    now = timezone.now()
    return [
        Event.objects.create(
            provider="openai",
            model="gpt-4o",
            feature="chat",
            team=team,
            request_id="req-1",
            input_tokens=1000,
            output_tokens=200,
            cost_usd=Decimal("0.0045"),
            latency_ms=812.4,
            created_at=now,
        ),
        Event.objects.create(
            provider="anthropic",
            model="claude-sonnet-4-6",
            feature="summarize",
            status="ERROR",
            source="langchain",
            streamed=True,
            session_id="sess-42",
            cost_usd=None,
            created_at=now - dt.timedelta(days=40),
        ),
    ]


def listed(response: Any) -> list[Any]:
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


# -- events --------------------------------------------------------------------------------


def test_event_changelist_filters_and_search(
    admin_client: Client, events: list[Event], team: Team
) -> None:
    chat, summarize = events
    changelist = url("event_changelist")
    response = admin_client.get(changelist)
    assert listed(response) == [chat, summarize]
    content = response.content.decode()
    assert "$0.0045" in content
    assert "812 ms" in content
    assert "unknown" in content  # no price: not shown as $0

    cases = {
        "provider=anthropic": [summarize],
        "model=gpt-4o": [chat],
        "provider=openai&model=gpt-4o": [chat],
        "status__exact=ERROR": [summarize],
        "feature=chat": [chat],
        f"team__id__exact={team.pk}": [chat],
        "source__exact=langchain": [summarize],
        "streamed__exact=1": [summarize],
        "q=req-1": [chat],
        "q=sess-42": [summarize],
        f"q={chat.tracking_id}": [chat],
        "q=claude": [summarize],
        f"created_at__year={chat.created_at.year}&created_at__month={chat.created_at.month}"
        f"&created_at__day={chat.created_at.day}": [chat],
    }
    for query, expected in cases.items():
        assert listed(admin_client.get(f"{changelist}?{query}")) == expected, query


def test_model_filter_lists_models_of_chosen_provider(
    admin_client: Client, events: list[Event]
) -> None:
    response = admin_client.get(url("event_changelist"))
    assert "?model=claude-sonnet-4-6" in response.content.decode()
    response = admin_client.get(url("event_changelist") + "?provider=openai")
    content = response.content.decode()
    assert "model=gpt-4o" in content
    assert "model=claude-sonnet-4-6" not in content


def test_event_change_view_is_read_only(admin_client: Client, events: list[Event]) -> None:
    event = events[0]
    response = admin_client.get(url("event_change", event.pk))
    assert response.status_code == 200
    content = response.content.decode()
    assert str(event.tracking_id) in content
    assert 'name="_save"' not in content
    assert admin_client.post(url("event_change", event.pk), {"feature": "x"}).status_code == 403
    event.refresh_from_db()
    assert event.feature == "chat"


def test_event_add_and_delete_are_forbidden(admin_client: Client, events: list[Event]) -> None:
    assert admin_client.get(url("event_add")).status_code == 403
    assert admin_client.get(url("event_delete", events[0].pk)).status_code == 403
    response = admin_client.post(
        url("event_changelist"),
        {"action": "delete_selected", "_selected_action": [e.pk for e in events]},
    )
    assert response.status_code == 200  # "no action selected": delete is not offered
    assert Event.objects.count() == 2


# -- API keys ------------------------------------------------------------------------------


def create_key_in_admin(client: Client, team: Team, name: str = "CI") -> tuple[ApiKey, str]:
    response = client.post(url("apikey_add"), {"team": team.pk, "name": name}, follow=True)
    assert response.status_code == 200
    texts = [str(m) for m in response.context["messages"]]
    shown = [m for m in texts if SECRET.search(m)]
    assert len(shown) == 1, texts
    assert "copy it now, it will not be shown again" in shown[0].lower()
    secret = SECRET.search(shown[0]).group()  # type: ignore[union-attr]
    return ApiKey.objects.get(name=name), secret


def test_apikey_add_form_has_team_and_name_only(admin_client: Client) -> None:
    response = admin_client.get(url("apikey_add"))
    assert response.status_code == 200
    assert set(response.context["adminform"].form.fields) == {"team", "name", "may_charge_budgets"}


def test_apikey_created_in_admin_shows_secret_once_and_stores_hash(
    admin_client: Client, team: Team
) -> None:
    key, secret = create_key_in_admin(admin_client, team)

    assert key.team == team
    assert secret.startswith(key.prefix)
    assert key.hashed_key == hash_secret(secret)
    row = ApiKey.objects.filter(pk=key.pk).values().get()
    assert not [column for column, value in row.items() if secret in str(value)]
    assert ApiKey.objects.get_from_secret(secret) == key
    assert ApiKey.objects.get_from_secret(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None

    # Not shown again, and the hash is never shown.
    for page in (url("apikey_changelist"), url("apikey_change", key.pk)):
        response = admin_client.get(page)
        content = response.content.decode()
        assert response.status_code == 200
        assert secret not in content
        assert key.hashed_key not in content
        assert not [m for m in get_messages(response.wsgi_request) if SECRET.search(str(m))]
    assert key.prefix in admin_client.get(url("apikey_changelist")).content.decode()


def test_apikey_change_only_renames(admin_client: Client, team: Team) -> None:
    key, _ = ApiKey.objects.create_key(team=team, name="old")
    other = Team.objects.create(name="Other", slug="other")
    response = admin_client.post(url("apikey_change", key.pk), {"name": "new", "team": other.pk})
    assert response.status_code == 302
    key.refresh_from_db()
    assert (key.name, key.team) == ("new", team)


def test_revoke_action(admin_client: Client, team: Team) -> None:
    (k1, s1), (k2, s2), (k3, s3) = (
        ApiKey.objects.create_key(team=team, name=f"k{i}") for i in range(3)
    )
    earlier = timezone.now() - dt.timedelta(days=1)
    ApiKey.objects.filter(pk=k3.pk).update(revoked_at=earlier)
    assert ApiKey.objects.get_from_secret(s1) == k1  # found, and kept by this process

    response = admin_client.post(
        url("apikey_changelist"),
        {"action": "revoke_keys", "_selected_action": [k1.pk, k3.pk]},
        follow=True,
    )

    assert "Revoked 1 API key." in [str(m) for m in response.context["messages"]]
    for key in (k1, k2, k3):
        key.refresh_from_db()
    assert k1.revoked_at is not None
    assert k2.revoked_at is None
    assert k3.revoked_at == earlier  # already revoked: untouched
    assert ApiKey.objects.get_from_secret(s1) is None
    assert ApiKey.objects.get_from_secret(s2) == k2
    assert ApiKey.objects.get_from_secret(s3) is None


# -- teams, prices, budgets ----------------------------------------------------------------


def test_team_with_membership_inline(admin_client: Client) -> None:
    member = get_user_model().objects.create_user("bob", email="bob@example.com")
    response = admin_client.post(
        url("team_add"),
        {
            "name": "Research",
            "slug": "research",
            "memberships-TOTAL_FORMS": "1",
            "memberships-INITIAL_FORMS": "0",
            "memberships-MIN_NUM_FORMS": "0",
            "memberships-MAX_NUM_FORMS": "1000",
            "memberships-0-user": str(member.pk),
            "memberships-0-role": "admin",
            "budgets-TOTAL_FORMS": "1",
            "budgets-INITIAL_FORMS": "0",
            "budgets-MIN_NUM_FORMS": "0",
            "budgets-MAX_NUM_FORMS": "1000",
            "budgets-0-feature": "",
            "budgets-0-period": "day",
            "budgets-0-limit_usd": "2.50",
            "budgets-0-alert_threshold_percent": "80",
            "budgets-0-action": "block",
            "budgets-0-webhook_url": "",
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    team = Team.objects.get(slug="research")
    membership = TeamMembership.objects.get(team=team)
    assert (membership.user, membership.role) == (member, "admin")
    budget = Budget.objects.get(team=team)
    assert (budget.period, budget.limit_usd) == ("day", Decimal("2.50"))
    response = admin_client.get(url("team_changelist"))
    assert listed(response)[0].pk == team.pk
    page = admin_client.get(url("team_change", team.pk))
    assert page.status_code == 200
    assert "spent this window" in page.content.decode().lower()


def test_budget_state_alerts_and_bad_input_in_admin(admin_client: Client) -> None:
    from fluxgate_django.models import BudgetAlert, SpendCounter

    team = Team.objects.create(name="Ops", slug="ops")
    budget = Budget.objects.create(team=team, period="month", limit_usd=Decimal("10"))
    counter = budget.counters.create(
        window_start=window_start("month"),
        limit_units=100_000_000_000,
        blocking=True,
        spent_units=85_000_000_000,
        reserved_units=1_000_000_000,
    )
    assert isinstance(counter, SpendCounter)
    BudgetAlert.objects.create(
        budget=budget,
        window_start=counter.window_start,
        threshold_percent=80,
        spent_usd=Decimal("8.5"),
        limit_usd=Decimal("10"),
    )
    page = admin_client.get(url("budget_changelist")).content.decode()
    assert "$8.5000" in page and "$0.1000" in page and "85.0%" in page
    alerts = admin_client.get(url("budgetalert_changelist"))
    assert alerts.status_code == 200 and "80" in alerts.content.decode()
    assert admin_client.get(url("budgetalert_add")).status_code == 403
    for field, value, message in [
        ("limit_usd", "-1", "greater than or equal to"),
        ("limit_usd", "0", "greater than or equal to"),
        ("alert_threshold_percent", "101", "less than or equal to 100"),
        ("alert_threshold_percent", "0", "greater than or equal to 1"),
        ("period", "week", "not one of the available choices"),
    ]:
        data = {
            "team": str(team.pk),
            "feature": "",
            "period": "day",
            "limit_usd": "5",
            "alert_threshold_percent": "80",
            "action": "block",
            "webhook_url": "",
            field: value,
        }
        response = admin_client.post(url("budget_add"), data)
        assert response.status_code == 200, field
        errors = response.context["adminform"].form.errors
        assert message in " ".join(errors[field]), (field, errors)
    assert Budget.objects.count() == 1


@pytest.fixture
def fresh_prices() -> Any:
    # post_save updates this process's price book at once; a rolled-back test row must not
    # stay in it for the next test.
    price_book.reset()
    yield
    price_book.reset()


def test_model_price_added_in_admin_prices_the_next_call(
    admin_client: Client, openai_client: Any, fake: FakeProvider, fresh_prices: None
) -> None:
    model = "acme-finetune-1"
    client = track_openai(openai_client)
    reply = FakeReply(input_tokens=1000, cached_tokens=200, output_tokens=500)
    messages = [{"role": "user", "content": "hi"}]

    fake.enqueue(reply)
    before = client.chat.completions.create(model=model, messages=messages)
    assert before.fluxgate.cost is None
    assert before.fluxgate.cost_source == "unknown"

    response = admin_client.post(
        url("modelprice_add"),
        {
            "provider": "openai",
            "model": model,
            "note": "negotiated",
            "input_per_mtok": "2.50",
            "output_per_mtok": "10",
            "cache_read_per_mtok": "1.25",
            "cache_write_per_mtok": "",
        },
    )
    assert response.status_code == 302
    assert ModelPrice.objects.filter(model=model).exists()

    fake.enqueue(reply)
    after = client.chat.completions.create(model=model, messages=messages)
    # 800 uncached input + 200 cached input + 500 output tokens, per million
    mtok = Decimal(1_000_000)
    expected = 800 * Decimal("2.50") / mtok + 200 * Decimal("1.25") / mtok + 500 * 10 / mtok
    assert expected == Decimal("0.00725")
    assert after.fluxgate.cost == expected
    assert Event.objects.get(tracking_id=after.fluxgate.tracking_id).cost_usd == expected
    assert listed(admin_client.get(url("modelprice_changelist")))[0].model == model


def test_budget_admin(admin_client: Client, team: Team) -> None:
    response = admin_client.post(
        url("budget_add"),
        {
            "team": team.pk,
            "feature": "chat",
            "period": "month",
            "limit_usd": "100",
            "alert_threshold_percent": "80",
            "action": "block",
            "webhook_url": "",
        },
    )
    assert response.status_code == 302
    budget = Budget.objects.get()
    assert (budget.team, budget.limit_usd) == (team, Decimal("100"))
    response = admin_client.post(
        url("budget_add"),
        {"team": team.pk, "period": "month", "limit_usd": "0", "alert_threshold_percent": "80"},
    )
    assert response.status_code == 200
    assert "limit_usd" in response.context["adminform"].form.errors
    assert listed(admin_client.get(url("budget_changelist"))) == [budget]


@pytest.mark.parametrize(
    "name", ["event", "team", "apikey", "modelprice", "budget"], ids=lambda n: n
)
def test_changelists_load_empty(admin_client: Client, name: str) -> None:
    assert admin_client.get(url(f"{name}_changelist")).status_code == 200
