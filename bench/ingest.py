"""Events persisted per second through each recorder, against raw ``COPY`` as the ceiling.

    python bench/ingest.py [--events 100000] [--sync-events 2000] [--threads 4]
        [--postgres postgres://postgres@127.0.0.1:5432/postgres]
        [--broker redis://127.0.0.1:6379/15] [--concurrency 1 2] [--batch-size N]
        [--writer-threads N] [--repeat 3] [--server-side-binding] [--profile thread]
        [--only copy sync thread celery]

Creates a PostgreSQL database ``fluxgate_bench_ingest_<pid>`` (dropped at the end), generates
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

``--api`` benches the ingest API instead (``POST fluxgate/api/events/``) as a client sees
it: the test project served by a real server (``--server gunicorn``, gthread workers:
``pip install gunicorn``; ``runserver`` if it is missing) with the thread recorder into a
fresh PostgreSQL database ``fluxgate_bench_api_<pid>``, and ``--client-processes`` x
``--connections`` concurrent keep-alive HTTP clients. Scenarios: ``GET health/`` (the
cost of any authenticated request: the floor), one event per request, and ``--batch``
events per request; each ``--warmup`` s, then ``--duration`` s measured. It prints
requests/s, events/s, p50/p99 latency and the server's CPU time per request (user +
system of its processes: what a request costs whatever else the machine runs), checks
that every accepted event was stored, and the targets (>= 500 single-event requests/s,
>= 20,000 events/s in batches), exiting 1 if one is missed::

    python bench/ingest.py --api [--workers 2] [--server-threads 4] [--batch 100]
        [--client-processes 2] [--connections 4] [--duration 10] [--redis URL]
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

#: (Per run: two benches on one server must not drop each other's database.)
DB_NAME = f"fluxgate_bench_ingest_{os.getpid()}"
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
        SECRET_KEY="fluxgate-bench",  # (journal lines carry a MAC keyed by it)
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
    from fluxgate_django.pipeline import make_record, price_record
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
        record = make_record(
            infos[model],
            Usage(400 + i % 700, 50 + i % 300, cache_read_tokens=(i % 4) * 64),
            contexts[i % 200],
            latency_ms=float(200 + i % 1800),
        )
        price_record(record)
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

    from fluxgate_django import teams
    from fluxgate_django.models import Event
    from fluxgate_django.recording import rows as event_rows
    from fluxgate_django.recording import sql

    connection.ensure_connection()
    team_ids = teams.team_ids(r.team for r in records if isinstance(r.team, str))
    inserter = sql._Inserter(connection)
    rows = [inserter.params(r, connection) for r in event_rows.event_rows(records, team_ids)]
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
    """``threads`` callers hand ``records`` over as the pipeline does: each journaled
    (``FLUXGATE["JOURNAL"]``, on by default) before the recorder has it."""
    from fluxgate_django.recording import journal

    def hand_over(chunk: list[Any]) -> None:
        uses_journal = recorder.uses_journal
        for record in chunk:
            if uses_journal:
                journal.append_one(record)
            recorder.record(record)

    chunks = [records[i::threads] for i in range(threads)]
    workers = [threading.Thread(target=hand_over, args=(c,)) for c in chunks]
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


# -- the ingest API over HTTP (--api) -------------------------------------------------------

API_DB_NAME = f"fluxgate_bench_api_{os.getpid()}"
#: Single-event requests/s, and events/s at --batch events per request.
API_TARGETS = {"single": 500, "batch": 20_000}
EVENTS_PATH = "/fluxgate/api/events/"
HEALTH_PATH = "/fluxgate/api/health/"

#: The server's settings: the test project's, with a throttle rate the bench can't reach
#: (the throttle still counts every request), the thread recorder and DEBUG off.
API_SETTINGS = """
from testproject.settings import *  # noqa: F403

