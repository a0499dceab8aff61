"""Events persisted per second through each recorder, against raw ``COPY`` as the ceiling.

    python bench/ingest.py [--events 100000] [--sync-events 2000] [--threads 4]
        [--postgres postgres://postgres@127.0.0.1:5432/postgres]
        [--broker redis://127.0.0.1:6379/15] [--concurrency 1 2] [--batch-size N]
        [--writer-threads N] [--repeat 3] [--server-side-binding] [--profile thread]
        [--only copy sync thread celery]

Creates a PostgreSQL database ``fluxgate_bench_ingest`` (dropped at the end), generates
``--events`` priced ``EventRecord``s up front (no LLM calls: the recorder is what is
measured), and times, on the same rows, with the settings' defaults (``BATCH_SIZE``,
``WRITER_THREADS``; runaway detection on):

* ``copy``: psycopg's ``cursor.copy()`` of the rows into the events table (no rollups,
  no budgets; rows already adapted): the ceiling;
* ``sync``: ``SyncRecorder.record()`` in a loop (``--sync-events`` of them: one
  transaction per event);
* ``thread``: ``--threads`` threads calling ``ThreadRecorder.record()``, then ``flush()``;
* ``celery -cN``: the same through ``CeleryRecorder`` and one real Celery worker with N
  pool processes (``celery -A tests.celery_app worker -c N``; Celery's own default is
  one per CPU), until every row is in the database.

Every recorder run includes the report rollups and runaway-detection counters it keeps.
Tables are emptied between runs; the runs are interleaved ``--repeat`` times and the
median is reported with the range. It prints events/s and the ratio to ``COPY``, and
checks the targets (thread >= 20,000/s and >= 30% of COPY; celery >= 10,000/s), exiting
1 if one is missed. ``--profile thread`` writes a cProfile of one thread-recorder writer
to ``bench/ingest-thread.prof``. ``--server-side-binding`` runs with psycopg's
server-side binding and prepared statements (``DATABASES[...]["OPTIONS"]``), here and in
the worker.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_NAME = "fluxgate_bench_ingest"
TARGETS = {"thread": (20_000, 0.30), "celery": (10_000, None)}
#: Django's psycopg default is client-side binding without prepared statements: every
#: row of an executemany (the report rollups' upserts) is parsed and planned anew.
SERVER_SIDE_BINDING = {"server_side_binding": True, "prepare_threshold": 2}


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def recreate_database(url: str) -> None:
    import psycopg

    with psycopg.connect(with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')


def drop_database(url: str) -> None:
    import psycopg

    with psycopg.connect(with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


def configure(
    database_url: str, batch_size: int | None, writer_threads: int | None, server_side_binding: bool
) -> None:
    import dj_database_url
    import django
    from django.conf import settings

    database = dj_database_url.parse(database_url, conn_max_age=600)
    if server_side_binding:
        database["OPTIONS"] = SERVER_SIDE_BINDING
    settings.configure(
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "fluxgate_django",
        ],
        DATABASES={"default": database},
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        FLUXGATE={
            "RECORDER": "sync",
            **({"BATCH_SIZE": batch_size} if batch_size else {}),
            **({"WRITER_THREADS": writer_threads} if writer_threads else {}),
            "SPOOL_DIR": tempfile.mkdtemp(prefix="fluxgate-bench-spool-"),
        },
        # Runaway detection stays on, as by default; its warnings (every team "runs away"
        # from a zero baseline here) are kept out of the output.
        LOGGING={
            "version": 1,
            "disable_existing_loggers": False,
            "loggers": {"fluxgate.runaway": {"level": "ERROR"}},
        },
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def make_records(n: int) -> list[Any]:
    """Priced records over a few teams, features, models and end users (as a site makes)."""
    from fluxgate_django.context import TrackingContext
    from fluxgate_django.models import Team
    from fluxgate_django.pipeline import build_record
    from fluxgate_django.records import CallInfo, Usage

    teams = [
        Team.objects.get_or_create(slug=f"team-{i}", defaults={"name": f"T{i}"})[0]
        for i in range(4)
    ]
    features = ["chat", "search", "summarize", "classify", "agent"]
    models = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini"]
    contexts = [
        TrackingContext(
            team=teams[i % 4].slug,
            feature=features[i % 5],
            user={"id": f"u{i % 50}"},
            request_id=f"req-{i}",
            metadata={"page": "bench"},
        )
        for i in range(200)
    ]
    infos = {
        m: CallInfo(provider="openai", operation="chat", requested_model=m, model=m) for m in models
    }
    records = []
    for i in range(n):
        model = models[i % 3]
        record = build_record(
            infos[model],
            Usage(400 + i % 700, 50 + i % 300, cache_read_tokens=(i % 4) * 64),
            contexts[i % 200],
            latency_ms=float(200 + i % 1800),
        )
        records.append(record)
    return records


def empty_tables() -> None:
    from django.db import connection

    from fluxgate_django.models import EndUserUsageRollup, Event, UsageRollup

    tables = [m._meta.db_table for m in (Event, UsageRollup, EndUserUsageRollup)]
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE " + ", ".join(connection.ops.quote_name(t) for t in tables))


def count_events() -> int:
    from fluxgate_django.models import Event

    return Event.objects.count()


# -- the runs ---------------------------------------------------------------------------------


def run_copy(records: list[Any]) -> float:
    """``COPY`` of the same rows (adapted beforehand): the database's ingest ceiling."""
    from django.db import connection

    from fluxgate_django.models import Event
    from fluxgate_django.recording import base

    connection.ensure_connection()
    team_ids = base._team_ids.resolve(records)
    inserter = base._Inserter(connection)
    rows = [inserter.params(row, connection) for row in base.event_rows(records, team_ids)]
    fields = [f for f in Event._meta.concrete_fields if not f.primary_key]
    qn = connection.ops.quote_name
    sql = f"COPY {qn(Event._meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) FROM STDIN"
    raw = connection.connection  # the psycopg connection
    started = time.perf_counter()
    with raw.cursor() as cursor, cursor.copy(sql) as copy:
        for row in rows:
            copy.write_row(row)
    raw.commit()
    elapsed = time.perf_counter() - started
    assert count_events() == len(records)
    return elapsed


