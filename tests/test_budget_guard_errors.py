"""The budget guard's own failures follow BUDGET_FAIL_OPEN: refused by default, allowed
with it on, and logged once per cause (not once per call). Real SDK clients over HTTP
against the fake provider, real database."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal

import pytest
from django.db import OperationalError

from fluxgate_django import (
    BudgetExceeded,
    counters,
    guard,
    ledger,
    teams,
    track_openai,
    tracking_context,
)
from fluxgate_django.exceptions import BudgetStoreUnavailable
from fluxgate_django.models import Budget, Event, SpendCounter, Team
from fluxgate_django.testing import FakeReply

from .helpers import fluxgate_overrides

pytestmark = pytest.mark.django_db

PROMPT = "Summarise the quarterly numbers for the board."
MSGS = [{"role": "user", "content": PROMPT}]
BUG = "can't compare offset-naive and offset-aware datetimes"


@pytest.fixture(autouse=True)
def _fresh_guard_state():
    ledger.clear_cache()
    teams.forget()
    guard._logged.clear()
    yield
    ledger.clear_cache()
    teams.forget()
    guard._logged.clear()


@pytest.fixture
def team():
    team = Team.objects.create(name="Search", slug="search")
    Budget.objects.create(team=team, period="day", limit_usd=Decimal("5"))
    return team


@pytest.fixture
def client(openai_client):
    return track_openai(openai_client)


@pytest.fixture
def broken_guard(monkeypatch):
    """The guard fails as it did with USE_TZ off: a TypeError while finding the window."""

    def counter_ids(budgets, now=None):
        raise TypeError(BUG)

    monkeypatch.setattr(ledger, "counter_ids", counter_ids)


def guard_errors(caplog) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "fluxgate.budgets" and r.levelno >= logging.ERROR
    ]


@pytest.mark.parametrize("raise_errors", [True, False], ids=["tests", "production"])
def test_an_internal_error_refuses_the_call_by_default(
    client, fake, team, broken_guard, raise_errors
):
    with (
        fluxgate_overrides(RAISE_ERRORS=raise_errors),
        tracking_context(team="search"),
        pytest.raises(BudgetStoreUnavailable, match="FAIL_OPEN") as info,
    ):
        client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
    assert fake.request_count == 0  # nothing was sent
    assert "internal error (TypeError)" in str(info.value)
    assert isinstance(info.value.__cause__, TypeError)  # the bug is still in plain sight
    assert info.value.team == "search"


@pytest.mark.django_db(transaction=True)  # the async check runs in a worker thread
def test_an_internal_error_refuses_an_async_call_too(async_openai_client, fake, team, broken_guard):
    client = track_openai(async_openai_client)

    async def call():
        with tracking_context(team="search"):
            await client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=10)

    with fluxgate_overrides(RAISE_ERRORS=False), pytest.raises(BudgetStoreUnavailable):
        asyncio.run(call())
    assert fake.request_count == 0


@pytest.mark.parametrize("raise_errors", [True, False], ids=["tests", "production"])
def test_with_fail_open_an_internal_error_lets_the_call_through(
    client, fake, team, broken_guard, raise_errors
):
    fake.default_reply = FakeReply(input_tokens=10, output_tokens=5)
    with (
        fluxgate_overrides(RAISE_ERRORS=raise_errors, BUDGET_FAIL_OPEN=True),
        tracking_context(team="search"),
    ):
        resp = client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
    assert resp.fluxgate.status.value == "SUCCESS"
    assert fake.request_count == 1
    assert Event.objects.get().status == "SUCCESS"


def test_an_internal_error_is_logged_once_per_cause_with_its_cause(
    client, fake, team, broken_guard, caplog, monkeypatch
):
    caplog.set_level(logging.WARNING, logger="fluxgate")
    with fluxgate_overrides(RAISE_ERRORS=False), tracking_context(team="search"):
        for _ in range(5):
            with pytest.raises(BudgetStoreUnavailable):
                client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
    logged = guard_errors(caplog)
    assert len(logged) == 1  # five refused calls, one line
    text = logged[0].getMessage()
    assert f"TypeError: {BUG}" in text and "refused" in text
    assert logged[0].exc_info is not None  # with its traceback
    everything = caplog.text
    assert PROMPT not in everything and "sk-test-key" not in everything

    # Another cause is logged at once; the same one again once its window has passed,
    # with how often it recurred meanwhile.
    def other_bug(budgets, now=None):
        raise ValueError("month out of range")

    monkeypatch.setattr(ledger, "counter_ids", other_bug)
    with fluxgate_overrides(RAISE_ERRORS=False), tracking_context(team="search"):
        for _ in range(3):
            with pytest.raises(BudgetStoreUnavailable):
                client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
    assert len(guard_errors(caplog)) == 2
    assert "ValueError: month out of range" in guard_errors(caplog)[1].getMessage()

    monkeypatch.setattr(guard, "LOG_REPEATS_AFTER", 0.0)
    with (
        fluxgate_overrides(RAISE_ERRORS=False),
        tracking_context(team="search"),
        pytest.raises(BudgetStoreUnavailable),
    ):
        client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
    last = guard_errors(caplog)[-1].getMessage()
    assert len(guard_errors(caplog)) == 3 and "2 more times since last logged" in last
    assert fake.request_count == 0


def test_an_outage_is_logged_once_too(client, fake, team, caplog, monkeypatch):
    def unreachable(ids, units, bound=0):
        raise OperationalError("connection refused")

    monkeypatch.setattr(counters, "reserve", unreachable)
    caplog.set_level(logging.WARNING, logger="fluxgate")
    with fluxgate_overrides(BUDGET_FAIL_OPEN=True), tracking_context(team="search"):
        for _ in range(4):
            client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
    warned = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warned) == 1 and "connection refused" in warned[0].getMessage()
    assert fake.request_count == 4


def test_a_failure_deciding_whether_a_budget_applies_does_not_skip_it(
    client, fake, team, monkeypatch
):
    """``might_apply`` (in memory, before the check) fails: the check still runs."""
    Budget.objects.filter(team=team).update(limit_usd=Decimal("0.000001"))
    SpendCounter.objects.all().delete()
    ledger.clear_cache()

    def cached_team_id(team):
        raise KeyError("team cache corrupted")

    monkeypatch.setattr(teams, "cached_team_id", cached_team_id)
    with (
        fluxgate_overrides(RAISE_ERRORS=False),
        tracking_context(team="search"),
        pytest.raises(BudgetExceeded),
    ):
        client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
    assert fake.request_count == 0


def test_a_failure_while_refusing_a_call_over_its_budget_still_refuses_it(
    client, fake, team, monkeypatch, spool_dir
):
    """The team's budget takes the reservation, the feature's refuses it, and freeing the
    first one fails: the budget said no, so the call is refused all the same. (The
    refusal's event, whose write fails the same way, goes to this test's own spool.)"""
    Budget.objects.create(team=team, feature="agent", period="day", limit_usd=Decimal("0.000001"))

    def settle_counters(changes):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(counters, "settle_counters", settle_counters)
    with (
        fluxgate_overrides(RAISE_ERRORS=False),
        tracking_context(team="search", feature="agent"),
        pytest.raises(BudgetExceeded, match="Budget exceeded for team 'search' feature 'agent'"),
    ):
        client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
    assert fake.request_count == 0