DEBUG = False
REST_FRAMEWORK = {{"DEFAULT_THROTTLE_RATES": {{"fluxgate_ingest": "100000000/min"}}}}
FLUXGATE = {{**FLUXGATE, "RECORDER": "thread", "SPOOL_DIR": {spool!r}}}
LOGGING = {{
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {{"fluxgate.runaway": {{"level": "ERROR"}}}},
}}
"""

#: One ingest event (a priced call); %-formatted with its tracking id and a counter.
EVENT_TEMPLATE = (
    '{"tracking_id":"%s","provider":"openai","model":"gpt-4o-mini","operation":"chat",'
    '"feature":"feature-%d","input_tokens":%d,"output_tokens":%d,"latency_ms":%d,'
    '"end_user_id":"user-%d","metadata":{"bench":true}}'
)


def _event_json(tracking_id: str, n: int) -> str:
    tokens_in, tokens_out, latency = 400 + n % 700, 50 + n % 300, 200 + n % 1800
    return EVENT_TEMPLATE % (tracking_id, n % 5, tokens_in, tokens_out, latency, n % 50)


def _client_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One client process: ``spec["connections"]`` threads, each with its own keep-alive
    connection, sending requests from ``start_at`` until ``end_at`` (wall clock); requests
    started after ``measure_at`` are measured."""
    import http.client

    results: list[dict[str, Any]] = []

    def connection_loop() -> None:
        conn = http.client.HTTPConnection(spec["host"], spec["port"], timeout=60)
        base = uuid.uuid4().int
        batch, method, path = spec["batch"], spec["method"], spec["path"]
        headers = {"Authorization": f"Bearer {spec['secret']}"}
        if method == "POST":
            headers["Content-Type"] = "application/json"
        latencies: list[float] = []
        sent = accepted_events = errors = total = 0
        first_error = ""
        while time.time() < spec["start_at"]:
            time.sleep(0.001)
        n = 0
        while True:
            started_wall = time.time()
            if started_wall >= spec["end_at"]:
                break
            body = None
            if batch:
                ids = [str(uuid.UUID(int=(base + n + i) % (1 << 128))) for i in range(batch)]
                events = [_event_json(tid, n + i) for i, tid in enumerate(ids)]
                n += batch
                body = events[0] if batch == 1 else '{"events":[' + ",".join(events) + "]}"
            started = time.perf_counter()
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            elapsed = time.perf_counter() - started
            total += 1
            ok = response.status in (200, 202)
            if ok and method == "POST":
                accepted_events += batch
            if started_wall >= spec["measure_at"]:
                latencies.append(elapsed)
                sent += 1
                if not ok:
                    errors += 1
            if not ok and not first_error:
                first_error = f"{response.status} {data[:300]!r}"
        conn.close()
        results.append(
            {
                "latencies": latencies,
                "requests": sent,
                "total": total,
                "errors": errors,
                "accepted_events": accepted_events,
                "first_error": first_error,
            }
        )

    threads = [threading.Thread(target=connection_loop) for _ in range(spec["connections"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "latencies": [x for r in results for x in r["latencies"]],
        "requests": sum(r["requests"] for r in results),
        "total": sum(r["total"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "accepted_events": sum(r["accepted_events"] for r in results),
        "first_error": next((r["first_error"] for r in results if r["first_error"]), ""),
    }


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class ApiServer:
    """The test project served by gunicorn (gthread workers) or ``runserver --noreload``,
    on a free loopback port, with the bench's settings and database."""

    def __init__(self, args: Any, database_url: str, settings_dir: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.log = Path(settings_dir) / "server.log"
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "fluxgate_bench_api_settings",
            "DATABASE_URL": database_url,
            "REDIS_URL": args.redis or "",
            "DJANGO_DEBUG": "0",
            "PYTHONPATH": _pythonpath(settings_dir),
        }
        self.server = args.server
        if self.server == "gunicorn":
            command = [
                sys.executable, "-m", "gunicorn", "testproject.wsgi:application",
                "--bind", f"127.0.0.1:{self.port}", "--workers", str(args.workers),
                "--worker-class", "gthread", "--threads", str(args.server_threads),
                "--keep-alive", "60", "--backlog", "512", "--log-level", "warning",
            ]  # fmt: skip
        else:
            command = [
                sys.executable, str(ROOT / "testproject" / "manage.py"), "runserver",
                "--noreload", "--nothreading" if args.server_threads == 1 else "--skip-checks",
                f"127.0.0.1:{self.port}",
            ]  # fmt: skip
        self.log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            command,
            cwd=ROOT / "testproject",
            env=env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, secret: str, timeout: float = 60) -> None:
        import http.client

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", HEALTH_PATH, headers={"Authorization": f"Bearer {secret}"})
                if conn.getresponse().status == 200:
                    conn.close()
                    return
                conn.close()
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not start; its log:\n{self.log.read_text()[-3000:]}")

    def cpu_seconds(self) -> float:
        """CPU time (user + system, every thread) the server's processes used so far."""
        pids = {self.process.pid, *self.worker_pids()}
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in pids:
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        return total

    def worker_pids(self) -> list[int]:
        if self.server != "gunicorn":
            return [self.process.pid]
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            return [int(p) for p in children.read_text().split()]
        except OSError:
            return []

    def stop(self) -> None:
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)  # gunicorn: graceful, flushes recorders
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.log_file.close()


def _pythonpath(settings_dir: str) -> str:
    """The server's import path: the bench's settings, the test project, this checkout,
    then whatever ``PYTHONPATH`` the bench was given (e.g. where gunicorn is installed)."""
    paths = [settings_dir, str(ROOT / "testproject"), str(ROOT)]
    return os.pathsep.join(
        paths + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    )


def _stored_events(database_url: str) -> int:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM fluxgate_django_event").fetchone()
        return int(row[0]) if row else 0


def _api_setup(database_url: str, settings_dir: str) -> str:
    """Migrate the bench database with the test project's settings; returns a new API key."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "fluxgate_bench_api_settings",
        "DATABASE_URL": database_url,
        "REDIS_URL": "",
        "PYTHONPATH": _pythonpath(settings_dir),
    }
    script = (
        "import django; django.setup()\n"
        "from django.core.management import call_command\n"
        "call_command('migrate', verbosity=0)\n"
        "from fluxgate_django.models import ApiKey, Team\n"
        "team = Team.objects.create(name='Bench', slug='bench')\n"
        "print(ApiKey.objects.create_key(team=team, name='bench')[1])\n"
    )
    command = [sys.executable, "-c", script]
    out = subprocess.run(command, env=env, cwd=ROOT, check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def run_api(args: Any) -> None:
    """``--api``: the ingest API served by a real server, under concurrent keep-alive clients."""
    import concurrent.futures
    import multiprocessing

    database_url = with_database(args.postgres, API_DB_NAME)
    import psycopg

    admin_url = with_database(args.postgres, "postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{API_DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{API_DB_NAME}"')
    settings_dir = tempfile.mkdtemp(prefix="fluxgate-bench-api-")
    spool = Path(settings_dir) / "spool"
    (Path(settings_dir) / "fluxgate_bench_api_settings.py").write_text(
        API_SETTINGS.format(spool=str(spool))
    )
    server = None
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=args.client_processes, mp_context=multiprocessing.get_context("spawn")
    )
    try:
        secret = _api_setup(database_url, settings_dir)
        server = ApiServer(args, database_url, settings_dir)
        server.wait_ready(secret)
        list(pool.map(_noop_n, range(args.client_processes)))  # start the client processes
        print(
            f"server: {args.server}"
            + (
                f" ({args.workers} workers x {args.server_threads} threads, gthread)"
                if args.server == "gunicorn"
                else ""
            )
            + f", thread recorder, cache {'redis' if args.redis else 'locmem'}; clients: "
            f"{args.client_processes} processes x {args.connections} keep-alive connections; "
            f"{args.warmup:g} s warm-up + {args.duration:g} s per scenario; {os.cpu_count()} CPUs"
        )
        scenarios = [
            ("health (GET, baseline)", "GET", HEALTH_PATH, 0),
            ("1 event/request", "POST", EVENTS_PATH, 1),
            (f"{args.batch} events/request", "POST", EVENTS_PATH, args.batch),
        ]
        rows = []
        expected = 0
        for name, method, path, batch in scenarios:
            start_at = time.time() + 0.3
            measure_at = start_at + args.warmup
            end_at = measure_at + args.duration
            spec = {
                "host": "127.0.0.1",
                "port": server.port,
                "secret": secret,
                "method": method,
                "path": path,
                "batch": batch,
                "connections": args.connections,
                "start_at": start_at,
                "measure_at": measure_at,
                "end_at": end_at,
            }
            spies = _start_py_spy(args, server, name) if batch else []
            cpu_before = server.cpu_seconds()
            parts = list(pool.map(_client_worker, [spec] * args.client_processes))
            cpu = server.cpu_seconds() - cpu_before
            for spy in spies:
                spy.wait(60)
            latencies = [x for p in parts for x in p["latencies"]]
            requests = sum(p["requests"] for p in parts)
            errors = sum(p["errors"] for p in parts)
            expected += sum(p["accepted_events"] for p in parts)
            first_error = next((p["first_error"] for p in parts if p["first_error"]), "")
            drained_in = None
            if batch:
                waited = time.monotonic()
                while _stored_events(database_url) < expected:
                    if time.monotonic() - waited > 120:
                        break
                    time.sleep(0.05)
                drained_in = time.monotonic() - waited
            stored = _stored_events(database_url)
            rows.append(
                {
                    "name": name,
                    "batch": batch,
                    "rps": requests / args.duration,
                    "eps": requests * batch / args.duration,
                    "p50": _percentile(latencies, 0.50) * 1000,
                    "p99": _percentile(latencies, 0.99) * 1000,
                    "errors": errors,
                    "first_error": first_error,
                    "stored": stored,
                    "expected": expected,
                    "drained_in": drained_in,
                    # Server CPU per request, warm-up included (load-independent, unlike
                    # the rates on a shared machine); batches: the writes' share too.
                    "cpu_ms": cpu * 1000 / max(1, sum(p["total"] for p in parts)),
                }
            )
            print(
                f"  {name:<24} {requests:>7} requests, {errors} errors"
                + (
                    f"; {stored}/{expected} events stored {drained_in:.2f} s after the last"
                    if drained_in is not None
                    else ""
                )
            )
        report_api(rows, args.batch)
    finally:
        pool.shutdown()
        if server is not None:
            server.stop()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{API_DB_NAME}" WITH (FORCE)')


def _noop_n(_: int) -> None:
    time.sleep(0.2)  # long enough that every process of the pool gets one


def _start_py_spy(args: Any, server: ApiServer, name: str) -> list[Any]:
    """With ``--py-spy``: py-spy's collapsed stacks of each server worker during a scenario
    (``bench/ingest-api-<scenario>-<pid>.txt``; flamegraph.pl or speedscope draw them)."""
    if not args.py_spy:
        return []
    slug = name.split()[0]
    spies = []
    for pid in server.worker_pids():
        out = ROOT / "bench" / f"ingest-api-{slug}-{pid}.txt"
        command = [
            str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
            "--output", str(out),
            "--duration", str(int(args.warmup + args.duration)), "--format", "raw",
        ]  # fmt: skip
        spies.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    return spies


def report_api(rows: list[dict[str, Any]], batch: int) -> None:
    print()
    print(
        f"{'scenario':<26}{'requests/s':>11}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'CPU ms/req':>11}   target"
    )
    failed = False
    for row in rows:
        target = ""
        if row["batch"] == 1:
            minimum, value, unit = API_TARGETS["single"], row["rps"], "requests/s"
        elif row["batch"] > 1:
            minimum, value, unit = API_TARGETS["batch"], row["eps"], "events/s"
        else:
            minimum = 0
        if minimum:
            ok = value >= minimum and not row["errors"] and row["stored"] == row["expected"]
            failed |= not ok
            target = f">= {minimum:,} {unit}  " + ("ok" if ok else "MISSED")
            if row["stored"] != row["expected"]:
                target += f" ({row['stored']} of {row['expected']} accepted events stored)"
        events = f"{row['eps']:>10,.0f}" if row["batch"] else f"{'-':>10}"
        print(
            f"{row['name']:<26}{row['rps']:>11,.0f}{events}{row['p50']:>9.1f}{row['p99']:>9.1f}"
            f"{row['cpu_ms']:>11.2f}   {target}"
        )
        if row["errors"]:
            print(f"    {row['errors']} errors, e.g. {row['first_error']}")
            failed = True
    print(f"\n(timed on {dt.datetime.now().isoformat(timespec='seconds')})")
    if failed:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    api = parser.add_argument_group("the ingest API over HTTP (--api)")
    api.add_argument("--api", action="store_true", help="bench the ingest API instead")
    api.add_argument("--server", choices=["gunicorn", "runserver"], default=None)
    api.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="gunicorn workers")
    api.add_argument("--server-threads", type=int, default=4, help="threads per worker")
    api.add_argument("--client-processes", type=int, default=2)
    api.add_argument("--connections", type=int, default=4, help="per client process")
    api.add_argument("--batch", type=int, default=100, help="events per batch request")
    api.add_argument("--warmup", type=float, default=2.0, help="seconds, not measured")
    api.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    api.add_argument(
        "--redis",
        default="redis://127.0.0.1:6379/14",
        help="the server's cache (throttle counts); '' for a local-memory cache",
    )
    api.add_argument(
        "--py-spy",
        action="store_true",
        help="py-spy stacks of the workers (bench/ingest-api-*.txt)",
    )
    args = parser.parse_args()
    if args.api:
        if args.server is None:
            import importlib.util

            args.server = "gunicorn" if importlib.util.find_spec("gunicorn") else "runserver"
        run_api(args)
        return

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
