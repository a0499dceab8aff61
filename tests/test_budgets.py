"""Budgets stop a runaway loop before it spends: tracked clients over HTTP, real database."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import json
import threading
from decimal import Decimal

import pytest
from django.core import mail
from django.core.management import call_command
from django.db import OperationalError
from django.test import override_settings

import fluxgate_django
from fluxgate_django import (
    BudgetExceeded,
    counters,
    ledger,
    periods,
    track_anthropic,
    track_openai,
    tracking_context,
)
from fluxgate_django import budgets as budgets_module
from fluxgate_django.alerts import wait_for_notifications
from fluxgate_django.exceptions import BudgetStoreUnavailable
from fluxgate_django.models import (
    Budget,
    BudgetAlert,
    Event,
    SpendAnomaly,
    SpendCounter,
    Team,
    TeamMembership,
)
from fluxgate_django.signals import budget_threshold_crossed, spend_anomaly_detected
from fluxgate_django.testing import FakeReply
from tests.helpers import fluxgate_overrides

pytestmark = pytest.mark.django_db

MSGS = [{"role": "user", "content": "Plan the next step of the agent loop."}]
# gpt-4o: $2.50 / MTok in, $10 / MTok out. 1000 in + 100 out = $0.0035 a call.
CALL = FakeReply(input_tokens=1000, output_tokens=100)
CALL_COST = Decimal("0.0035")


@pytest.fixture(autouse=True)
def _fresh_budget_cache():
    budgets_module.clear_cache()
    yield
    budgets_module.clear_cache()


@pytest.fixture
def team(django_user_model):
    team = Team.objects.create(name="Search", slug="search")
    admin = django_user_model.objects.create_user("alice", "alice@example.com", "pw")
    TeamMembership.objects.create(user=admin, team=team, role=TeamMembership.Role.ADMIN)
    member = django_user_model.objects.create_user("bob", "bob@example.com", "pw")
    TeamMembership.objects.create(user=member, team=team, role=TeamMembership.Role.MEMBER)
    return team


@pytest.fixture
def client(openai_client):
    return track_openai(openai_client)


def spent(budget: Budget) -> Decimal:
    counter = SpendCounter.objects.get(budget=budget)
    return counter.spent


def test_runaway_loop_stops_at_the_budget_before_spending(client, fake, team):
    budget = Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.02"))
    fake.default_reply = CALL
    calls = 0
    with tracking_context(team="search", feature="agent"), pytest.raises(BudgetExceeded) as info:
        for _ in range(100):  # a runaway agent loop
            client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
            calls += 1
    sent = fake.request_count
    assert sent == calls  # the blocked call never reached the provider
    assert 0 < calls < 10
    exc = info.value
    assert (exc.budget, exc.limit) == (budget, Decimal("0.02"))
    assert exc.spent == calls * CALL_COST
    assert exc.window[0] == dt.date.today()
    # The fake reports 1000 input tokens for a short prompt, more than the estimate from
    # its text: spend may pass the limit, by at most one request's cost, and always
    # equals what the events cost.
    events = Event.objects.filter(team=team, status="SUCCESS")
    assert spent(budget) == events.total_cost() == calls * CALL_COST
    assert spent(budget) <= budget.limit_usd + CALL_COST
    blocked = Event.objects.get(status="BUDGET_EXCEEDED")
    assert blocked.cost_usd == 0 and blocked.feature == "agent" and blocked.team == team
    assert "Budget exceeded" in blocked.error_message
    assert SpendCounter.objects.get(budget=budget).reserved_units == 0


@pytest.mark.django_db(transaction=True)  # notifications are sent from a thread
def test_alert_budgets_never_block_and_alert_once_per_threshold(client, fake, team):
    budget = Budget.objects.create(
        team=team, period="month", limit_usd=Decimal("0.01"), action="alert"
    )
    received = []
    budget_threshold_crossed.connect(
        lambda sender, **kw: received.append(kw["threshold_percent"]), weak=False
    )
    fake.default_reply = CALL
    try:
        with tracking_context(team=team):
            for _ in range(6):  # 6 x $0.0035 = $0.021: well past 80% and 100%
                client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
    finally:
        budget_threshold_crossed.receivers.clear()
    wait_for_notifications()
    assert fake.request_count == 6
    assert spent(budget) == 6 * CALL_COST
    assert sorted(received) == [80, 100]
    alerts = BudgetAlert.objects.filter(budget=budget).order_by("threshold_percent")
    assert [a.threshold_percent for a in alerts] == [80, 100]
    assert all(a.notified_at for a in alerts)
    assert len(mail.outbox) == 2
    assert all(m.to == ["alice@example.com"] for m in mail.outbox)  # team admins only
    subjects = sorted(m.subject for m in mail.outbox)
    assert "Search: 100% of the monthly budget ($0.0105 of $0.01)" in subjects[0]
    assert "Search: 80% of the monthly budget" in subjects[1]


def test_feature_scoped_budget_applies_only_to_its_feature(client, fake, team):
    Budget.objects.create(team=team, feature="chat", period="day", limit_usd=Decimal("0.004"))
    fake.default_reply = CALL
    with tracking_context(team="search", feature="chat"):
        client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
        with pytest.raises(BudgetExceeded):
            client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
    with tracking_context(team="search", feature="summarize"):
        for _ in range(3):
            client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
    # Calls of another team, or with no team, are not limited by it.
    with tracking_context(feature="chat"):
        client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
    assert Event.objects.filter(status="SUCCESS").count() == 5


def test_day_and_month_windows_roll_over_in_the_site_time_zone(client, fake, team, monkeypatch):
    day = Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.004"))
    month = Budget.objects.create(team=team, period="month", limit_usd=Decimal("1"))
    fake.default_reply = CALL
    utc = dt.timezone.utc

    def at(moment):
        monkeypatch.setattr(periods.timezone, "now", lambda: moment)

    with override_settings(TIME_ZONE="America/New_York"), tracking_context(team="search"):
        at(dt.datetime(2026, 3, 31, 3, 30, tzinfo=utc))  # 23:30 on March 30th in New York
        client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
        with pytest.raises(BudgetExceeded):
            client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
        at(dt.datetime(2026, 3, 31, 4, 30, tzinfo=utc))  # 00:30 on March 31st: a new day
        client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
        at(dt.datetime(2026, 4, 1, 4, 30, tzinfo=utc))  # April: a new day and a new month
        client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
    windows = dict(
        SpendCounter.objects.filter(budget=day).values_list("window_start", "spent_units")
    )
    assert sorted(windows) == [dt.date(2026, 3, 30), dt.date(2026, 3, 31), dt.date(2026, 4, 1)]
    month_windows = SpendCounter.objects.filter(budget=month).order_by("window_start")
    assert [(c.window_start, c.spent) for c in month_windows] == [
        (dt.date(2026, 3, 1), 2 * CALL_COST),
        (dt.date(2026, 4, 1), CALL_COST),
    ]


def test_reservation_uses_max_tokens_or_the_models_output_limit(client, fake, team):
    budget = Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.005"))
    # 1000 output tokens at $10/MTok = $0.01 > $0.005: refused before sending.
    with tracking_context(team="search"), pytest.raises(BudgetExceeded, match=r"~\$0\.010"):
        client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=1000)
    # Without max_tokens, gpt-4o's output limit (16,384 tokens: $0.164) is what it may
    # cost, not a small default, even with BUDGET_DEFAULT_OUTPUT_TOKENS set low (that is
    # for models whose limit isn't known).
    with (
        override_settings(
            FLUXGATE={"RECORDER": "sync", "RAISE_ERRORS": True, "BUDGET_DEFAULT_OUTPUT_TOKENS": 200}
        ),
        tracking_context(team="search"),
        pytest.raises(BudgetExceeded, match=r"~\$0\.164"),
    ):
        client.chat.completions.create(model="gpt-4o", messages=MSGS)
    with tracking_context(team="search"):
        client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=200)
    assert fake.request_count == 1
    assert spent(budget) > 0


def test_failed_calls_release_their_reservation(client, fake, team):
    budget = Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.01"))
    fake.enqueue(FakeReply(status=500))
    import openai

    with tracking_context(team="search"), pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
    counter = SpendCounter.objects.get(budget=budget)
    assert (counter.spent_units, counter.reserved_units) == (0, 0)


def test_budget_store_down_blocks_by_default_and_allows_when_fail_open(
    client, fake, team, monkeypatch
):
    Budget.objects.create(team=team, period="day", limit_usd=Decimal("1"))

    def unreachable(ids, units, bound=0):
        raise OperationalError("connection refused")

    monkeypatch.setattr(counters, "reserve", unreachable)
    with tracking_context(team="search"), pytest.raises(BudgetStoreUnavailable, match="FAIL_OPEN"):
        client.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert fake.request_count == 0
    with (
        override_settings(
            FLUXGATE={"RECORDER": "sync", "RAISE_ERRORS": True, "BUDGET_FAIL_OPEN": True}
        ),
        tracking_context(team="search"),
    ):
        resp = client.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert resp.fluxgate.status.value == "SUCCESS"


@pytest.mark.django_db(transaction=True)  # the async reservation runs in a worker thread
def test_anthropic_and_async_clients_are_budgeted(
    anthropic_client, async_openai_client, fake, team
):
    budget = Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.006"))
    claude = track_anthropic(anthropic_client)
    fake.enqueue(FakeReply(input_tokens=100, output_tokens=100))  # $0.0003 + $0.0015
    with tracking_context(team="search"):
        claude.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=MSGS)
    assert spent(budget) == Decimal("0.0018")

    aclient = track_openai(async_openai_client)

    async def loop():
        with tracking_context(team="search"):
            for _ in range(10):
                await aclient.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)

    fake.default_reply = CALL
    with pytest.raises(BudgetExceeded):
        asyncio.run(loop())
    assert fluxgate_django.flush(timeout=10)  # (the events, and settlements under way)
    assert spent(budget) <= budget.limit_usd
    assert spent(budget) == Event.objects.filter(team=team).total_cost()


@pytest.mark.django_db(transaction=True)  # notifications are sent from a thread
def test_webhook_is_called_with_the_alert(client, fake, team):
    """Signed (``X-FluxGate-Signature``), to an internal host only because the site
    allows it (webhooks call public https addresses only: tests/test_webhooks.py)."""
    from fluxgate_django import webhooks

    hits = []
    signed = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            hits.append(json.loads(body))
            signed.append(
                webhooks.verify(body, self.headers["X-FluxGate-Signature"], webhooks.site_secret())
            )
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    internal = {"WEBHOOK_ALLOW_HTTP": True, "WEBHOOK_ALLOWED_HOSTS": ["127.0.0.1"]}
    try:
        with fluxgate_overrides(**internal):
            Budget.objects.create(
                team=team,
                period="day",
                limit_usd=Decimal("0.005"),
                action="alert",
                alert_threshold_percent=50,
                webhook_url=f"http://127.0.0.1:{server.server_port}/hook",
            )
            fake.default_reply = CALL
            with tracking_context(team="search"):
                client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
            wait_for_notifications()
    finally:
        server.shutdown()
    assert len(hits) == 1 and signed == [True]
    assert hits[0]["threshold_percent"] == 50 and hits[0]["team"] == "search"
    assert Decimal(hits[0]["spent_usd"]) == CALL_COST


@pytest.mark.django_db(transaction=True)  # notifications are sent from a thread
def test_runaway_detection_fires_and_can_block(client, fake, team):
    seen = []
    spend_anomaly_detected.connect(lambda sender, **kw: seen.append(kw), weak=False)
    runaway = {
        "enabled": True,
        "window_minutes": 5,
        "baseline_minutes": 60,
        "factor": 5,
        "min_spend_usd": "0.01",
        "block_minutes": 10,
    }
    fake.default_reply = CALL
    settings = {"RECORDER": "sync", "RAISE_ERRORS": True, "RUNAWAY_DETECTION": runaway}
    try:
        with override_settings(FLUXGATE=settings), tracking_context(team="search", feature="agent"):
            with pytest.raises(BudgetExceeded, match="Runaway"):
                for _ in range(50):
                    client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
            # The team's whole spend ran away too, so its other features are held as well
            with tracking_context(feature="chat"), pytest.raises(BudgetExceeded):
                client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
        # ... but another team is not.
        Team.objects.create(name="Growth", slug="growth")
        with override_settings(FLUXGATE=settings), tracking_context(team="growth"):
            client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
    finally:
        spend_anomaly_detected.receivers.clear()
        from django.core.cache import cache

        cache.clear()
    wait_for_notifications()
    anomaly = SpendAnomaly.objects.get(team=team, feature="agent")
    assert anomaly.recent_usd >= Decimal("0.01") and anomaly.blocked_until
    assert sorted(kw["feature"] for kw in seen) == ["", "agent"]  # the team, and its feature
    # $0.01 is reached on the 3rd call; the 4th is refused.
    assert Event.objects.filter(feature="agent", status="SUCCESS").count() == 3
    assert Event.objects.filter(feature="agent", status="BUDGET_EXCEEDED").count() == 1
    assert Event.objects.filter(team__slug="growth", status="SUCCESS").count() == 1


def test_budget_command_prints_every_budget(client, fake, team, capsys):
    Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.02"))
    Budget.objects.create(team=team, feature="chat", period="month", limit_usd=Decimal("5"))
    fake.default_reply = CALL
    with tracking_context(team="search", feature="chat"):
        client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
    call_command("fluxgate_budgets")
    out = capsys.readouterr().out
    assert "search" in out and "chat" in out and "0.0035" in out and "17.5%" in out


def test_unpriced_model_reserves_nothing_but_an_exhausted_budget_still_blocks(client, fake, team):
    budget = Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.004"))
    fake.default_reply = CALL
    with tracking_context(team="search"):
        client.chat.completions.create(model="my-selfhosted-llm", messages=MSGS)
        client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
        with pytest.raises(BudgetExceeded):
            client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
    assert spent(budget) == CALL_COST


def test_reconcile_rebuilds_spend_from_events(client, fake, team, capsys):
    budget = Budget.objects.create(team=team, period="day", limit_usd=Decimal("1"))
    fake.default_reply = CALL
    with tracking_context(team="search"):
        for _ in range(3):
            client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
        # A stream read without usage (include_usage=False: the caller's choice): the
        # budget is charged the reservation's estimate.
        stream = client.chat.completions.create(
            model="gpt-4o",
            messages=MSGS,
            max_tokens=100,
            stream=True,
            stream_options={"include_usage": False},
        )
        list(stream)
    counter = SpendCounter.objects.get(budget=budget)
    charged = Decimal(Event.objects.get(cost_usd__isnull=True).metadata["budget_charged_usd"])
    assert charged > 0 and counter.spent == 3 * CALL_COST + charged
    # A crash lost counter updates, and a killed worker left a reservation behind.
    SpendCounter.objects.filter(pk=counter.pk).update(spent_units=0, reserved_units=12345)
    call_command("fluxgate_budgets", "--reconcile", "--release-reservations")
    counter.refresh_from_db()
    assert counter.spent == 3 * CALL_COST + charged and counter.reserved_units == 0
    assert "Reconciled 1 budgets" in capsys.readouterr().out


@pytest.mark.django_db(transaction=True)
def test_runaway_detection_takes_any_feature_name(client, fake, team):
    runaway = {"enabled": True, "factor": 5, "min_spend_usd": "0.001", "block_minutes": 0}
    settings = {"RECORDER": "sync", "RAISE_ERRORS": True, "RUNAWAY_DETECTION": runaway}
    fake.default_reply = CALL
    feature = "résumé writer: v2 / «beta»\t" + "x" * 80  # not a safe cache key as it is
    with override_settings(FLUXGATE=settings), tracking_context(team="search", feature=feature):
        client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
    wait_for_notifications()
    # Stored as events store it: cut to the column's 100 characters.
    assert SpendAnomaly.objects.filter(team=team, feature=feature[:100]).exists()


@pytest.mark.django_db(transaction=True)  # the thread recorder's writer commits for real
@pytest.mark.parametrize("in_event_loop", [False, True], ids=["sync", "async"])
def test_spend_is_current_at_the_end_of_each_call_whatever_the_recorder(
    openai_client, async_openai_client, fake, team, in_event_loop
):
    """Settlement does not wait for the recorder: with the thread recorder holding every
    event (nothing flushed), each call's real cost is on the counter when the next call
    reserves, and writing the events later does not settle them twice."""
    import fluxgate_django

    budget = Budget.objects.create(team=team, period="day", limit_usd=Decimal("1"))
    fake.default_reply = CALL
    costs = []
    with fluxgate_overrides(RECORDER="thread", FLUSH_INTERVAL=60, BATCH_SIZE=1000):
        if in_event_loop:
            client = track_openai(async_openai_client)

            async def calls():
                with tracking_context(team="search"):
                    for _ in range(3):
                        resp = await client.chat.completions.create(
                            model="gpt-4o", messages=MSGS, max_tokens=100
                        )
                        costs.append(resp.fluxgate.cost)

            asyncio.run(calls())
            ledger.settler.wait()
        else:
            client = track_openai(openai_client)
            with tracking_context(team="search"):
                for _ in range(3):
                    resp = client.chat.completions.create(
                        model="gpt-4o", messages=MSGS, max_tokens=100
                    )
                    costs.append(resp.fluxgate.cost)
                    assert spent(budget) == sum(costs)  # before the event is written
        assert Event.objects.count() == 0  # the recorder has written nothing yet
        counter = budget.counters.get()
        assert (counter.spent, counter.reserved_units) == (3 * CALL_COST, 0)
        assert fluxgate_django.flush(timeout=10)
    counter.refresh_from_db()
    assert (counter.spent, counter.reserved_units) == (3 * CALL_COST, 0)
    assert Event.objects.filter(team=team).total_cost() == 3 * CALL_COST
