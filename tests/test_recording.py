"""Recording: every tracked call becomes exactly one Event row, without slowing or breaking it.

Covers the sync and thread recorders, batching and flushing, exit and fork handling,
the spool when the database is down, idempotency, team/user attribution, and the
fail-open contract.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote

import pytest
from django.db import OperationalError, connection
from django.db.backends.base.base import BaseDatabaseWrapper

import fluxgate_django
from fluxgate_django import Status, track_openai, tracking_context
from fluxgate_django.context import TrackingContext
from fluxgate_django.models import Event, Team
from fluxgate_django.pipeline import make_record as build
from fluxgate_django.pipeline import price_record
from fluxgate_django.pricing import calculate_cost
from fluxgate_django.recording import get_recorder, spool, write_events
from fluxgate_django.recording import thread as thread_module
from fluxgate_django.recording import write as base
from fluxgate_django.records import CallInfo, Usage, pack_records, unpack_records
from fluxgate_django.testing import DEFAULT_TEXT, FakeReply
from tests.helpers import MSGS, fluxgate_overrides

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("spool_dir")]

ROOT = Path(__file__).resolve().parent.parent

#: The thread recorder with nothing flushed unless a test asks for it.
THREAD = {"RECORDER": "thread", "RAISE_ERRORS": True, "FLUSH_INTERVAL": 60, "BATCH_SIZE": 1000}

needs_shared_db = pytest.mark.django_db(transaction=True)


@pytest.fixture
def openai(openai_client):
    return track_openai(openai_client)


def ask(client, model="gpt-4o-mini"):
    return client.chat.completions.create(model=model, messages=MSGS)


def event_for(result) -> Event:
    return Event.objects.get(tracking_id=result.fluxgate.tracking_id)


def make_record(**context):
    info = CallInfo(provider="openai", operation="chat", requested_model="gpt-4o", model="gpt-4o")
    return price_record(
        build(
            info,
            Usage(1000, 500, cache_read_tokens=200),
            TrackingContext(**context),
            latency_ms=12.5,
        )
    )


def spooled_ids(path: Path) -> list[str]:
    return [
        json.loads(line)["tracking_id"]
        for f in sorted(path.glob("*.jsonl"))
        for line in f.read_text().splitlines()
        if line.strip()
    ]


class WriteSpy:
    """Stands in for the thread recorder's ``write_events``: counts the batches it is given
    and the INSERTs into the event table each one costs (counted in the writer thread,
    on the writer's own connection). ``gate`` holds writes until it is set."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.event_inserts: list[int] = []
        self.threads: set[str] = set()
        self.inside = 0  # writes started (a gated one waits inside)
        self.entered = threading.Event()
        self.gate: threading.Event | None = None
        self._done = threading.Condition()

    def __call__(self, records, **kwargs):
        self.entered.set()
        with self._done:
            self.inside += 1
            self._done.notify_all()
        if self.gate is not None:
            self.gate.wait(10)
        inserts = 0

        def count(execute, sql, params, many, context):
            nonlocal inserts
            into = f"INTO {connection.ops.quote_name(Event._meta.db_table)} "
            if sql.lstrip().upper().startswith("INSERT") and into in sql:
                inserts += 1
            return execute(sql, params, many, context)

        with connection.execute_wrapper(count):
            written = base.write_events(records, **kwargs)
        with self._done:
            self.batches.append(len(records))
            self.event_inserts.append(inserts)
            self.threads.add(threading.current_thread().name)
            self._done.notify_all()
        return written

    def wait_inside(self, writers: int, timeout: float = 5.0) -> bool:
        """Wait (bounded) until ``writers`` writes are in progress at once."""
        with self._done:
            return self._done.wait_for(lambda: self.inside >= writers, timeout)

    def wait_for(self, records: int, timeout: float = 5.0) -> bool:
        """Wait (bounded) until ``records`` records have been written."""
        with self._done:
            return self._done.wait_for(lambda: sum(self.batches) >= records, timeout)


@pytest.fixture
def writes(monkeypatch):
    spy = WriteSpy()
    monkeypatch.setattr(thread_module, "write_events", spy)
    return spy


# -- sync recorder ---------------------------------------------------------------------------


def test_sync_recorder_writes_before_the_call_returns(openai, fake):
    resp = ask(openai)

    event = event_for(resp)  # no flush needed
    assert event.status == Status.SUCCESS.value
    assert event.cost_usd == resp.fluxgate.cost
    assert Event.objects.count() == 1


@needs_shared_db
def test_sync_recorder_in_async_code_hands_the_write_off_and_flush_waits(
    async_openai_client, fake
):
    """On a running loop the sync recorder neither writes nor waits there: the write goes
    to a helper thread, and flush() waits for it."""
    client = track_openai(async_openai_client)
    writers = []

    def spy(records):
        writers.append(threading.current_thread())
        return write_events(records)

    async def main():
        return await client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)

    with mock.patch("fluxgate_django.recording.sync.write_events", spy):
        resp = asyncio.run(main())
        assert fluxgate_django.flush(timeout=10)

    assert writers and writers[0] is not threading.main_thread()
    assert event_for(resp).status == Status.SUCCESS.value


