"""FluxGate on a database of its own: every read and write follows ``DATABASE_ROUTERS``.

A router (``tests/routers.py``) sends every FluxGate model to the ``"fluxgate"`` alias
(a second SQLite file, or a second PostgreSQL test database). Tracked calls through real
SDK clients, recorded by the sync and the thread recorder, budgets, quarantine, the
ingest API and the reports must all use that database: nothing in ``"default"``,
nothing spooled — and, while FluxGate works, no connection to ``"default"`` opened at all
(``connection_created``, in every thread).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import threading
from decimal import Decimal

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.db import router
from django.db.backends.signals import connection_created
from django.test import override_settings
from django.urls import reverse

import fluxgate_django
from fluxgate_django import BudgetExceeded, ledger, teams, track_openai, tracking_context
from fluxgate_django import counters as fluxgate_counters
from fluxgate_django.alerts import wait_for_notifications
from fluxgate_django.context import TrackingContext
from fluxgate_django.models import (
    ApiKey,
    Budget,
    BudgetAlert,
    DeadLetter,
    EndUserUsageRollup,
    Event,
    SpendAnomaly,
    SpendCounter,
    Team,
    UsageRollup,
    to_units,
)
from fluxgate_django.pipeline import make_record, price_record
from fluxgate_django.recording import spool, write_events
from fluxgate_django.recording.sql import SMALL_BATCH
from fluxgate_django.records import CallInfo, Usage
from fluxgate_django.reports import queries
from fluxgate_django.reports.rollups import rebuild_rollups, rollup_rows
from fluxgate_django.runaway import record_spend
from fluxgate_django.testing import FakeReply
from tests.api_helpers import API, event_payload, key_client, post_json
from tests.helpers import fluxgate_overrides
from tests.routers import FLUXGATE_DB, ROUTERS
from tests.test_runaway import RUNAWAY

pytestmark = [
    # Real commits on both databases: the thread recorder's writer, notification threads.
    pytest.mark.django_db(transaction=True, databases=["default", FLUXGATE_DB]),
]

MSGS = [{"role": "user", "content": "Plan the next step of the agent loop."}]
# gpt-4o: $2.50 / MTok in, $10 / MTok out. 1000 in + 100 out = $0.0035 a call.
CALL = FakeReply(input_tokens=1000, output_tokens=100)
CALL_COST = Decimal("0.0035")
#: A record made here (``_record``): gpt-4o, 1000 in + 500 out, $0.0075.
COST_UNITS = to_units(Decimal("0.0075"))

#: The recorders, with nothing flushed before the test asks.
RECORDERS = {
    "sync": {"RECORDER": "sync"},
    "thread": {"RECORDER": "thread", "FLUSH_INTERVAL": 60, "BATCH_SIZE": 1000},
}

#: Every FluxGate table a test here may write to.
FLUXGATE_MODELS = (
    Event,
    Team,
    Budget,
    SpendCounter,
    BudgetAlert,
    SpendAnomaly,
    DeadLetter,
    UsageRollup,
    EndUserUsageRollup,
)


@pytest.fixture(autouse=True)
def fluxgate_database(spool_dir):
    """FluxGate's models on the ``"fluxgate"`` database for the test.

    Django's router reads ``DATABASE_ROUTERS`` once (``ConnectionRouter.routers`` is a
    cached property); ``django.test.signals.clear_routers_cache`` resets it when
    ``override_settings`` changes the setting, which the first assertion checks.
    FluxGate's own caches hold ids of rows of the database they were read from (teams,
    budgets, spend counters), so they are emptied on the way in and out; the recorder is
    made anew (``fluxgate_overrides``) under the router.
    """
    assert router.db_for_write(Event) == "default"
    with override_settings(DATABASE_ROUTERS=ROUTERS):
        assert router.db_for_write(Event) == router.db_for_read(Event) == FLUXGATE_DB
        teams.forget()
        ledger.clear_cache()
        try:
            with fluxgate_overrides():
                yield spool_dir
            wait_for_notifications()
        finally:
            teams.forget()
            ledger.clear_cache()
    assert router.db_for_write(Event) == "default"


class Opened(list):
    """``(alias, thread name)`` of each database connection opened, in any thread."""

    def aliases(self) -> set[str]:
        return {alias for alias, _thread in self}


@pytest.fixture
def opened():
    """The connections opened meanwhile (:class:`Opened`)."""
    found = Opened()
    lock = threading.Lock()

    def note(sender, connection, **kwargs):
        with lock:
            found.append((connection.alias, threading.current_thread().name))

    connection_created.connect(note, weak=False)
    yield found
    connection_created.disconnect(note)


@pytest.fixture
def team():
    return Team.objects.create(name="Search", slug="search")


def only_on_fluxgates_database() -> None:
    """No FluxGate row in the default database, nothing spooled."""
    for model in FLUXGATE_MODELS:
        assert not model._default_manager.using("default").exists(), model.__name__
    assert not spool.has_pending()
    assert spool.pending_events() == 0


def stored(model=Event):
    return model._default_manager.using(FLUXGATE_DB)


def test_the_router_sends_fluxgate_and_only_fluxgate_to_its_database(team):
    from django.contrib.auth import get_user_model

    assert stored(Team).get() == team
    assert router.db_for_write(get_user_model()) == "default"
    assert team._state.db == FLUXGATE_DB
    only_on_fluxgates_database()


def test_a_router_splitting_fluxgates_models_is_a_system_error():
    """Events, spend counters and rollups are written in one transaction, so they must
    share a database: a router that splits them fails ``manage.py check``."""

    class Split:
        def db_for_write(self, model, **hints):
            return "default" if model is SpendCounter else None

    assert not [e for e in run_checks() if e.id == "fluxgate.E011"]
    with override_settings(DATABASE_ROUTERS=[Split(), *ROUTERS]):
        errors = [e for e in run_checks() if e.id == "fluxgate.E011"]
    assert len(errors) == 1
    assert "SpendCounter" in errors[0].msg and FLUXGATE_DB in errors[0].msg


@pytest.mark.parametrize("recorder", ["sync", "sync-on-an-event-loop", "thread"])
def test_tracked_calls_are_stored_on_fluxgates_database(
    recorder, openai_client, async_openai_client, fake, team, opened
):
    fake.default_reply = CALL
    results = []
    with fluxgate_overrides(**RECORDERS[recorder.partition("-")[0]]):
        if recorder == "sync-on-an-event-loop":
            client = track_openai(async_openai_client)

            async def calls():
                for _ in range(5):
                    resp = await client.chat.completions.create(model="gpt-4o", messages=MSGS)
                    results.append(resp.fluxgate)

            with tracking_context(team="search", feature="chat"):
                asyncio.run(calls())
        else:
            client = track_openai(openai_client)
            with tracking_context(team="search", feature="chat"):
                for _ in range(5):
                    resp = client.chat.completions.create(model="gpt-4o", messages=MSGS)
                    results.append(resp.fluxgate)
        assert fluxgate_django.flush(timeout=10)
    assert "default" not in opened.aliases(), opened  # FluxGate never even connected to it
    events = stored().filter(team=team)
    assert {e.tracking_id for e in events} == {r.tracking_id for r in results}
    assert {(e.status, e.cost_usd) for e in events} == {("SUCCESS", CALL_COST)}
    (rollup,) = stored(UsageRollup).all()
    assert (rollup.team_key, rollup.feature, rollup.requests) == (team.pk, "chat", 5)
    assert rollup.cost_units == to_units(5 * CALL_COST)
    only_on_fluxgates_database()


def test_a_call_of_a_user_of_the_main_database_is_stored_without_a_link_it_cannot_hold(
    openai_client, fake, team, django_user_model
):
    """The user is in ``default``; the events' foreign key to users is checked in
    FluxGate's database, which does not have them: the event is stored there with its
    ``end_user_id`` and no user link — not refused and quarantined."""
    user = django_user_model.objects.create_user("alice", "alice@example.com", "pw")
    assert user._state.db == "default"
    client = track_openai(openai_client)
    with tracking_context(user=user, team="search", feature="chat"):
        result = client.chat.completions.create(model="gpt-4o", messages=MSGS).fluxgate
    event = stored().get(tracking_id=result.tracking_id)
    assert (event.user_id, event.end_user_id, event.team_id) == (None, str(user.pk), team.pk)
    assert not stored(DeadLetter).exists()
    only_on_fluxgates_database()


@pytest.mark.parametrize("recorder", list(RECORDERS))
def test_a_blocking_budget_on_fluxgates_database_refuses_at_its_limit(
    recorder, openai_client, fake, team, opened
):
    budget = Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.02"))
    fake.default_reply = CALL
    client = track_openai(openai_client)
    calls = 0
    with fluxgate_overrides(**RECORDERS[recorder]):
        with tracking_context(team="search", feature="agent"), pytest.raises(BudgetExceeded):
            for _ in range(100):  # a runaway agent loop
                client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
                calls += 1
        assert fluxgate_django.flush(timeout=10)
    wait_for_notifications()
    assert "default" not in opened.aliases(), opened
    assert fake.request_count == calls  # the refused call never reached the provider
    assert 0 < calls < 10
    counter = stored(SpendCounter).get(budget=budget)
    events = stored().filter(team=team, status="SUCCESS")
    assert counter.spent == events.total_cost() == calls * CALL_COST
    assert counter.reserved_units == 0
    assert stored().filter(team=team, status="BUDGET_EXCEEDED").count() == 1
    assert stored(BudgetAlert).filter(budget=budget, threshold_percent=100).exists()
    only_on_fluxgates_database()


def test_reservations_the_call_could_not_settle_are_settled_by_the_writer(
    openai_client, fake, team, monkeypatch
):
    """A reservation not settled at the end of its call (the database was unreachable
    then) is settled by the write that stores its event, in the same transaction — on
    FluxGate's database, with the events."""
    budget = Budget.objects.create(team=team, period="day", limit_usd=Decimal("1"))
    monkeypatch.setattr(ledger.settler, "settle", lambda record: None)
    fake.default_reply = CALL
    client = track_openai(openai_client)
    with fluxgate_overrides(**RECORDERS["thread"]), tracking_context(team="search"):
        for _ in range(3):
            client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
        counter = stored(SpendCounter).get(budget=budget)
        assert (counter.spent, counter.reserved_units > 0) == (0, True)
        assert fluxgate_django.flush(timeout=10)
    counter.refresh_from_db()
    assert (counter.spent, counter.reserved_units) == (3 * CALL_COST, 0)
    assert stored().filter(team=team).total_cost() == 3 * CALL_COST
    only_on_fluxgates_database()


