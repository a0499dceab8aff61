"""A tracked call inside the caller's transaction (``ATOMIC_REQUESTS``, an ``atomic()``
block) on PostgreSQL: its budget statements run on a connection of their own, so

* the team's counter row is not locked until the caller's transaction ends (every other
  call of the team would wait for it: for the whole LLM call, and whatever the view does
  after it);
* the caller's rollback does not undo a settlement whose event is stored all the same
  (spend would no longer be the sum of the events: a budget that leaks).
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest
from django.db import connection, transaction

import fluxgate_django
from fluxgate_django import ledger, track_openai, tracking_context
from fluxgate_django.models import Budget, Event, SpendCounter, Team
from fluxgate_django.testing import FakeReply
from tests.helpers import fluxgate_overrides

pytestmark = [pytest.mark.usefixtures("spool_dir"), pytest.mark.django_db(transaction=True)]

MSGS = [{"role": "user", "content": "hi"}]
# gpt-4o: $2.50 / $10 per MTok; 100 in, 20 out.
CALL_COST = Decimal(100) * Decimal("2.5") / 10**6 + Decimal(20) * 10 / 10**6


@pytest.fixture
def budget(db):
    if connection.vendor != "postgresql":
        pytest.skip(
            "needs PostgreSQL (DATABASE_URL=postgres://...; CI does): SQLite has one writer, "
            "so a caller's transaction holds the whole database anyway"
        )
    ledger.clear_cache()
    team = Team.objects.create(name="Tx", slug="tx")
    return Budget.objects.create(team=team, period="day", limit_usd=Decimal("10"))


@pytest.mark.parametrize("window", ["new", "under way"])
def test_a_call_in_a_transaction_does_not_hold_its_teams_counter(
    budget, fake, openai_client, window
):
    """Another call of the team while the first one (in a transaction) waits for its
    provider: it used to be refused (the window's counter, made in the first caller's
    transaction, could not be seen) or to wait until that transaction ended."""
    fake.on_model("gpt-4o", FakeReply(input_tokens=100, output_tokens=20, delay=1.5))
    fake.on_model("gpt-4o-mini", FakeReply(input_tokens=100, output_tokens=20))
    client = track_openai(openai_client)
    if window == "under way":  # (its counter exists: made by an earlier call)
        with tracking_context(team="tx"):
            client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, max_tokens=50)
    started = threading.Event()
    durations: dict[str, float] = {}

    def in_a_transaction() -> None:
        try:
            with transaction.atomic(), tracking_context(team="tx"):
                started.set()
                client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=50)
                time.sleep(0.5)  # (the view goes on after the call, in its transaction)
        finally:
            connection.close()

    def another_call() -> None:
        started.wait(5)
        time.sleep(0.3)  # (the first call has reserved and is waiting for the provider)
        t0 = time.monotonic()
        try:
            with tracking_context(team="tx"):
                client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, max_tokens=50)
        finally:
            durations["other"] = time.monotonic() - t0
            connection.close()

    threads = [threading.Thread(target=in_a_transaction), threading.Thread(target=another_call)]
    with fluxgate_overrides(RECORDER="thread"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert fluxgate_django.flush(timeout=30)
    print(f"\nthe other call took {durations['other'] * 1000:.0f} ms")
    # Not blocked until the first caller's transaction ended (1.5 s + 0.5 s later).
    assert durations["other"] < 1.0
    counter = SpendCounter.objects.get(budget=budget)
    assert counter.reserved_units == 0
    assert counter.spent == Event.objects.filter(team=budget.team).total_cost()


def test_a_rolled_back_transaction_keeps_the_calls_settlement(budget, fake, openai_client):
    fake.on_model("gpt-4o", FakeReply(input_tokens=100, output_tokens=20))
    client = track_openai(openai_client)
    with fluxgate_overrides(RECORDER="thread"):
        with pytest.raises(RuntimeError), transaction.atomic(), tracking_context(team="tx"):
            client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=50)
            raise RuntimeError("the view fails after its call")
        assert fluxgate_django.flush(timeout=30)
    event = Event.objects.get(team=budget.team)  # the call was billed: its event is stored
    assert event.cost_usd == CALL_COST
    counter = SpendCounter.objects.get(budget=budget)
    assert counter.reserved_units == 0
    assert counter.spent == CALL_COST  # (it was 0 when the rollback undid the settlement)