# -- thread recorder -------------------------------------------------------------------------
#
# The writer is another thread, so these tests commit for real (transaction=True). On
# in-memory SQLite Django's test database is "file:memorydb_default?mode=memory&cache=shared",
# which every thread's connection shares. The main thread only reads once the writer has
# finished (after flush() or a write the spy saw complete), so SQLite's table locks never
# meet.


@needs_shared_db
def test_thread_recorder_keeps_the_database_off_the_callers_path(
    openai, fake, writes, django_assert_num_queries
):
    with fluxgate_overrides(**THREAD):
        # The price book reads the ModelPrice table once per PRICE_CACHE_SECONDS, in the
        # caller; let that happen before counting.
        calculate_cost("openai", "gpt-4o-mini", Usage())
        with django_assert_num_queries(0):
            responses = [ask(openai) for _ in range(5)]

        assert all(r.fluxgate.status is Status.SUCCESS for r in responses)
        assert Event.objects.count() == 0  # queued, not written
        assert writes.batches == []

        assert fluxgate_django.flush(timeout=5) is True
        assert set(Event.objects.values_list("tracking_id", flat=True)) == {
            r.fluxgate.tracking_id for r in responses
        }
        assert writes.threads <= {"fluxgate-recorder-0", "fluxgate-recorder-1"}


@needs_shared_db
def test_thread_recorder_writes_a_batch_with_one_insert(openai, fake, writes):
    with fluxgate_overrides(**THREAD):
        for _ in range(50):
            ask(openai)
        assert fluxgate_django.flush(timeout=5) is True

    assert Event.objects.count() == 50
    assert writes.batches == [50]
    assert writes.event_inserts == [1]


@needs_shared_db
def test_thread_recorder_flushes_when_batch_size_is_reached(openai, fake, writes):
    with fluxgate_overrides(**{**THREAD, "BATCH_SIZE": 5}):
        for _ in range(4):
            ask(openai)
        assert not writes.wait_for(1, timeout=0.2)  # below the batch size: still queued

        ask(openai)  # the fifth

        assert writes.wait_for(5)  # no flush() called
        assert writes.batches == [5]
        assert Event.objects.count() == 5


@needs_shared_db
def test_thread_recorder_flushes_every_flush_interval(openai, fake, writes):
    with fluxgate_overrides(**{**THREAD, "FLUSH_INTERVAL": 0.05}):
        responses = [ask(openai) for _ in range(3)]

        assert writes.wait_for(3)  # no flush() called, far below BATCH_SIZE
        assert set(Event.objects.values_list("tracking_id", flat=True)) == {
            r.fluxgate.tracking_id for r in responses
        }


@needs_shared_db
def test_flush_waits_for_a_batch_the_writer_is_already_writing(openai, fake, writes):
    writes.gate = threading.Event()
    with fluxgate_overrides(**{**THREAD, "BATCH_SIZE": 3}):
        for _ in range(3):
            ask(openai)
        # The size trigger has handed the batch to the writer: the queue is empty, yet
        # nothing is in the database until that write finishes.
        assert writes.entered.wait(5)

        assert fluxgate_django.flush(timeout=0.2) is False  # timed out, not drained

        release = threading.Timer(0.1, writes.gate.set)
        release.start()
        assert fluxgate_django.flush(timeout=5) is True
        release.join()
        assert Event.objects.count() == 3