def test_ingested_events_are_deduplicated_stored_and_charged_on_fluxgates_database(team):
    budget = Budget.objects.create(team=team, period="day", limit_usd=Decimal("100"))
    _key, secret = ApiKey.objects.create_key(team=team, name="ingest")
    api = key_client(secret)
    events = [event_payload(feature="batch-job") for _ in range(4)]
    first = post_json(api, f"{API}events/", {"events": events}).json()
    again = post_json(api, f"{API}events/", {"events": [events[0], event_payload()]}).json()
    assert (first["accepted"], again["accepted"], again["duplicates"]) == (4, 1, 1)
    assert stored().filter(team=team).count() == 5
    # Charged by the writer: 1000 in + 500 out (the payload's), $0.0075 an event.
    assert stored(SpendCounter).get(budget=budget).spent_units == 5 * COST_UNITS
    assert stored(ApiKey).get().last_used_at is not None
    only_on_fluxgates_database()


def _record(team, **fields):
    info = CallInfo(provider="openai", operation="chat", requested_model="gpt-4o", model="gpt-4o")
    ctx = TrackingContext(team=team)
    return price_record(make_record(info, Usage(1000, 500), ctx, latency_ms=12.5, **fields))


def _reserved_record(team):
    """The record of a call of ``team`` that reserved an estimate on its budgets (as the
    budget guard does), not settled yet."""
    counters = ledger.counter_ids(ledger.applicable_budgets(team.pk, ""))
    estimate = to_units(Decimal("0.01"))
    assert fluxgate_counters.reserve(counters, estimate) == (set(counters), estimate)
    reservation = {"counters": counters, "estimate_units": estimate}
    return _record(team.slug, budget_reservation=reservation)


