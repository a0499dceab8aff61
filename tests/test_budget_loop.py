"""An agent loop calling a model one call after another spends its whole budget before it
is refused, whatever the recorder: each call is settled at its real cost when it ends
(not when its event is written), and reserves only its bound. Real ``openai`` client
against the fake provider; the Celery run needs PostgreSQL and Redis (a real worker)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

import fluxgate_django
from fluxgate_django import BudgetExceeded, tracking_context
from fluxgate_django.models import Budget, Event, SpendCounter, Team
from fluxgate_django.testing import FakeReply
from tests.helpers import fluxgate_overrides
from tests.test_celery_flush import RECORDING, queue, start_worker  # noqa: F401 (fixture)

pytestmark = [pytest.mark.usefixtures("spool_dir"), pytest.mark.django_db(transaction=True)]

LIMIT = Decimal("0.01")
# gpt-4o-mini: 50 input tokens at $0.15/MTok + 30 output at $0.60/MTok.
CALL_COST = Decimal(50) * Decimal("0.15") / 10**6 + Decimal(30) * Decimal("0.60") / 10**6


def run_loop(openai_client: Any, fake: Any) -> tuple[int, SpendCounter]:
    team = Team.objects.create(name="Agents", slug="agents")
    budget = Budget.objects.create(team=team, period="day", limit_usd=LIMIT)
    fake.default_reply = FakeReply(input_tokens=50, output_tokens=30)
    client = fluxgate_django.track_openai(openai_client)
    calls = 0
    with tracking_context(team="agents", feature="agent-loop"):
        for _ in range(2 * int(LIMIT / CALL_COST)):
            try:
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": f"Step {calls}: what next?"}],
                    max_tokens=50,
                )
            except BudgetExceeded:
                break
            calls += 1
    assert fluxgate_django.flush(timeout=30)
    return calls, SpendCounter.objects.get(budget=budget)


def check_used_up(calls: int, counter: SpendCounter) -> None:
    print(f"\n{calls} calls before the refusal; spent ${counter.spent} of ${LIMIT}")
    assert counter.spent <= LIMIT
    assert counter.spent >= Decimal("0.95") * LIMIT  # used, not refused early
    assert counter.reserved_units == 0
    events = Event.objects.filter(team__slug="agents", status="SUCCESS")
    assert events.count() == calls
    assert counter.spent == events.total_cost() == calls * CALL_COST


@pytest.mark.parametrize("recorder", ["thread", "sync"])
def test_a_sequential_loop_spends_its_budget_before_it_is_refused(openai_client, fake, recorder):
    with fluxgate_overrides(RECORDER=recorder, RAISE_ERRORS=True):
        calls, counter = run_loop(openai_client, fake)
    check_used_up(calls, counter)


def test_a_sequential_loop_with_the_celery_recorder_too(
    queue,  # noqa: F811
    openai_client,
    fake,
    fake_provider,
    tmp_path,
):
    name, app = queue
    worker = start_worker(name, app, fake_provider, tmp_path)
    try:
        with fluxgate_overrides(**RECORDING, CELERY_APP=app):
            calls, counter = run_loop(openai_client, fake)
    finally:
        worker.stop()
    check_used_up(calls, counter)