def needs_two_writers() -> None:
    if connection.vendor == "sqlite":
        pytest.skip("SQLite runs one writer (DATABASE_URL=postgres://... runs two)")


def test_sqlite_gets_one_writer_thread():
    with fluxgate_overrides(**{**THREAD, "WRITER_THREADS": 2}):
        expected = 1 if connection.vendor == "sqlite" else 2
        assert thread_module.ThreadRecorder().writer_count == expected


@needs_shared_db
def test_two_writers_write_two_batches_at_once(openai, fake, writes):
    """A backlog is written by both writer threads in parallel; flush() waits for both."""
    needs_two_writers()
    writes.gate = threading.Event()
    with fluxgate_overrides(**{**THREAD, "BATCH_SIZE": 3, "WRITER_THREADS": 2}):
        for _ in range(6):
            ask(openai)
        assert writes.wait_inside(2)  # each writer holds a batch of 3
        assert fluxgate_django.flush(timeout=0.2) is False
        writes.gate.set()
        assert fluxgate_django.flush(timeout=5) is True
    # (Both writers held a batch at once. Usually two of 3; on a loaded machine a writer
    # may wake early and take a smaller one, the rest following in a third batch.)
    assert sum(writes.batches) == 6 and max(writes.batches) <= 3
    assert Event.objects.count() == 6
    assert writes.threads == {"fluxgate-recorder-0", "fluxgate-recorder-1"}


@needs_shared_db
def test_flush_waits_for_an_earlier_batch_another_writer_still_writes(openai, fake, monkeypatch):
    """Writer A is stuck on batch 1; writer B takes the next event and the flush marker,
    writes the event, and must not report the flush done before A's batch is in."""
    needs_two_writers()
    held = threading.Event()
    entered = threading.Event()

    def write(records, **kwargs):
        if len(records) == 3:  # batch 1
            entered.set()
            held.wait(10)
        return write_events(records, **kwargs)

    monkeypatch.setattr(thread_module, "write_events", write)
    with fluxgate_overrides(**{**THREAD, "BATCH_SIZE": 3, "WRITER_THREADS": 2}):
        for _ in range(3):
            ask(openai)
        assert entered.wait(5)
        ask(openai)
        assert fluxgate_django.flush(timeout=0.3) is False
        assert Event.objects.count() == 1  # B wrote its event; the flush still waits for A
        held.set()
        assert fluxgate_django.flush(timeout=5) is True
    assert Event.objects.count() == 4


@needs_shared_db
def test_writer_errors_surface_at_flush_with_raise_errors(openai, fake, monkeypatch):
    def broken(records, **kwargs):
        raise RuntimeError("writer bug")

    monkeypatch.setattr(thread_module, "write_events", broken)
    with fluxgate_overrides(**THREAD):
        resp = ask(openai)  # the caller is not affected
        assert resp.fluxgate.status is Status.SUCCESS
        with pytest.raises(RuntimeError, match="writer bug"):
            fluxgate_django.flush(timeout=5)


# -- idempotency -----------------------------------------------------------------------------


def test_the_same_record_written_twice_is_one_row():
    record = make_record(feature="twice")

    assert write_events([record, record]) == 2
    write_events([record])

    assert Event.objects.filter(tracking_id=record.tracking_id).count() == 1


@pytest.mark.parametrize("compact", [False, True])
def test_a_record_survives_its_json_form(compact):
    """What the spool and Celery task payloads carry (``compact``: defaults left out)
    comes back as the same record, whatever is set or left at its default."""
    team = Team.objects.create(name="Search", slug="search")
    full = dataclasses.replace(
        make_record(team=team, feature="rag", user={"id": "u1"}),
        cost_saved_usd=Decimal("0.001"),
        latency_ms=12.5,
        streamed=True,
        fallback_attempt=2,
        metadata={"page": "home", "n": 0},
        tags=["a"],
        content={"messages": []},
        budget_reservation={"estimate_units": 10, "counters": [1]},
    )
    plain = dataclasses.replace(make_record(), input_tokens=0, output_tokens=0, cost_usd=Decimal(0))
    for record in (full, plain):
        data = json.loads(json.dumps(record.to_json(compact=compact)))
        back = type(record).from_json(data)
        expected = dataclasses.replace(record, team=team.pk) if record.team else record
        assert back == expected
    short = full.to_json(compact=True)
    assert "error_message" not in short and "cache_hit" not in short
    assert Decimal(short["cost_usd"]) == Decimal("0.00725")
    assert plain.to_json(compact=True)["cost_usd"] == "0"  # a known zero is kept


