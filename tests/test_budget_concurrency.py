"""N workers (threads and processes) hammering one small budget on PostgreSQL never
overspend it: the reservation is one conditional UPDATE, serialised by the database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection

from fluxgate_django import budgets as budgets_module
from fluxgate_django.models import Budget, Event, SpendCounter, Team
from fluxgate_django.testing import FakeReply

ROOT = Path(__file__).resolve().parent.parent
# gpt-4o: 10 input tokens at $2.50/MTok + 50 output at $10/MTok. The 60-character prompt
# is estimated at 20 input tokens and max_tokens=50, so each estimate covers its call.
CALL_COST = Decimal("0.000525")
LIMIT = Decimal("0.02")  # room for 38 calls


def postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip(
            "needs PostgreSQL: run with DATABASE_URL=postgres://postgres@127.0.0.1:5432/test "
            "(SQLite serialises all writes, so it can't show concurrent reservations)"
        )


@pytest.mark.django_db(transaction=True)
def test_threads_and_processes_never_overspend_one_budget(fake):
    postgres_only()
    budgets_module.clear_cache()
    team = Team.objects.create(name="Loop", slug="loop")
    budget = Budget.objects.create(team=team, period="day", limit_usd=LIMIT)
    fake.default_reply = FakeReply(input_tokens=10, output_tokens=50, delay=0.002)

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": (
            f"postgres://{connection.settings_dict['USER']}@{connection.settings_dict['HOST']}:"
            f"{connection.settings_dict['PORT']}/{connection.settings_dict['NAME']}"
        ),
    }
    args = [sys.executable, "-m", "tests.workers.budget_hammer", fake.url, "loop"]
    # Two worker processes with 8 threads each, and 16 threads in this process.
    procs = [
        subprocess.Popen([*args, "8", "10"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    local = subprocess.run(
        [*args, "16", "10"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert local.returncode == 0, local.stderr
    outputs = [json.loads(local.stdout)]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        outputs.append(json.loads(out))

    ok = sum(o["ok"] for o in outputs)
    blocked = sum(o["blocked"] for o in outputs)
    assert sum(o["errors"] for o in outputs) == 0
    assert ok + blocked == 320
    counter = SpendCounter.objects.get(budget=budget)
    events = Event.objects.filter(team=team)
    print(f"\nsent {ok} calls, blocked {blocked}; spent ${counter.spent} of ${LIMIT}")
    assert counter.reserved_units == 0  # every reservation was settled or released
    assert counter.spent == events.filter(status="SUCCESS").total_cost() == ok * CALL_COST
    assert counter.spent <= LIMIT + CALL_COST
    assert ok == int(LIMIT / CALL_COST)  # the budget was used up, not refused early
    assert events.filter(status="BUDGET_EXCEEDED").count() == blocked
    assert fake.request_count == ok  # blocked calls never reached the provider