def test_a_refused_record_is_quarantined_on_fluxgates_database(team):
    budget = Budget.objects.create(team=team, period="day", limit_usd=Decimal("100"))
    records = [_reserved_record(team) for _ in range(6)]
    # JSON can't encode a set: refused before any database sees it.
    records[2] = dataclasses.replace(records[2], metadata={"ids": {1, 2}})
    assert write_events(records) == 6
    letter = stored(DeadLetter).get()
    assert letter.tracking_id == records[2].tracking_id
    assert stored().count() == 5
    counter = stored(SpendCounter).get(budget=budget)
    assert (counter.spent_units, counter.reserved_units) == (5 * COST_UNITS, 0)
    only_on_fluxgates_database()


def test_a_big_batch_is_written_and_rolled_up_on_fluxgates_database(team, opened):
    """More than SMALL_BATCH events: on PostgreSQL ``COPY`` into the staging table of the
    writer's connection, summed into the rollups from there."""
    records = [_record("search") for _ in range(SMALL_BATCH + 70)]
    assert write_events(records) == len(records)
    assert "default" not in opened.aliases(), opened
    assert stored().filter(team=team).count() == len(records)
    (rollup,) = stored(UsageRollup).all()
    assert (rollup.requests, rollup.cost_units) == (len(records), len(records) * COST_UNITS)
    only_on_fluxgates_database()