def test_a_packed_batch_from_another_version_is_read_by_field_name():
    """A Celery payload packed by a FluxGate with other fields (a newer one, still in the
    broker during an upgrade): known fields by name, unknown ones ignored."""
    records = [make_record(feature=f"f{i}") for i in range(3)]
    packed = json.loads(pack_records(records))
    fields = [*reversed(packed["fields"]), "added_later"]
    rows = [[*reversed(row), "x"] for row in packed["rows"]]
    text = json.dumps({"fields": fields, "rows": rows})
    assert unpack_records(text) == records == unpack_records(pack_records(records))


def test_spool_replay_is_idempotent(spool_dir):
    team = Team.objects.create(name="Search", slug="search")
    records = [make_record(team="search", feature="replayed") for _ in range(3)]
    spool.append(records)
    (spool_file,) = spool_dir.glob("events-*.jsonl")
    content = spool_file.read_text()

    assert spool.replay(write_events) == 3
    # A replay that died after writing but before removing its file is run again.
    spool_file.write_text(content)
    assert spool.replay(write_events) == 3
    assert spool.replay(write_events) == 0

    assert Event.objects.count() == 3
    assert not list(spool_dir.glob("*.jsonl"))
    event = Event.objects.get(tracking_id=records[0].tracking_id)
    assert (event.team, event.feature, event.created_at) == (
        team,
        "replayed",
        records[0].created_at,
    )
    assert event.cost_usd == records[0].cost_usd == Decimal("0.00725")


def test_spool_replay_skips_a_torn_last_line(spool_dir, caplog):
    records = [make_record() for _ in range(2)]
    spool.append(records)
    (spool_file,) = spool_dir.glob("events-*.jsonl")
    with open(spool_file, "a") as fh:
        fh.write('{"tracking_id": "3f1c')  # the process died mid-write

    assert spool.replay(write_events) == 2
    assert Event.objects.count() == 2
    assert any("unreadable spool line" in r.getMessage() for r in caplog.records)


# -- database outage -------------------------------------------------------------------------


class Outage:
    """While ``down``, every database connection attempt fails, in every thread, as when
    the database server is unreachable (whatever query the writer uses)."""

    def __init__(self, monkeypatch) -> None:
        self.down = False
        real = BaseDatabaseWrapper.ensure_connection

        def ensure_connection(wrapper):
            if self.down:
                raise OperationalError("could not connect to server: Connection refused")
            return real(wrapper)

        monkeypatch.setattr(BaseDatabaseWrapper, "ensure_connection", ensure_connection)


@needs_shared_db
@pytest.mark.parametrize("recorder", ["sync", "thread"])
def test_database_outage_spools_events_and_replays_them_later(
    openai, fake, monkeypatch, spool_dir, recorder
):
    outage = Outage(monkeypatch)
    with fluxgate_overrides(**{**THREAD, "RECORDER": recorder}):
        outage.down = True
        responses = [ask(openai) for _ in range(3)]
        assert fluxgate_django.flush(timeout=5) is True

        for resp in responses:  # the LLM calls are unaffected
            assert resp.choices[0].message.content == DEFAULT_TEXT
            assert resp.fluxgate.status is Status.SUCCESS
        assert sorted(spooled_ids(spool_dir)) == sorted(
            str(r.fluxgate.tracking_id) for r in responses
        )

        outage.down = False
        assert Event.objects.count() == 0
        responses.append(ask(openai))  # the next successful write replays the spool
        assert fluxgate_django.flush(timeout=5) is True

        assert Event.objects.count() == 4
        assert set(Event.objects.values_list("tracking_id", flat=True)) == {
            r.fluxgate.tracking_id for r in responses
        }
        assert not list(spool_dir.glob("*.jsonl"))
        assert spool.replay(write_events) == 0
        assert Event.objects.count() == 4


