"""The test project's demo views (the example code users copy) answer a call FluxGate
refuses as such, not with a 500: a budget used up is a 402 with its limit and spend, the
budget store down a 503 with ``Retry-After``. Through Django's test client, the views'
real SDK clients talking HTTP to the fake provider, a real database."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from django.db import OperationalError
from django.test import override_settings

from fluxgate_django import counters
from fluxgate_django.budgets import clear_cache
from fluxgate_django.models import Budget, Event, SpendCounter, Team, TeamMembership
from fluxgate_django.testing import FakeReply

pytestmark = pytest.mark.django_db

TESTPROJECT = Path(__file__).resolve().parent.parent / "testproject"
# gpt-4o-mini: $0.15 / MTok in, $0.60 / MTok out: 10 in + 40,000 out = $0.0240015.
COSTLY = FakeReply(text="A long answer", input_tokens=10, output_tokens=40_000)
COSTLY_USD = Decimal("0.0240015")


@pytest.fixture
def testproject_urls(monkeypatch, fake):
    monkeypatch.syspath_prepend(str(TESTPROJECT))
    providers = {
        "openai": {"api_key": "sk-test", "base_url": fake.openai_base_url, "max_retries": 0},
        "anthropic": {"api_key": "sk-ant-test", "base_url": fake.anthropic_base_url},
    }
    fluxgate = {"RECORDER": "sync", "RAISE_ERRORS": True, "PROVIDERS": providers}
    clear_cache()
    with override_settings(ROOT_URLCONF="testproject.urls", FLUXGATE=fluxgate):
        yield
    clear_cache()


@pytest.fixture
def member(client, django_user_model):
    """A signed-in user of team "support", which has a blocking daily budget of $0.02."""
    team = Team.objects.create(name="Support", slug="support")
    user = django_user_model.objects.create_user("dana", "dana@example.com", "pw")
    TeamMembership.objects.create(user=user, team=team)
    client.force_login(user)
    return Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.02"))


def test_a_used_up_budget_is_a_402_with_its_limit_and_spend(client, fake, testproject_urls, member):
    fake.enqueue(COSTLY)
    first = client.get("/chat/", {"q": "Explain budgets at length."})
    assert first.status_code == 200, first.content
    assert SpendCounter.objects.get(budget=member).spent == COSTLY_USD  # over the $0.02

    refused = client.get("/chat/", {"q": "And once more."})
    assert refused.status_code == 402, refused.content
    body = refused.json()
    assert body["error"] == "budget_exceeded"
    assert "Budget exceeded for team 'support'" in body["detail"]
    assert Decimal(body["limit_usd"]) == Decimal("0.02")
    assert Decimal(body["spent_usd"]) == COSTLY_USD
    assert body["until"]  # when the day's window ends
    assert fake.request_count == 1  # the refused call was never sent
    blocked = Event.objects.get(status="BUDGET_EXCEEDED")
    assert (blocked.feature, blocked.team.slug, blocked.cost_usd) == ("chat", "support", 0)

    # The other view too (Anthropic), under the same team budget.
    summary = client.get("/summarize/", {"text": "A long text."})
    assert summary.status_code == 402, summary.content
    assert summary.json()["error"] == "budget_exceeded"
    assert fake.request_count == 1


def test_the_budget_store_down_is_a_503_with_retry_after(
    client, fake, testproject_urls, member, monkeypatch
):
    def unreachable(ids, units, bound=0):
        raise OperationalError("connection refused")

    monkeypatch.setattr(counters, "reserve", unreachable)  # the budget statement fails
    response = client.get("/chat/")
    assert response.status_code == 503, response.content
    assert int(response.headers["Retry-After"]) > 0
    body = response.json()
    assert body["error"] == "budget_unavailable"
    assert "BUDGET_FAIL_OPEN" in body["detail"]
    assert fake.request_count == 0


def test_a_call_within_the_budget_is_answered_as_before(client, fake, testproject_urls, member):
    fake.enqueue(FakeReply(text="Hi there", input_tokens=12, output_tokens=3))
    response = client.get("/chat/", {"q": "Hello"})
    assert response.status_code == 200, response.content
    assert response.json()["reply"] == "Hi there"
    event = Event.objects.get(tracking_id=response.json()["fluxgate"]["tracking_id"])
    assert event.team.slug == "support" and event.cost_usd > 0
