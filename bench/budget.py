"""Budget reservation + settlement round trip, on PostgreSQL and on SQLite, in one run.

    python bench/budget.py [--seconds 3] [--postgres postgres://postgres@127.0.0.1:5432/test]

For each database (PostgreSQL is skipped with a note when it does not answer) and for 1,
8 and 32 threads, every thread repeats: reserve a call's estimated cost on its team's
budget (``check_budget``), then settle it with the real cost (``BudgetGuard.settle``),
which is what every budgeted LLM call does. It prints the median time of one
reserve+settle pair, pairs per second, and the number of SQL statements a reserve and a
settle each send (the target is one each); then what settling a tracked call's
reservation at the end of the call (``ledger.settler``) adds to the caller.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def configure(database_url: str) -> None:
    import django
    from django.conf import settings

    if database_url.startswith("postgres"):
        import dj_database_url

        db = dj_database_url.parse(database_url, conn_max_age=600)
    else:
        db = {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": database_url.removeprefix("sqlite:///"),
            "OPTIONS": {
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
            },
        }
    settings.configure(
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "fluxgate_django"],
        DATABASES={"default": db},
        USE_TZ=True,
        FLUXGATE={"RECORDER": "sync", "RUNAWAY_DETECTION": {"enabled": False}},
    )
    django.setup()


def measure_threads(pair, threads: int, seconds: float, connection) -> tuple[list[float], float]:
    """Run ``pair`` in ``threads`` threads for ``seconds``: (durations, elapsed)."""
    durations: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker() -> None:
        mine = []
        try:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                pair()
                mine.append(time.perf_counter() - t0)
        finally:
            connection.close()
        with lock:
            durations.extend(mine)

    started = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return durations, time.perf_counter() - started


def end_of_call_settle(ctx, cost: Decimal, seconds: float) -> dict:
    """What a tracked call's end adds to the caller for its budget: the settlement of its
    event's reservation at its real cost (``ledger.settler``), timed alone, per call."""
    from django.db import connection

    from fluxgate_django.budgets import check_budget
    from fluxgate_django.ledger import settler
    from fluxgate_django.pipeline import make_record
    from fluxgate_django.records import CallInfo, Usage

    info = CallInfo(provider="openai", operation="chat", requested_model="gpt-4o", model="gpt-4o")
    times, round_trips = [], []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        guard = check_budget(ctx, "openai", "gpt-4o", input_tokens=20, max_output_tokens=50)
        assert guard is not None
        record = make_record(
            info,
            Usage(input_tokens=10, output_tokens=50),
            ctx,
            cost_usd=cost,
            budget_reservation=guard.as_record_field(),
        )
        t0 = time.perf_counter()
        settler.settle(record)
        times.append(time.perf_counter() - t0)
        assert record.budget_reservation["settled"]
        # The baseline, in turn with it: one round trip to the database (SELECT 1).
        with connection.cursor() as cursor:
            t0 = time.perf_counter()
            cursor.execute("SELECT 1")
            round_trips.append(time.perf_counter() - t0)
    return {
        "median": statistics.median(times) * 1000,
        "p95": pct95(times) * 1000,
        "round_trip": statistics.median(round_trips) * 1000,
    }


def pct95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def run_backend(database_url: str, seconds: float) -> dict:
    """Runs inside a child process: one Django setup per database."""
    configure(database_url)
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from fluxgate_django.budgets import check_budget, clear_cache
    from fluxgate_django.context import TrackingContext
    from fluxgate_django.models import Budget, SpendCounter, Team

    call_command("migrate", verbosity=0)
    team, _ = Team.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    Budget.objects.filter(team=team).delete()
    Budget.objects.create(team=team, period="month", limit_usd=Decimal("1000000"))
    clear_cache()
    ctx = TrackingContext(team="bench", feature="bench")
    cost = Decimal("0.000525")

    def pair() -> None:
        guard = check_budget(ctx, "openai", "gpt-4o", input_tokens=20, max_output_tokens=50)
        assert guard is not None
        guard.settle(cost)

    pair()  # warm the caches (team id, budget list, counter ids)
    with CaptureQueriesContext(connection) as reserve_q:
        guard = check_budget(ctx, "openai", "gpt-4o", input_tokens=20, max_output_tokens=50)
    with CaptureQueriesContext(connection) as settle_q:
        guard.settle(cost)  # type: ignore[union-attr]

    results = {
        "queries": [len(reserve_q), len(settle_q)],
        "threads": {},
        "end_of_call_settle_ms": end_of_call_settle(ctx, cost, seconds),
    }
    for threads in (1, 8, 32):
        durations = measure_threads(pair, threads, seconds, connection)
        results["threads"][threads] = {
            "median_ms": statistics.median(durations[0]) * 1000,
            "per_second": len(durations[0]) / durations[1],
        }
    counter = SpendCounter.objects.get(budget__team=team)
    results["reserved_left"] = counter.reserved_units
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_backend(args.child, args.seconds)))
        return

    sqlite_path = os.path.join(tempfile.mkdtemp(prefix="fluxgate-bench-"), "budget.sqlite3")
    backends = [
        ("PostgreSQL", args.postgres),
        ("SQLite (WAL, synchronous=NORMAL)", f"sqlite:///{sqlite_path}"),
    ]
    python = sys.version.split()[0]
    print(f"reserve + settle pairs, {args.seconds:g} s per thread count, Python {python}")
    for name, url in backends:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", url, "--seconds", str(args.seconds)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
            print(f"{name:<34} skipped: {reason}")
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        reserve_q, settle_q = res["queries"]
        print(f"{name:<34} SQL statements: reserve {reserve_q}, settle {settle_q}")
        for threads, r in res["threads"].items():
            print(
                f"{'':<34} {threads:>2} threads: median {r['median_ms']:6.3f} ms per pair, "
                f"{r['per_second']:8.0f} pairs/s"
            )
        settle = res["end_of_call_settle_ms"]
        print(
            f"{'':<34} a tracked call's end-of-call settlement (the caller's time): "
            f"median {settle['median']:.3f} ms, p95 {settle['p95']:.3f} ms "
            "(target <= 0.3 ms on PostgreSQL)"
        )
        print(
            f"{'':<34} baseline, a SELECT 1 round trip in turn with it: median "
            f"{settle['round_trip']:.3f} ms (the settlement: "
            f"{settle['median'] / settle['round_trip']:.1f}x)"
        )
        if res["reserved_left"]:
            raise SystemExit(f"{name}: {res['reserved_left']} units left reserved")


if __name__ == "__main__":
    main()