# -- attribution -----------------------------------------------------------------------------


def test_team_from_slug_or_instance_and_unknown_slugs(openai, fake):
    team = Team.objects.create(name="Search", slug="search")

    with tracking_context(team="search"):
        by_slug = ask(openai)
    with tracking_context(team=team):
        by_instance = ask(openai)
    with tracking_context(team="no-such-team", metadata={"page": "home"}):
        unknown = ask(openai)

    assert event_for(by_slug).team == team
    assert event_for(by_instance).team == team
    event = event_for(unknown)
    assert event.team is None
    assert event.metadata == {"page": "home", "unknown_team": "no-such-team"}


def test_a_team_created_after_an_unknown_slug_was_seen_gets_its_events(openai, fake):
    with tracking_context(team="late"):
        before = ask(openai)
    team = Team.objects.create(name="Late", slug="late")  # e.g. just added in the admin
    with tracking_context(team="late"):
        after = ask(openai)

    assert event_for(before).metadata == {"unknown_team": "late"}
    assert event_for(after).team == team


@needs_shared_db  # foreign keys are checked at commit
def test_event_is_kept_when_its_user_or_team_no_longer_exists(openai, fake, django_user_model):
    team = Team.objects.create(name="Search", slug="search")
    old_team = Team.objects.create(name="Old", slug="old")
    ann = django_user_model.objects.create_user("ann", "ann@example.com")
    bob = django_user_model.objects.create_user("bob", "bob@example.com")
    django_user_model.objects.filter(pk=bob.pk).delete()  # bob keeps his pk
    Team.objects.filter(pk=old_team.pk).delete()

    with tracking_context(user=ann, team=team):
        both_exist = ask(openai)
    with tracking_context(user=bob, team=team):
        user_gone = ask(openai)
    with tracking_context(user=ann, team=old_team):
        team_gone = ask(openai)

    event = event_for(both_exist)
    assert (event.user, event.team) == (ann, team)
    event = event_for(user_gone)
    assert event.user is None
    assert (event.end_user_id, event.end_user_email) == (str(bob.pk), "bob@example.com")
    assert event.team == team  # only the broken link is dropped
    event = event_for(team_gone)
    assert (event.user, event.team) == (ann, None)


@needs_shared_db
def test_over_long_values_are_truncated_not_lost(openai, fake):
    # A request id comes from a client's X-Request-ID header; PostgreSQL refuses a value
    # longer than the column, which must not cost the event (or the batch it is in).
    with tracking_context(feature="f" * 150, request_id="r" * 300, step="s" * 250):
        resp = ask(openai)

    event = event_for(resp)
    assert (event.feature, event.request_id, event.step) == ("f" * 100, "r" * 255, "s" * 200)


# -- fail-open -------------------------------------------------------------------------------


def _broken_record(record):
    raise RuntimeError("recorder bug")


