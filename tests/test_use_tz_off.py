"""A site with ``USE_TZ = False``: budget windows in the server's local time
(``TIME_ZONE``), naive datetimes throughout, and budgets that still block.

The time zone is chosen so that the local date is not the UTC date as the test runs: a
window computed in UTC (or raising on a naive datetime) shows.
"""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from fluxgate_django import BudgetExceeded, ledger, periods, teams, track_openai, tracking_context
from fluxgate_django.models import Budget, Event, SpendCounter, Team
from fluxgate_django.testing import FakeReply

from .helpers import fluxgate_overrides

pytestmark = pytest.mark.django_db

MSGS = [{"role": "user", "content": "Plan the next step of the agent loop."}]
# gpt-4o: $2.50 / MTok in, $10 / MTok out. 1000 in + 100 out = $0.0035 a call.
CALL = FakeReply(input_tokens=1000, output_tokens=100)
CALL_COST = Decimal("0.0035")


def zone_on_another_date() -> str:
    """UTC-12 before 11:00 UTC (its date is yesterday until noon), else UTC+14 (its date
    is tomorrow from 10:00): either way the local date is not the UTC date."""
    hour = dt.datetime.now(dt.timezone.utc).hour
    return "Etc/GMT+12" if hour < 11 else "Etc/GMT-14"


@pytest.fixture
def zone():
    return zone_on_another_date()


@pytest.fixture
def no_tz(zone):
    ledger.clear_cache()
    teams.forget()
    with override_settings(USE_TZ=False, TIME_ZONE=zone):
        yield zone
    ledger.clear_cache()
    teams.forget()


def local_today() -> dt.date:
    return dt.datetime.now().date()  # the process's time zone is TIME_ZONE


def utc_today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


@pytest.fixture
def team():
    return Team.objects.create(name="Search", slug="search")


def run_until_refused(client, fake) -> int:
    fake.default_reply = CALL
    calls = 0
    with tracking_context(team="search", feature="agent"), pytest.raises(BudgetExceeded) as info:
        for _ in range(100):  # a runaway agent loop
            client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
            calls += 1
    assert info.value.window[0] == local_today()
    return calls


@pytest.mark.parametrize("raise_errors", [True, False], ids=["tests", "production"])
def test_a_budget_blocks_at_its_limit_with_use_tz_off(
    no_tz, openai_client, fake, team, raise_errors
):
    budget = Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.02"))
    with fluxgate_overrides(RAISE_ERRORS=raise_errors):
        calls = run_until_refused(track_openai(openai_client), fake)
    assert 0 < calls < 10 and fake.request_count == calls  # the refused call was not sent
    assert local_today() != utc_today()
    counter = SpendCounter.objects.get(budget=budget)
    assert counter.window_start == local_today()  # the server's day, not UTC's
    assert counter.spent == calls * CALL_COST and counter.reserved_units == 0
    events = Event.objects.filter(team=team)
    assert events.filter(status="SUCCESS").total_cost() == calls * CALL_COST
    assert events.filter(status="BUDGET_EXCEEDED").count() == 1
    stamps = list(events.values_list("created_at", flat=True))
    assert all(timezone.is_naive(s) and s.date() == local_today() for s in stamps)


def test_current_counter_and_reconcile_with_use_tz_off(no_tz, openai_client, fake, team):
    day = Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.02"))
    month = Budget.objects.create(team=team, period="month", limit_usd=Decimal("100"))
    assert day.current_counter() is None  # before the first call
    calls = run_until_refused(track_openai(openai_client), fake)
    counter = day.current_counter()
    assert counter is not None and counter.window_start == local_today()
    assert month.current_counter().window_start == local_today().replace(day=1)
    assert month.current_counter().spent == calls * CALL_COST
    # reconcile rebuilds the window's spend from its events, found by naive local bounds
    SpendCounter.objects.filter(budget=day).update(spent_units=0, reserved_units=7)
    rebuilt = ledger.reconcile(day, release_reservations=True)
    assert (rebuilt.spent, rebuilt.reserved_units) == (calls * CALL_COST, 0)
    lower, upper = periods.window_bounds("day", local_today())
    assert timezone.is_naive(lower) and upper - lower == dt.timedelta(days=1)


def test_the_budgets_command_with_use_tz_off(no_tz, openai_client, fake, team):
    Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.02"))
    calls = run_until_refused(track_openai(openai_client), fake)
    out = io.StringIO()
    call_command("fluxgate_budgets", stdout=out)
    row = next(line for line in out.getvalue().splitlines() if line.startswith("search"))
    assert str(local_today()) in row and f"{calls * CALL_COST:.4f}" in row and "block" in row

    SpendCounter.objects.update(spent_units=0)
    out = io.StringIO()
    call_command("fluxgate_budgets", "--reconcile", "--team", "search", stdout=out)
    assert "Reconciled 1 budgets" in out.getvalue()
    assert f"{calls * CALL_COST:.4f}" in out.getvalue()


def test_windows_are_the_sites_not_the_activated_time_zone(zone):
    """With USE_TZ on, a request may activate its user's time zone: every call still
    shares the site's (TIME_ZONE's) windows."""
    with override_settings(USE_TZ=True, TIME_ZONE="UTC"), timezone.override(zone):
        assert periods.window_start("day") == utc_today()
        lower, _ = periods.window_bounds("day", utc_today())
        assert lower.utcoffset() == dt.timedelta(0)
