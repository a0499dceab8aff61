"""A budget added after its team has spent: it starts from the window's spend so far (no
``fluxgate_budgets --reconcile`` needed), raises the thresholds it is already past, and
refuses the next call if that spend is over its limit. Real OpenAI client over HTTP
against the fake provider, real database (SQLite or PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command

from fluxgate_django import BudgetExceeded, budgets, track_openai, tracking_context
from fluxgate_django.alerts import wait_for_notifications
from fluxgate_django.context import current_context
from fluxgate_django.models import Budget, BudgetAlert, Event, SpendCounter, Team
from fluxgate_django.periods import window_start
from fluxgate_django.pipeline import make_record, submit
from fluxgate_django.records import CallInfo, Usage
from fluxgate_django.signals import budget_threshold_crossed
from fluxgate_django.testing import FakeReply

MSGS = [{"role": "user", "content": "Summarise the ticket."}]
# gpt-4o: $2.50 / MTok in, $10 / MTok out. 1000 in + 100 out = $0.0035 a call.
CALL = FakeReply(input_tokens=1000, output_tokens=100)
CALL_COST = Decimal("0.0035")


@pytest.fixture(autouse=True)
def _fresh_budget_cache():
    budgets.clear_cache()
    yield
    budgets.clear_cache()


@pytest.fixture
def team(db):
    return Team.objects.create(name="Support", slug="support")


@pytest.fixture
def client(openai_client, fake):
    fake.default_reply = CALL
    return track_openai(openai_client)


def spend(client, calls: int, **context) -> None:
    with tracking_context(team="support", **context):
        for _ in range(calls):
            client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)


def counter_of(budget: Budget) -> SpendCounter:
    return SpendCounter.objects.get(budget=budget, window_start=window_start(budget.period))


@pytest.fixture
def crossed():
    """The ``budget_threshold_crossed`` signals sent: ``(budget id, threshold)``."""
    seen: list[tuple[int, int]] = []

    def receiver(sender, budget, threshold_percent, **kwargs):
        seen.append((budget.pk, threshold_percent))

    budget_threshold_crossed.connect(receiver, weak=False, dispatch_uid="late-budget-test")
    yield seen
    budget_threshold_crossed.disconnect(dispatch_uid="late-budget-test")


@pytest.mark.django_db(transaction=True)  # the alerts are announced once they commit
def test_a_budget_created_over_its_limit_counts_the_spend_alerts_and_refuses(
    client, fake, team, crossed
):
    spend(client, 4)
    spent = sum(Event.objects.filter(team=team).values_list("cost_usd", flat=True))
    assert spent == 4 * CALL_COST

    budget = Budget.objects.create(team=team, period="month", limit_usd=Decimal("0.01"))

    # Counted at once: no reconcile.
    assert counter_of(budget).spent == spent
    out = StringIO()
    call_command("fluxgate_budgets", "--team", "support", stdout=out)
    assert "0.0140" in out.getvalue() and "140.0%" in out.getvalue()
    # 140 % of the limit: its alert percent and 100 % are raised, once each, and announced.
    alerts = BudgetAlert.objects.filter(budget=budget)
    assert sorted(alerts.values_list("threshold_percent", flat=True)) == [80, 100]
    assert {a.spent_usd for a in alerts} == {spent}
    assert sorted(crossed) == [(budget.pk, 80), (budget.pk, 100)]
    wait_for_notifications()

    # The next call is refused before anything is sent.
    sent = len(fake.requests)
    with pytest.raises(BudgetExceeded):
        spend(client, 1)
    assert len(fake.requests) == sent
    assert Event.objects.filter(team=team, status="BUDGET_EXCEEDED").count() == 1

    # Saving it again (another field edited) raises nothing twice.
    budget.webhook_url = ""
    budget.save()
    assert BudgetAlert.objects.filter(budget=budget).count() == 2
    assert len(crossed) == 2


def test_a_budget_created_near_its_limit_alerts_and_allows_what_fits(client, fake, team):
    spend(client, 3)  # $0.0105
    budget = Budget.objects.create(
        team=team, period="day", limit_usd=Decimal("0.0125"), alert_threshold_percent=80
    )
    assert counter_of(budget).spent == 3 * CALL_COST  # 84 %
    assert list(BudgetAlert.objects.values_list("threshold_percent", flat=True)) == [80]
    # A call whose reservation fits under the limit goes through and is counted ...
    spend(client, 1)
    assert counter_of(budget).spent == 4 * CALL_COST  # 112 %
    assert sorted(BudgetAlert.objects.values_list("threshold_percent", flat=True)) == [80, 100]
    # ... and the one after it is refused.
    sent = len(fake.requests)
    with pytest.raises(BudgetExceeded):
        spend(client, 1)
    assert len(fake.requests) == sent


def test_a_feature_budget_counts_only_its_features_spend(client, team):
    spend(client, 2, feature="triage")
    spend(client, 3, feature="chat")
    triage = Budget.objects.create(team=team, feature="triage", limit_usd=Decimal("1"))
    whole = Budget.objects.create(team=team, limit_usd=Decimal("1"))
    assert counter_of(triage).spent == 2 * CALL_COST
    assert counter_of(whole).spent == 5 * CALL_COST
    assert not BudgetAlert.objects.exists()


def test_spend_before_the_window_is_not_counted(team):
    # Yesterday's calls (recorded through the pipeline with their own time) are not in
    # today's window; this month's are in the month's, unless today is the 1st.
    yesterday = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    info = CallInfo(provider="openai", operation="chat", requested_model="gpt-4o", model="gpt-4o")
    with tracking_context(team="support"):
        for _ in range(2):
            submit(
                make_record(
                    info,
                    Usage(input_tokens=1000, output_tokens=100),
                    current_context(),
                    created_at=yesterday,
                )
            )
    assert Event.objects.filter(team=team).count() == 2
    day = Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.001"))
    assert not SpendCounter.objects.filter(budget=day).exists()  # nothing spent today
    assert not BudgetAlert.objects.filter(budget=day).exists()
    month = Budget.objects.create(team=team, period="month", limit_usd=Decimal("0.001"))
    same_month = window_start("month", yesterday) == window_start("month")
    if same_month:
        assert counter_of(month).spent == 2 * CALL_COST
        assert BudgetAlert.objects.filter(budget=month).count() == 2
    else:
        assert not SpendCounter.objects.filter(budget=month).exists()


def test_lowering_a_limit_below_the_spend_raises_the_alerts(client, team):
    budget = Budget.objects.create(team=team, period="day", limit_usd=Decimal("1"))
    spend(client, 2)
    assert not BudgetAlert.objects.exists()
    budget.limit_usd = Decimal("0.005")  # $0.007 spent: 140 %
    budget.save()
    assert counter_of(budget).limit == Decimal("0.005")
    assert sorted(BudgetAlert.objects.values_list("threshold_percent", flat=True)) == [80, 100]
    with pytest.raises(BudgetExceeded):
        spend(client, 1)


def test_a_budget_whose_period_changes_counts_its_new_windows_spend(client, team):
    """A monthly budget edited to daily starts a window it has no counter of: that
    window's spend so far counts (it used to start at $0)."""
    budget = Budget.objects.create(team=team, period="month", limit_usd=Decimal("1"))
    spend(client, 2)
    assert counter_of(budget).spent == 2 * CALL_COST
    budget.period = "day"
    budget.save()
    assert counter_of(budget).spent == 2 * CALL_COST  # (today's calls: the day's window)
