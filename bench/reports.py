"""Cost report by feature over 30 days, from raw events vs from rollups, on PostgreSQL.

    python bench/reports.py [--events 1000000,10000000] [--days 90] [--repeat 5] [--keep]
                            [--postgres postgres://postgres@127.0.0.1:5432/test]

Creates a scratch database (``fluxgate_bench``, dropped at the end unless ``--keep``),
migrates it, and for each size in ``--events`` (ascending; each size adds events to the
previous one) loads events spread over ``--days`` days with ``COPY``, rebuilds the
rollups with the same SQL as ``manage.py fluxgate_rebuild_rollups``, then times the
breakdown by feature of the last 30 days with p50/p95 latency.

Loading drops the events' secondary indexes and constraints and rebuilds them after
the COPY (the tables end up as migrated). Then:

* raw: one ``GROUP BY feature`` over the events with ``percentile_cont`` (the faster of
  with and without PostgreSQL's JIT);
* rollups: ``fluxgate_django.reports.breakdown("feature", ...)``, the function the admin
  page, the command and the API call.

It prints the median of ``--repeat`` runs of each (after one warm-up run), their ratio,
and checks that both agree (counts and cost exactly, p95 within the histogram's bound).
Target: the rollup report under 200 ms at 10M events, and at least 50x faster than raw.
It also times the body of ``GET fluxgate/metrics`` for the whole site (every day and
group of the rollups; target: under 100 ms at 10M events).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import random
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_NAME = "fluxgate_bench"

#: feature → (share of calls, [(provider, model, input $/Mtok, output $/Mtok, median ms)])
#: A price of None: a self-hosted model without a price (unpriced events).
FEATURES: dict[str, tuple[float, list[tuple[str, str, float | None, float | None, float]]]] = {
    "chat": (0.30, [("openai", "gpt-4o-mini", 0.15, 0.6, 900)]),
    "summarize": (0.12, [("anthropic", "claude-sonnet-4-6", 3.0, 15.0, 2400)]),
    "embeddings-search": (0.15, [("openai", "text-embedding-3-small", 0.02, 0.0, 60)]),
    "code-review": (0.05, [("openai", "o4-mini", 1.1, 4.4, 6000)]),
    "translation": (0.08, [("anthropic", "claude-haiku-4-5", 1.0, 5.0, 1300)]),
    "ticket-triage": (0.06, [("openai", "acme-llama-3.3-70b", None, None, 450)]),
    "ab-test-gpt": (0.04, [("openai", "gpt-4o", 2.5, 10.0, 1400)]),
    "ab-test-claude": (0.04, [("anthropic", "claude-sonnet-4-6", 3.0, 15.0, 1700)]),
    "rag-answer": (
        0.08,
        [("openai", "gpt-4o", 2.5, 10.0, 1600), ("anthropic", "claude-haiku-4-5", 1.0, 5.0, 1100)],
    ),
    "classify": (0.05, [("openai", "gpt-4o-mini", 0.15, 0.6, 350)]),
    "extract": (0.02, [("gemini", "gemini-2.5-flash", 0.3, 2.5, 800)]),
    "": (0.01, [("openai", "gpt-4o-mini", 0.15, 0.6, 700)]),
}
TEAMS = ["search", "support", "growth", "platform", "billing", "mobile", "data", "legal"]
END_USERS = 500


def configure(database_url: str) -> None:
    import dj_database_url
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "fluxgate_django"],
        DATABASES={"default": dj_database_url.parse(database_url, conn_max_age=600)},
        USE_TZ=True,
        TIME_ZONE="UTC",
        FLUXGATE={"RECORDER": "sync", "RUNAWAY_DETECTION": {"enabled": False}},
    )
    django.setup()


def admin_url(url: str, dbname: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


# -- data ----------------------------------------------------------------------------------


def row_pool(rng: random.Random, size: int, team_ids: list[int]) -> list[str]:
    """Tab-separated COPY text of every Event column after ``created_at`` (randomised);
    a row is ``tracking_id \\t created_at \\t <pool entry>``."""
    from fluxgate_django.models import Event

    names = [f.column for f in Event._meta.concrete_fields if not f.primary_key][2:]
    weights = [share for share, _ in FEATURES.values()]
    features = list(FEATURES)
    # End users as they behave: one team each, one to three features they use, and some
    # far busier than others.
    users = [
        (
            f"cust_{n:04d}",
            str(rng.choice(team_ids)),
            list(set(rng.choices(features, weights, k=rng.randint(1, 3)))),
        )
        for n in range(END_USERS)
    ]
    activity = list(itertools.accumulate(1 / (rank + 1) ** 0.7 for rank in range(END_USERS)))
    pool = []
    for _ in range(size):
        end_user, team_id, their_features = rng.choices(users, cum_weights=activity)[0]
        feature = rng.choice(their_features)
        provider, model, price_in, price_out, median = rng.choice(FEATURES[feature][1])
        roll = rng.random()
        status = (
            "ERROR"
            if roll < 0.025
            else "MALFORMED_REQUEST"
            if roll < 0.03
            else "BUDGET_EXCEEDED"
            if roll < 0.035
            else "MAX_TOKENS"
            if roll < 0.045
            else "SUCCESS"
        )
        cache_hit = status == "SUCCESS" and rng.random() < 0.05
        input_tokens = 0 if cache_hit else int(rng.lognormvariate(7, 0.8))
        output_tokens = 0 if cache_hit or "embedding" in model else int(rng.lognormvariate(5, 0.7))
        cache_read = input_tokens // 2 if rng.random() < 0.2 else 0
        latency = 2.0 + rng.random() if cache_hit else rng.lognormvariate(0, 0.45) * median
        cost: str | None
        saved: str | None = None
        if status == "BUDGET_EXCEEDED":
            cost, source, latency, input_tokens, output_tokens = "0", "not-sent", 0.0, 0, 0
        elif status in ("ERROR", "MALFORMED_REQUEST"):
            cost, source, input_tokens, output_tokens, cache_read = None, "not-billed", 0, 0, 0
        elif cache_hit:
            cost, source, saved = "0", "cache", f"{rng.uniform(0.0001, 0.01):.10f}"
        elif price_in is None or price_out is None:
            cost, source = None, "unknown"
        else:
            usd = (input_tokens * price_in + output_tokens * price_out) / 1e6
            cost, source = f"{usd:.10f}", "genai-prices"
        values = {
            "team_id": team_id,
            "user_id": None,
            "end_user_id": end_user,
            "feature": feature,
            "provider": provider,
            "model": model,
            "requested_model": model,
            "operation": "embeddings" if "embedding" in model else "chat",
            "status": status,
            "input_tokens": str(input_tokens),
            "output_tokens": str(output_tokens),
            "cache_read_tokens": str(cache_read),
            "cost_usd": cost,
            "cost_source": source,
            "cost_saved_usd": saved,
            "latency_ms": f"{latency:.3f}",
            "streamed": "f",
            "cache_hit": "t" if cache_hit else "f",
            "fallback_attempt": "1" if rng.random() < 0.02 else "0",
            "source": "sdk",
            "metadata": "{}",
            "tags": "[]",
            "content": None,
            "time_to_first_token_ms": None,
            "stream_duration_ms": None,
        }
        numeric = {"reasoning_tokens", "cache_write_tokens"}
        pool.append(
            "\t".join(
                r"\N" if (v := values.get(n, "0" if n in numeric else "")) is None else v
                for n in names
            )
        )
    return pool


def drop_indexes(conn: Any, table: str) -> list[str]:
    """Drop a table's secondary indexes and its unique and foreign key constraints (a bulk
    load is much faster without them); returns the SQL that puts them back."""
    restore = []
    for name, definition in conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = %s::regclass AND contype IN ('u', 'f')",
        [table],
    ).fetchall():
        conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        restore.append(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
    indexes = conn.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "WHERE i.indrelid = %s::regclass AND NOT i.indisprimary",
        [table],
    ).fetchall()
    for name, definition in indexes:
        conn.execute(f"DROP INDEX {name}")
        restore.insert(0, definition)  # indexes first, then the constraints
    return restore


def load_events(conn: Any, count: int, first_id: int, days: int, team_ids: list[int]) -> float:
    """COPY ``count`` events spread over the last ``days`` days (indexes and constraints
    dropped meanwhile and rebuilt after); returns seconds taken."""
    from fluxgate_django.models import Event

    rng = random.Random(first_id)
    pool = row_pool(rng, 200_000, team_ids)
    columns = [f.column for f in Event._meta.concrete_fields if not f.primary_key]
    assert columns[:2] == ["tracking_id", "created_at"], columns[:2]
    today = dt.datetime.now(dt.timezone.utc).date()
    first_day = today - dt.timedelta(days=days - 1)
    day_text = [(first_day + dt.timedelta(days=d)).isoformat() for d in range(days)]
    # Today only up to now, so that no event lies in the future.
    now_s = int(
        (
            dt.datetime.now(dt.timezone.utc)
            - dt.datetime.combine(first_day, dt.time.min, dt.timezone.utc)
        ).total_seconds()
    )
    started = time.perf_counter()
    table = Event._meta.db_table
    restore = drop_indexes(conn, table)
    rand, pool_size = rng.random, len(pool)
    copy_sql = f"COPY fluxgate_django_event ({', '.join(columns)}) FROM STDIN"
    with conn.cursor() as cursor, cursor.copy(copy_sql) as copy:
        chunk: list[str] = []
        for i in range(first_id, first_id + count):
            s = int(rand() * now_s)
            d, s = divmod(s, 86400)
            chunk.append(
                f"00000000-0000-4000-8000-{i:012x}\t{day_text[d]} "
                f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}+00\t"
                f"{pool[int(rand() * pool_size)]}\n"
            )
            if len(chunk) == 50_000:
                copy.write("".join(chunk))
                chunk.clear()
        if chunk:
            copy.write("".join(chunk))
    conn.execute("SET maintenance_work_mem = '512MB'")
    for statement in restore:
        conn.execute(statement)
    conn.commit()
    return time.perf_counter() - started


# -- the two reports -----------------------------------------------------------------------

RAW_SQL = """
SELECT feature,
       COUNT(*) FILTER (WHERE status <> 'BUDGET_EXCEEDED') AS requests,
       COUNT(*) FILTER (WHERE status IN ('ERROR', 'MALFORMED_REQUEST')) AS errors,
       COUNT(*) FILTER (WHERE status <> 'BUDGET_EXCEEDED' AND cost_usd IS NULL
                        AND cost_source <> 'not-billed') AS unpriced,
       SUM(cost_usd) FILTER (WHERE status <> 'BUDGET_EXCEEDED') AS cost,
       SUM(input_tokens) FILTER (WHERE status <> 'BUDGET_EXCEEDED') AS input_tokens,
       SUM(output_tokens) FILTER (WHERE status <> 'BUDGET_EXCEEDED') AS output_tokens,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)
           FILTER (WHERE status <> 'BUDGET_EXCEEDED') AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms)
           FILTER (WHERE status <> 'BUDGET_EXCEEDED') AS p95
  FROM fluxgate_django_event
 WHERE created_at >= %s AND created_at < %s
 GROUP BY feature
 ORDER BY cost DESC NULLS LAST