def run_sync(records: list[Any]) -> float:
    from fluxgate_django.recording.sync import SyncRecorder

    recorder = SyncRecorder()
    started = time.perf_counter()
    for record in records:
        recorder.record(record)
    elapsed = time.perf_counter() - started
    assert count_events() == len(records)
    return elapsed


def record_from_threads(recorder: Any, records: list[Any], threads: int) -> None:
    chunks = [records[i::threads] for i in range(threads)]
    workers = [threading.Thread(target=lambda c=c: [recorder.record(r) for r in c]) for c in chunks]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def run_thread(records: list[Any], threads: int, profile: bool) -> float:
    from fluxgate_django.recording.thread import ThreadRecorder

    recorder = ThreadRecorder()
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        # (cProfile follows one thread: profile a single writer.)
        recorder.writer_count = 1
        real_run = recorder._run

        def profiled_run() -> None:
            profiler.runcall(real_run)

        recorder._run = profiled_run  # type: ignore[method-assign]
    started = time.perf_counter()
    record_from_threads(recorder, records, threads)
    assert recorder.flush(timeout=600)
    elapsed = time.perf_counter() - started
    recorder.close()
    if profiler is not None:
        for thread in recorder._threads:
            thread.join(10)
        path = ROOT / "bench" / "ingest-thread.prof"
        profiler.dump_stats(path)
        print(f"  (cProfile of the writer thread: {path})")
    assert count_events() == len(records), count_events()
    return elapsed


