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
# gpt-4o: 10 input tokens at $2.50/MTok + 50 output at $10/MTok. The call reserves its
# bound (a token per byte of its request's JSON, and max_tokens=50), which covers it.
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
    # The budget was used up, not refused early: what is left is less than what a call
    # reserves (its bound: ~100 input tokens for the request's JSON, 50 output).
    assert LIMIT - counter.spent < 2 * CALL_COST
    assert events.filter(status="BUDGET_EXCEEDED").count() == blocked
    assert fake.request_count == ok  # blocked calls never reached the provider


def _hammer(fake, slug: str, processes: int, threads: int, calls: int) -> list[dict[str, int]]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": (
            f"postgres://{connection.settings_dict['USER']}@{connection.settings_dict['HOST']}:"
            f"{connection.settings_dict['PORT']}/{connection.settings_dict['NAME']}"
        ),
    }
    args = [sys.executable, "-m", "tests.workers.budget_hammer", fake.url, slug]
    procs = [
        subprocess.Popen(
            [*args, str(threads), str(calls)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(processes)
    ]
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        outputs.append(json.loads(out))
    return outputs


@pytest.mark.django_db(transaction=True)
def test_calls_costing_four_times_the_naive_estimate_still_stop_at_the_limit(fake):
    """Real usage 4x what the prompt's characters suggest (and 3x the request's bound:
    usage the request can't show, as a provider's server-side history would add): 2
    processes x 8 threads end at most one call over the limit, spend == the events."""
    postgres_only()
    budgets_module.clear_cache()
    team = Team.objects.create(name="Heavy", slug="heavy")
    limit = Decimal("0.06")
    budget = Budget.objects.create(team=team, period="day", limit_usd=limit)
    # The naive estimate of the hammer's call: 60 characters / 3 = 20 input tokens and its
    # max_tokens=50 output; the fake reports 4 times both.
    # (Slow enough that all 16 calls are in flight at once, near the limit too.)
    fake.default_reply = FakeReply(input_tokens=80, output_tokens=200, delay=0.05)
    call_cost = Decimal(80) * Decimal("2.5") / 10**6 + Decimal(200) * 10 / 10**6

    outputs = _hammer(fake, "heavy", processes=2, threads=8, calls=6)

    ok = sum(o["ok"] for o in outputs)
    assert sum(o["errors"] for o in outputs) == 0
    counter = SpendCounter.objects.get(budget=budget)
    events = Event.objects.filter(team=team)
    print(f"\nsent {ok} calls; spent ${counter.spent} of ${limit} (a call: ${call_cost})")
    assert counter.reserved_units == 0
    assert counter.spent == events.filter(status="SUCCESS").total_cost() == ok * call_cost
    assert counter.spent <= limit + call_cost
    assert counter.spent >= limit - 2 * call_cost  # used, not refused early
    assert sum(o["blocked"] for o in outputs) > 0


@pytest.mark.django_db(transaction=True)
def test_a_process_that_starts_near_the_limit_reserves_what_others_learned(fake):
    """The CI failure this guards against: a process that starts late, with the budget
    nearly used, has learned nothing of its own yet about how far calls run past their
    bound (3x here). Its first 8 concurrent calls used to reserve a third of their cost
    each (spent 114 % of the limit). The counter's ``bound_scale``, learned by the other
    process's settlements, makes them reserve their real cost: at most one call over."""
    postgres_only()
    budgets_module.clear_cache()
    team = Team.objects.create(name="Late", slug="late")
    limit = Decimal("0.06")
    budget = Budget.objects.create(team=team, period="day", limit_usd=limit)
    fake.default_reply = FakeReply(input_tokens=80, output_tokens=200, delay=0.05)
    call_cost = Decimal(80) * Decimal("2.5") / 10**6 + Decimal(200) * 10 / 10**6  # $0.0022

    # One process, one thread: 23 calls in turn ($0.0506; $0.0094 left, ~4 calls).
    (first,) = _hammer(fake, "late", processes=1, threads=1, calls=23)
    assert first == {"ok": 23, "blocked": 0, "errors": 0}
    counter = SpendCounter.objects.get(budget=budget)
    assert counter.bound_scale > 2.5  # learned: these calls cost ~3x their bound
    # A new process: 8 threads at once, 2 calls each.
    (late,) = _hammer(fake, "late", processes=1, threads=8, calls=2)

    counter.refresh_from_db()
    events = Event.objects.filter(team=team)
    print(
        f"\nlate process: {late['ok']} calls, {late['blocked']} refused; "
        f"spent ${counter.spent} of ${limit} (a call: ${call_cost})"
    )
    assert late["errors"] == 0 and late["blocked"] > 0
    assert counter.reserved_units == 0
    assert (
        counter.spent
        == events.filter(status="SUCCESS").total_cost()
        == (23 + late["ok"]) * call_cost
    )
    assert counter.spent <= limit + call_cost