"""


def timed(func: Any, repeat: int) -> tuple[float, Any]:
    """(median ms of ``repeat`` runs after a warm-up, last result)."""
    result = func()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = func()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), result


def measure(repeat: int) -> dict[str, Any]:
    from django.db import connection, transaction

    from fluxgate_django.reports import breakdown, last_days
    from fluxgate_django.reports.histogram import MAX_RELATIVE_ERROR
    from fluxgate_django.reports.rollups import day_start

    start, end = last_days(30)
    window = (day_start(start), day_start(end + dt.timedelta(days=1)))

    def raw(jit: bool = True) -> list[tuple[Any, ...]]:
        with transaction.atomic(), connection.cursor() as cursor:
            if not jit:
                cursor.execute("SET LOCAL jit = off")
            cursor.execute(RAW_SQL, window)
            return cursor.fetchall()

    def rollup() -> Any:
        return breakdown("feature", start, end)

    # The raw query at its best: with PostgreSQL's default JIT or without, whichever wins.
    raw_ms, raw_rows = min(timed(raw, repeat), timed(lambda: raw(jit=False), repeat))
    rollup_ms, report = timed(rollup, repeat)
    # GET fluxgate/metrics' body for the whole site (all days, every group, the budgets).
    from fluxgate_django.prometheus import render

    metrics_ms, exposition = timed(lambda: render(None), repeat)
    # Both must say the same thing.
    rows = {r.key: r for r in report.rows}
    worst = 0.0
    for feature, requests, errors, unpriced, cost, tok_in, tok_out, _p50, p95 in raw_rows:
        row = rows[feature]
        assert (row.requests, row.errors, row.unpriced) == (requests, errors, unpriced), feature
        assert (row.input_tokens, row.output_tokens) == (tok_in, tok_out), feature
        assert (row.cost_usd or Decimal(0)) == (cost or Decimal(0)), (feature, row.cost_usd, cost)
        worst = max(worst, abs(row.p95_latency_ms / p95 - 1))
        assert worst <= MAX_RELATIVE_ERROR, (feature, row.p95_latency_ms, p95)
    return {
        "raw_ms": raw_ms,
        "rollup_ms": rollup_ms,
        "metrics_ms": metrics_ms,
        "metrics_kb": len(exposition) / 1024,
        "groups": len(raw_rows),
        "p95_worst_error": worst,
        "events_in_range": sum(r[1] for r in raw_rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", default="1000000,10000000", help="comma-separated sizes")
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help=f"keep the {DB_NAME} database")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
    )
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.events.split(","))
    if not args.postgres.startswith(("postgres://", "postgresql://")):
        sys.exit("This benchmark needs PostgreSQL (--postgres postgres://...)")
    import psycopg

    run_started = time.perf_counter()
    with psycopg.connect(args.postgres, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB_NAME}")
        admin.execute(f"CREATE DATABASE {DB_NAME}")
    bench_url = admin_url(args.postgres, DB_NAME)
    try:
        configure(bench_url)
        from django.core.management import call_command
        from django.db import connection

        from fluxgate_django.models import Team
        from fluxgate_django.reports.rollups import rebuild_rollups

        call_command("migrate", verbosity=0)
        team_ids = [Team.objects.create(name=s.title(), slug=s).pk for s in TEAMS]
        print(
            f"PostgreSQL {connection.pg_version // 10000}, database {DB_NAME}; "
            f"events over {args.days} days; report: by feature, last 30 days, median of "
            f"{args.repeat}"
        )
        header = (
            f"{'events':>11} {'load s':>7} {'rollup build s':>14} {'rollup rows':>11} "
            f"{'raw ms':>9} {'rollup ms':>9} {'ratio':>7} {'p95 err':>7} {'metrics ms':>10} "
            f"{'metrics KB':>10}"
        )
        print(header)
        loaded = 0
        for size in sizes:
            with psycopg.connect(bench_url) as conn:
                load_s = load_events(conn, size - loaded, loaded, args.days, team_ids)
                conn.autocommit = True
                conn.execute("VACUUM ANALYZE fluxgate_django_event")
            loaded = size
            t0 = time.perf_counter()
            rebuild_rollups()
            build_s = time.perf_counter() - t0
            with connection.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE fluxgate_django_usagerollup")
                cursor.execute("SELECT COUNT(*) FROM fluxgate_django_usagerollup")
                (rollup_rows,) = cursor.fetchone()
            result = measure(args.repeat)
            print(
                f"{size:>11,} {load_s:>7.1f} {build_s:>14.1f} {rollup_rows:>11,} "
                f"{result['raw_ms']:>9.1f} {result['rollup_ms']:>9.1f} "
                f"{result['raw_ms'] / result['rollup_ms']:>6.0f}x "
                f"{result['p95_worst_error']:>6.1%} {result['metrics_ms']:>10.1f} "
                f"{result['metrics_kb']:>10.0f}",
                flush=True,
            )
        connection.close()
    finally:
        if not args.keep:
            from django.db import connections

            connections.close_all()
            with psycopg.connect(args.postgres, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    print(
        f"Total run time {time.perf_counter() - run_started:.0f} s "
        f"(load = COPY of the new events + VACUUM ANALYZE; rollup build = "
        f"fluxgate_rebuild_rollups' SQL over all events)."
    )


if __name__ == "__main__":
    main()