@pytest.mark.parametrize("breakage", ["record-raises", "recorder-cannot-be-built"])
def test_a_broken_recorder_never_breaks_the_llm_call(openai, fake, monkeypatch, caplog, breakage):
    fake.enqueue(FakeReply(text="still here", input_tokens=10, output_tokens=3))
    if breakage == "record-raises":
        overrides = {"RAISE_ERRORS": False}
    else:
        overrides = {"RAISE_ERRORS": False, "RECORDER": "fluxgate_django.no_such.Recorder"}

    with fluxgate_overrides(**overrides):
        if breakage == "record-raises":
            monkeypatch.setattr(get_recorder(), "record", _broken_record)
        resp = ask(openai)

    assert resp.choices[0].message.content == "still here"
    assert resp.fluxgate.status is Status.SUCCESS
    errors = [r for r in caplog.records if r.name == "fluxgate" and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "recording" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert Event.objects.count() == 0


def test_a_broken_recorder_raises_under_raise_errors(openai, fake, monkeypatch):
    # tests/settings.py turns RAISE_ERRORS on so that FluxGate's own bugs fail tests.
    monkeypatch.setattr(get_recorder(), "record", _broken_record)

    with pytest.raises(RuntimeError, match="recorder bug"):
        ask(openai)


# -- process exit and fork (subprocesses running the thread recorder for real) ---------------

CHILD_PRELUDE = """
import json, os, sys, threading
import django
django.setup()
import openai
from fluxgate_django import track_openai, tracking_context
from fluxgate_django.recording import get_recorder

def ask(feature, n):
    client = track_openai(openai.OpenAI(
        api_key="sk-test", base_url=os.environ["FAKE_OPENAI_URL"], max_retries=0))
    with tracking_context(feature=feature):
        return [
            str(client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            ).fluxgate.tracking_id)
            for _ in range(n)
        ]
"""

EXIT_SCRIPT = """
from fluxgate_django.models import Event
ids = ask("exit", 5)
assert type(get_recorder()).__name__ == "ThreadRecorder"
assert Event.objects.filter(feature="exit").count() == 0  # all still queued
print(json.dumps(ids))
# No flush(): the recorder must write them as the interpreter exits.
"""

FORK_SCRIPT = """
from django.db import connections
from fluxgate_django.recording import thread as thread_module

writes = []
real_write = thread_module.write_events

def spy(records, **kwargs):
    writes.append({
        "pid": os.getpid(),
        "thread": threading.get_ident(),
        "features": sorted({r.feature for r in records}),
    })
    return real_write(records, **kwargs)

thread_module.write_events = spy
recorder = get_recorder()
ask("parent", 2)  # queued in the parent, its writer thread running
parent_writers = list(recorder._threads)
connections.close_all()

pid = os.fork()
if pid == 0:
    code = 1
    try:
        ask("child", 3)
        flushed = recorder.flush(timeout=10)
        print("CHILD " + json.dumps({
            "pid": os.getpid(),
            "flushed": flushed,
            "writers": [t.ident for t in recorder._threads],
            "writer_is_parents": any(t in parent_writers for t in recorder._threads),
            "writes": writes,
        }), flush=True)
        code = 0
    finally:
        os._exit(code)

_, status = os.waitpid(pid, 0)
flushed = recorder.flush(timeout=10)
print("PARENT " + json.dumps({
    "pid": os.getpid(),
    "child_exit": os.waitstatus_to_exitcode(status),
    "flushed": flushed,
    "writers": [t.ident for t in recorder._threads],
    "writes": writes,
}), flush=True)
"""


def run_python(code: str, env: dict[str, str], timeout: float = 60) -> str:
    full_env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings_thread", **env}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory):
    """A migrated SQLite file, copied by each test that needs one."""
    path = tmp_path_factory.mktemp("fluxgate-db") / "template.sqlite3"
    run_python(
        "import django; django.setup();"
        "from django.core.management import call_command; call_command('migrate', verbosity=0)",
        {"FLUXGATE_TEST_SQLITE": str(path), "DATABASE_URL": ""},
    )
    return path


class ChildDatabase:
    """Where a subprocess writes, and how this test process counts what it wrote."""

    def __init__(self, env: dict[str, str], sqlite_path: Path | None = None) -> None:
        self.env = env
        self.sqlite_path = sqlite_path

    def tracking_ids(self, feature: str) -> list[str]:
        if self.sqlite_path is None:
            ids = Event.objects.filter(feature=feature).values_list("tracking_id", flat=True)
            return sorted(str(i) for i in ids)
        with sqlite3.connect(self.sqlite_path) as db:
            rows = db.execute(
                f"SELECT tracking_id FROM {Event._meta.db_table} WHERE feature = ?", (feature,)
            ).fetchall()
        return sorted(str(uuid.UUID(r[0])) for r in rows)


@pytest.fixture(params=["sqlite-file", "postgresql"])
def child_db(request, tmp_path, fake):
    env = {"FAKE_OPENAI_URL": fake.openai_base_url, "FLUXGATE_TEST_SPOOL_DIR": str(tmp_path)}
    if request.param == "postgresql":
        if connection.vendor != "postgresql":
            pytest.skip("needs PostgreSQL (DATABASE_URL=postgres://...)")
        request.getfixturevalue("transactional_db")  # the subprocess must see committed rows
        s = connection.settings_dict
        auth = quote(s["USER"]) + (f":{quote(s['PASSWORD'])}" if s.get("PASSWORD") else "")
        url = f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"
        return ChildDatabase({**env, "DATABASE_URL": url})
    path = tmp_path / "db.sqlite3"
    shutil.copy(request.getfixturevalue("sqlite_template"), path)
    return ChildDatabase({**env, "FLUXGATE_TEST_SQLITE": str(path), "DATABASE_URL": ""}, path)


@pytest.mark.django_db(transaction=True)  # a child process writes: flush the tables after
def test_queued_events_are_written_at_interpreter_exit(child_db):
    out = run_python(CHILD_PRELUDE + EXIT_SCRIPT, child_db.env)

    ids = json.loads(out.strip().splitlines()[-1])
    assert len(ids) == 5
    assert child_db.tracking_ids("exit") == sorted(ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is not available on this OS")
@pytest.mark.django_db(transaction=True)  # a child process writes: flush the tables after
def test_a_forked_child_writes_its_events_with_its_own_thread(child_db):
    out = run_python(CHILD_PRELUDE + FORK_SCRIPT, child_db.env)

    reports = dict(line.split(" ", 1) for line in out.splitlines() if line.split(" ")[0].isupper())
    child, parent = json.loads(reports["CHILD"]), json.loads(reports["PARENT"])
    assert parent["child_exit"] == 0
    assert child["flushed"] and parent["flushed"], (child, parent)
    assert child["pid"] != parent["pid"]
    # The child started its own writer threads and wrote only its own events with them ...
    assert not child["writer_is_parents"]
    assert child["writes"]
    assert all(
        w["pid"] == child["pid"] and w["thread"] in child["writers"] and w["features"] == ["child"]
        for w in child["writes"]
    )
    # ... while the events the parent had queued before the fork were the parent's to write.
    assert parent["writes"]
    assert all(w["pid"] == parent["pid"] and w["features"] == ["parent"] for w in parent["writes"])
    assert len(child_db.tracking_ids("child")) == 3
    assert len(child_db.tracking_ids("parent")) == 2


# -- batches (the ingest API's hand-over) -------------------------------------------------------


def _unpriced(model: str, feature: str = "batch") -> Any:
    info = CallInfo(provider="openai", operation="chat", requested_model=model, model=model)
    return build(info, Usage(100, 20), TrackingContext(feature=feature), latency_ms=3.0)


@pytest.mark.django_db(transaction=True)
def test_record_batch_queues_a_batch_in_order_and_overflows_as_record_does():
    """The thread recorder takes a batch in one step while its queue has room, in order;
    past ``MAX_QUEUE_SIZE`` each record goes where :meth:`record` sends it (the overflow
    buffer), and every one is written once."""
    with fluxgate_overrides(**{**THREAD, "MAX_QUEUE_SIZE": 25}):
        recorder = get_recorder()
        with pytest.MonkeyPatch.context() as m:
            m.setattr(recorder, "_drain", lambda: None)  # (the writers are stuck)
            recorder.record(price_record(_unpriced("gpt-4o")))  # (starts the writers)
            first = [price_record(_unpriced("gpt-4o")) for _ in range(20)]
            recorder.record_batch(first)
            assert list(recorder._queue)[-20:] == first
            more = [price_record(_unpriced("gpt-4o")) for _ in range(10)]
            recorder.record_batch(more)  # (room for 4 of them)
            assert len(recorder._queue) == 25
            assert list(recorder._queue)[-4:] == more[:4]
            assert recorder._wait_overflow(timeout=30)  # the other 6 spooled
            assert spool.pending_events() == 6
        assert recorder.flush(timeout=30)
    stored = list(Event.objects.values_list("tracking_id", flat=True))
    assert len(stored) == len(set(stored)) == 31  # each once
    assert {r.tracking_id for r in [*first, *more]} <= set(stored)


@pytest.mark.parametrize("raise_errors", [False, True])
def test_a_batch_whose_pricing_fails_for_one_record_keeps_it_unpriced(
    monkeypatch, raise_errors, caplog
):
    """``submit_batch`` finishes a batch under one guard: a record whose pricing raises is
    logged and stored unpriced (``unknown``), the records after it are priced as usual —
    or, under ``RAISE_ERRORS``, the error is raised."""
    from fluxgate_django import pipeline

    real = pipeline.calculate_cost

    def calculate(provider, model, usage, **kwargs):
        if model == "boom":
            raise RuntimeError("a broken price")
        return real(provider, model, usage, **kwargs)

    monkeypatch.setattr(pipeline, "calculate_cost", calculate)
    records = [_unpriced("gpt-4o", "a"), _unpriced("boom", "b"), _unpriced("gpt-4o-mini", "c")]
    with fluxgate_overrides(RECORDER="sync", RAISE_ERRORS=raise_errors):
        if raise_errors:
            with pytest.raises(RuntimeError, match="a broken price"):
                pipeline.submit_batch(records)
            return
        with caplog.at_level(logging.ERROR, logger="fluxgate"):
            pipeline.submit_batch(records)
    assert [r.message for r in caplog.records].count(
        "FluxGate internal error during pricing (the LLM call is unaffected)"
    ) == 1
    costs = dict(Event.objects.values_list("feature", "cost_source"))
    assert costs == {"a": "genai-prices", "b": "unknown", "c": "genai-prices"}
    assert (
        Event.objects.get(feature="c").cost_usd
        == calculate_cost("openai", "gpt-4o-mini", Usage(100, 20)).usd
    )


def test_copy_rows_encode_json_as_json_dumps_does():
    """``COPY`` rows (into ``jsonb`` columns) encode a JSON column's value as
    ``json.dumps(value, cls=encoder)`` does — exactly, with the standard library's C
    encoder built once per value; or, with orjson and no encoder of the field's own, as
    the same JSON value (a value orjson does not take: the standard library's text)."""
    import datetime as dt

    from django.core.serializers.json import DjangoJSONEncoder

    from fluxgate_django.recording import sql

    values = [
        {"a": 1, "b": [1.5, None, True, "é\n\\", {"x": -0.0}]},
        "text",
        ["t"],
        {"k": {"deep": [{"deeper": []}]}},
        3.25,
        {"big": 1 << 70},
        {"lone": "\ud800"},
    ]
    special = {"u": uuid.UUID(int=5), "d": Decimal("1.50"), "t": dt.datetime(2024, 1, 1, 12)}
    for encoder in (None, DjangoJSONEncoder):
        standard = sql._standard_json_dumps(encoder)
        for value in [*values, {"nan": float("nan")}]:
            assert standard(value) == json.dumps(value, cls=encoder)
        dumps = sql._json_dumps(encoder)
        for value in values:
            assert json.loads(dumps(value)) == json.loads(json.dumps(value, cls=encoder))
            assert isinstance(dumps(value), str)
    assert sql._json_dumps(DjangoJSONEncoder)(special) == json.dumps(special, cls=DjangoJSONEncoder)
    with pytest.raises(TypeError):
        sql._json_dumps(None)(special)
    circular: dict[str, Any] = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular"):
        sql._standard_json_dumps(None)(circular)
    assert sql._standard_json_dumps(None)({"after": "a failure"}) == '{"after": "a failure"}'


@pytest.mark.django_db(transaction=True)
def test_times_in_any_zone_are_stored_to_the_microsecond():
    """A batch big enough for ``COPY`` (PostgreSQL: datetimes sent as ISO text) keeps each
    event's instant exactly, whatever its time zone."""
    import datetime as dt
    import zoneinfo

    zones = [
        dt.timezone.utc,
        dt.timezone(dt.timedelta(hours=5, minutes=30)),
        zoneinfo.ZoneInfo("America/New_York"),
    ]
    records = []
    for n in range(120):
        record = price_record(_unpriced("gpt-4o", "zones"))
        record.created_at = dt.datetime(2026, 1, 2, 3, 4, 5, n * 7919, tzinfo=zones[n % 3])
        records.append(record)
    assert write_events(records) == 120
    stored = dict(Event.objects.filter(feature="zones").values_list("tracking_id", "created_at"))
    assert {r.tracking_id: r.created_at for r in records} == stored