def test_spooled_events_are_replayed_into_fluxgates_database(team, capsys):
    """Events spooled with their reservations unsettled (an outage at the end of their
    calls) are written and settled on FluxGate's database by a replay."""
    budget = Budget.objects.create(team=team, period="day", limit_usd=Decimal("100"))
    records = [_reserved_record(team) for _ in range(4)]
    assert spool.append(records) == 4
    call_command("fluxgate_replay_spool")
    assert "4 events written" in capsys.readouterr().out
    assert stored().filter(team=team).count() == 4
    counter = stored(SpendCounter).get(budget=budget)
    assert (counter.spent_units, counter.reserved_units) == (4 * COST_UNITS, 0)
    only_on_fluxgates_database()


def test_the_celery_task_writes_on_fluxgates_database(team, opened):
    pytest.importorskip("celery")
    from fluxgate_django.recording.celery import pack_payload
    from fluxgate_django.tasks import record_events

    records = [_record("search") for _ in range(3)]
    assert record_events(pack_payload(records)) == 3
    assert "default" not in opened.aliases(), opened
    assert stored().filter(team=team).count() == 3
    only_on_fluxgates_database()


def test_a_runaway_is_stored_on_fluxgates_database(team, opened):
    with fluxgate_overrides(RUNAWAY_DETECTION=RUNAWAY):
        record_spend({(team.pk, "chat"): to_units(Decimal("5"))})
    wait_for_notifications()
    assert "default" not in opened.aliases(), opened
    assert {a.feature for a in stored(SpendAnomaly).filter(team=team)} == {"", "chat"}
    only_on_fluxgates_database()


def test_reports_and_rebuilds_read_fluxgates_database(openai_client, fake, team, admin_client):
    fake.default_reply = CALL
    client = track_openai(openai_client)
    for feature, calls in (("chat", 3), ("search", 2)):
        with tracking_context(team="search", feature=feature):
            for _ in range(calls):
                client.chat.completions.create(model="gpt-4o", messages=MSGS)
    today = queries.site_today()
    report = queries.breakdown("feature", today, today)
    assert {(row.key, row.requests, row.cost_usd) for row in report} == {
        ("chat", 3, 3 * CALL_COST),
        ("search", 2, 2 * CALL_COST),
    }
    page = admin_client.get(reverse("admin:fluxgate_report"), {"by": "feature", "format": "csv"})
    assert page.status_code == 200
    assert "chat" in page.content.decode() and "search" in page.content.decode()

    incremental = rollup_rows(UsageRollup), rollup_rows(EndUserUsageRollup)
    assert rebuild_rollups() > 0
    assert (rollup_rows(UsageRollup), rollup_rows(EndUserUsageRollup)) == incremental
    call_command("fluxgate_rebuild_rollups", "--since", (today - dt.timedelta(days=1)).isoformat())
    assert (rollup_rows(UsageRollup), rollup_rows(EndUserUsageRollup)) == incremental
    assert stored(UsageRollup).count() == 2
    only_on_fluxgates_database()