def start_worker(
    database_url: str, broker: str, queue: str, concurrency: int, server_side_binding: bool
) -> Any:
    env = {
        **os.environ,
        "FLUXGATE_TEST_CONN_MAX_AGE": "600",  # a worker keeps its connection, as in production
        "DJANGO_SETTINGS_MODULE": "tests.settings_celery",
        "FLUXGATE_TEST_DATABASE_URL": database_url,
        "FLUXGATE_TEST_BROKER_URL": broker,
        "FLUXGATE_TEST_RESULT_BACKEND": broker,
        "FLUXGATE_TEST_QUEUE": queue,
        "PYTHONPATH": str(ROOT),
    }
    command = [
        sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker",
        "--pool=prefork", "-c", str(concurrency), "--loglevel=ERROR", "-Q", queue,
        "-n", f"bench-{queue}@%h", "--without-heartbeat", "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    if server_side_binding:
        env["FLUXGATE_TEST_SERVER_SIDE_BINDING"] = "1"
    # (Errors still reach stderr; the banner and the runaway warnings do not.)
    return subprocess.Popen(
        command, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL
    )


def run_celery(
    records: list[Any],
    threads: int,
    database_url: str,
    broker: str,
    concurrency: int,
    server_side_binding: bool,
) -> float:
    import signal

    from celery import Celery

    from fluxgate_django.recording.celery import CeleryRecorder

    queue = f"fluxgate-bench-{uuid.uuid4().hex[:8]}"
    options = {"confirm_publish": True} if broker.startswith("amqp") else {}
    app = Celery("bench", broker=broker, set_as_current=False)
    app.conf.update(task_default_queue=queue, broker_transport_options=options)
    worker = start_worker(database_url, broker, queue, concurrency, server_side_binding)
    try:
        hostname = f"bench-{queue}@{socket.gethostname()}"
        deadline = time.monotonic() + 60
        while not app.control.ping(destination=[hostname], timeout=0.5):
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError("the Celery worker did not start")
        from django.conf import settings
        from django.test import override_settings

        fluxgate = {**settings.FLUXGATE, "RECORDER": "celery", "CELERY_APP": app}
        with override_settings(FLUXGATE=fluxgate):
            recorder = CeleryRecorder()
            started = time.perf_counter()
            record_from_threads(recorder, records, threads)
            assert recorder.flush(timeout=600)
            published = time.perf_counter() - started
            while count_events() < len(records):
                if time.monotonic() > deadline + 600:
                    raise RuntimeError(f"only {count_events()} of {len(records)} events stored")
                time.sleep(0.02)
            elapsed = time.perf_counter() - started
            recorder.close()
        print(f"  (celery: all batches published after {published:.2f} s)")
        return elapsed
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGTERM)  # a warm shutdown stops its pool itself
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
        with contextlib.suppress(Exception), app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--sync-events", type=int, default=2_000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/15")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 2],
        help="worker processes (-c) of the one Celery worker, a run for each (default 1 2)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="FLUXGATE['BATCH_SIZE'] (default: its default)"
    )
    parser.add_argument(
        "--writer-threads",
        type=int,
        default=None,
        help="FLUXGATE['WRITER_THREADS'] (default: its default)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each measurement; the median is reported"
    )
    parser.add_argument(
        "--server-side-binding",
        action="store_true",
        help="DATABASES OPTIONS server_side_binding + prepare_threshold (here and in the worker)",
    )
    parser.add_argument("--only", nargs="*", default=["copy", "sync", "thread", "celery"])
    parser.add_argument("--profile", choices=["thread"])
    args = parser.parse_args()

    database_url = with_database(args.postgres, DB_NAME)
    recreate_database(args.postgres)
    try:
        configure(database_url, args.batch_size, args.writer_threads, args.server_side_binding)
        import django
        import psycopg

        from fluxgate_django.conf import fluxgate_settings

        t0 = time.perf_counter()
        records = make_records(args.events)
        print(
            f"{args.events} events ({time.perf_counter() - t0:.1f} s to generate), "
            f"PostgreSQL {connection_version()}, Django {django.get_version()}, "
            f"psycopg {psycopg.__version__}, Python {sys.version.split()[0]}, "
            f"{os.cpu_count()} CPUs, {args.threads} recording threads, "
            f"BATCH_SIZE {fluxgate_settings.BATCH_SIZE}, "
            f"WRITER_THREADS {fluxgate_settings.WRITER_THREADS}, median of {args.repeat} runs"
        )
        runs: list[tuple[str, Any]] = []
        for name in ("copy", "sync", "thread"):
            if name in args.only:
                runs.append((name, None))
        if "celery" in args.only:
            runs += [(f"celery -c{c}", c) for c in args.concurrency]
        results: dict[str, tuple[int, list[float]]] = {}
        for _ in range(args.repeat):  # interleaved: a slow spell of the machine hits all
            for name, concurrency in runs:
                empty_tables()
                n = len(records)
                if name == "copy":
                    elapsed = run_copy(records)
                elif name == "sync":
                    n = min(args.sync_events, len(records))
                    elapsed = run_sync(records[:n])
                elif name == "thread":
                    elapsed = run_thread(records, args.threads, args.profile == "thread")
                else:
                    elapsed = run_celery(
                        records,
                        args.threads,
                        database_url,
                        args.broker,
                        concurrency,
                        args.server_side_binding,
                    )
                results.setdefault(name, (n, []))[1].append(elapsed)
                print(f"  {name:<11} {n:>7} events in {elapsed:6.2f} s")
        report(results)
    finally:
        from django.db import connections

        with contextlib.suppress(Exception):
            connections.close_all()
        drop_database(args.postgres)


def connection_version() -> str:
    from django.db import connection

    connection.ensure_connection()
    version = connection.pg_version  # e.g. 160004
    return f"{version // 10000}.{version % 10000}"


def report(results: dict[str, tuple[int, list[float]]]) -> None:
    rates = {name: sorted(n / t for t in times) for name, (n, times) in results.items()}
    ceiling = statistics.median(rates["copy"]) if "copy" in rates else None
    print()
    print(f"{'recorder':<13}{'events/s':>10}{'(min-max)':>18}{'vs COPY':>9}   target")
    failed = False
    for name, values in rates.items():
        rate = statistics.median(values)
        spread = f"{values[0]:,.0f}-{values[-1]:,.0f}"
        ratio = f"{rate / ceiling:8.1%}" if ceiling else "       -"
        target = ""
        kind = name.split()[0]
        if kind in TARGETS:
            minimum, share = TARGETS[kind]
            ok = rate >= minimum and (share is None or ceiling is None or rate >= share * ceiling)
            failed |= not ok
            target = f">= {minimum:,}/s" + (f" and >= {share:.0%} of COPY" if share else "")
            target += "  ok" if ok else "  MISSED"
        print(f"{name:<13}{rate:>10,.0f}{spread:>18}{ratio:>9}   {target}")
    print(f"\n(timed on {dt.datetime.now().isoformat(timespec='seconds')})")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
