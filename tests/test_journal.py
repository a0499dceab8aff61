"""A process crash loses nothing a caller was told about; backpressure stays off the caller.

* ``kill -9`` of a process recording with the thread recorder, in the middle of a burst of
  real tracked calls: after recovery — by the next process that records, or by
  ``manage.py fluxgate_replay_spool`` — every call that returned is stored, exactly once;
* the journal is cleared as batches commit, a live process's journal is never taken, a
  dead one's is; ``JOURNAL = False`` turns it off; the ingest path returns only once its
  events are in the journal or the database;
* a full queue overflows into a buffer that the ``fluxgate-spooler`` thread spools in
  batches: the caller's thread opens, globs, stats and fsyncs nothing.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fluxgate_django import pipeline
from fluxgate_django.models import Event
from fluxgate_django.recording import get_recorder, journal, private, spool
from fluxgate_django.recording.journal import Journal
from fluxgate_django.recording.write import write_events
from tests import test_recording
from tests.helpers import fluxgate_overrides
from tests.services import database_refused, make_record
from tests.test_recording import CHILD_PRELUDE, ROOT, run_python

# The subprocess fixtures of the recording tests: a SQLite file, or the test PostgreSQL.
child_db = test_recording.child_db
sqlite_template = test_recording.sqlite_template

pytestmark = pytest.mark.usefixtures("spool_dir")  # (tests/conftest.py)

# Records real tracked calls with the thread recorder (small batches: some are written
# during the burst), printing each call's tracking id once it returned; killed with
# SIGKILL by the test (``parent``) or by itself after ``KILL_AFTER`` calls (``self``).
BURST = """
from django.conf import settings
from fluxgate_django.conf import fluxgate_settings
settings.FLUXGATE = {**settings.FLUXGATE, "BATCH_SIZE": 7, "FLUSH_INTERVAL": 0.05}
fluxgate_settings.reload()
import signal
client = track_openai(openai.OpenAI(
    api_key="sk-test", base_url=os.environ["FAKE_OPENAI_URL"], max_retries=0))
kill_after = int(os.environ.get("KILL_AFTER", "0"))
assert type(get_recorder()).__name__ == "ThreadRecorder"
n = 0
with tracking_context(feature="killed"):
    while True:
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        print(reply.fluxgate.tracking_id, flush=True)
        n += 1
        if n == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
"""

RECOVER_BY_COMMAND = """
import django
django.setup()
from django.core.management import call_command
call_command("fluxgate_replay_spool")
"""

RECOVER_BY_NEXT_PROCESS = (
    CHILD_PRELUDE
    + """
ask("next", 1)
assert get_recorder().flush(timeout=30)
"""
)

# The same, with the recovery slowed down (a big journal, a slow disk): the flush must
# still wait for it. (With two writers, the one that took the flush's marker used to
# return while the other was still recovering: seen in CI, 4 of 40 calls lost.)
RECOVER_SLOWLY_BY_NEXT_PROCESS = (
    CHILD_PRELUDE
    + """
import time
from fluxgate_django.recording import spool
recover_journals = spool.recover_journals
def slowly():
    time.sleep(1.0)
    return recover_journals()
spool.recover_journals = slowly
ask("next", 1)
assert get_recorder().flush(timeout=30)
"""
)
RECOVERY = {
    "next process": RECOVER_BY_NEXT_PROCESS,
    "next process, recovering slowly": RECOVER_SLOWLY_BY_NEXT_PROCESS,
    "replay command": RECOVER_BY_COMMAND,
}


def run_killed(env: dict[str, str], kill_after: int | None, calls: int = 40) -> list[str]:
    """Run BURST until it is SIGKILLed; the tracking ids of the calls that returned."""
    full_env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings_thread", **env}
    full_env["PYTHONPATH"] = str(ROOT)
    if kill_after:
        full_env["KILL_AFTER"] = str(kill_after)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD_PRELUDE + BURST],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            acked.append(line.strip())
            if not kill_after and len(acked) == calls:
                proc.send_signal(signal.SIGKILL)  # mid-burst: it is making the next call
                break
        proc.wait(timeout=60)
        acked += [line.strip() for line in proc.stdout]  # (printed before it died)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    return [a for a in acked if a]


@pytest.mark.parametrize("recovered_by", list(RECOVERY))
@pytest.mark.parametrize("killed_by", ["itself", "another process"])
@pytest.mark.django_db(transaction=True)  # child processes write: flush the tables after
def test_kill_9_mid_burst_loses_no_call_that_returned(child_db, recovered_by, killed_by, capsys):
    acked = run_killed(child_db.env, kill_after=30 if killed_by == "itself" else None)
    before = child_db.tracking_ids("killed")  # what the writer committed before the kill

    out = run_python(RECOVERY[recovered_by], child_db.env)

    stored = child_db.tracking_ids("killed")
    with capsys.disabled():
        print(
            f"\nkill -9 ({killed_by}, recovered by the {recovered_by}): {len(acked)} calls "
            f"returned, {len(before)} stored before recovery, {len(stored)} after, "
            f"{len(stored) - len(set(stored))} duplicates"
        )
    assert len(stored) == len(set(stored))  # 0 duplicates
    assert set(acked) <= set(stored)  # every call that returned is stored
    if killed_by == "itself":
        assert sorted(stored) == sorted(acked)  # exactly N
        assert len(acked) == 30
    else:  # (plus, at most, the call it was making: journaled, not yet returned)
        assert len(set(stored) - set(acked)) <= 1
    if recovered_by == "replay command":  # (a batch may have committed just before the kill:
        # its events are replayed too, and skipped by tracking id)
        written = int(re.search(r"(\d+) events written", out).group(1))
        assert len(stored) - len(before) <= written <= len(stored)
    directory = Path(child_db.env["FLUXGATE_TEST_SPOOL_DIR"])
    assert not list((directory / "journal").glob("*.lock"))  # the dead one's is recovered
    assert journal_rows(directory / "journal") == 0
    assert not list(directory.glob("events-*.jsonl"))


# -- the journal, in this process ---------------------------------------------------------------


def journal_rows(directory) -> int:
    """Event lines in the journal files (each file starts with a header line; a live
    segment is allocated in full: zeros after its last line)."""
    return sum(
        max(0, len(p.read_bytes().rstrip(b"\0").splitlines()) - 1)
        for p in directory.glob("*.jsonl")
    )


@pytest.mark.django_db(transaction=True)  # the recorder's writer thread writes
def test_the_journal_holds_each_event_until_its_batch_commits(spool_dir):
    with fluxgate_overrides(RECORDER="thread", FLUSH_INTERVAL=60, BATCH_SIZE=1000):
        records = [pipeline.submit(make_record(feature="journaled")) for _ in range(12)]
        j = journal.get_journal()
        assert j is not None and j.pending() == 12
        assert journal_rows(spool_dir / "journal") == 12  # before the calls returned
        assert mode(spool_dir / "journal") == 0o700
        assert {mode(p) for p in (spool_dir / "journal").iterdir()} == {0o600}
        assert Event.objects.count() == 0

        assert get_recorder().flush(timeout=30)

        assert Event.objects.filter(feature="journaled").count() == 12
        assert j.pending() == 0
        assert journal_rows(spool_dir / "journal") == 0  # cleared once the batch committed
        del records


@pytest.mark.django_db
def test_a_killed_journals_zeros_and_a_torn_last_copy_are_cut_off(spool_dir):
    """A process killed while recording leaves its segment as allocated (zeros after the
    last line), maybe with a record whose copy the kill cut short (that call never
    returned). Recovery keeps every whole line and drops the rest: nothing set aside."""
    directory = spool.spool_dir() / "journal"
    other = Journal(directory)
    records = [make_record(feature="killed") for _ in range(3)]
    assert other.append(records)
    segment = other._segment
    torn = private.encode_row(make_record(feature="torn"))[:40]
    segment.map[segment.used : segment.used + len(torn)] = torn
    os.close(other._lock_fd)  # the kernel drops the lock as the process dies; no close()
    assert segment.path.stat().st_size == journal.SEGMENT_BYTES

    assert spool.recover_journals() == 1
    result = spool.replay_all(write_events)
    assert (result.written, result.rejected) == (3, 0)
    assert set(Event.objects.filter(feature="killed").values_list("tracking_id", flat=True)) == {
        r.tracking_id for r in records
    }
    assert not Event.objects.filter(feature="torn").exists()


@pytest.mark.django_db(transaction=True)
def test_a_full_segment_is_followed_by_a_new_one_at_once(spool_dir, monkeypatch):
    """More records than a segment holds between two batches: the append that finds it
    full starts the next one; every record is journaled, written once, and released."""
    monkeypatch.setattr(journal, "SEGMENT_BYTES", 4096)  # ~12 records a segment
    with fluxgate_overrides(RECORDER="thread", FLUSH_INTERVAL=60, BATCH_SIZE=1000):
        records = [pipeline.submit(make_record(feature="rolled")) for _ in range(100)]
        j = journal.get_journal()
        assert j is not None and j.pending() == 100
        assert journal_rows(spool_dir / "journal") == 100
        assert len(list((spool_dir / "journal").glob("*.jsonl"))) > 5
        assert get_recorder().flush(timeout=30)
        assert Event.objects.filter(feature="rolled").count() == 100
        assert j.pending() == 0
        assert journal_rows(spool_dir / "journal") == 0
        assert len(list((spool_dir / "journal").glob("*.jsonl"))) == 1  # the full ones deleted
        del records


def mode(path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.django_db
def test_a_live_journal_is_never_taken_and_a_dead_ones_is(spool_dir):
    directory = spool.spool_dir() / "journal"
    other = Journal(directory)  # another process's (its lock is held on its own file)
    records = [make_record(feature="orphaned") for _ in range(3)]
    assert other.append(records)

    assert spool.recover_journals() == 0  # alive: not ours to write
    assert spool.replay(write_events) == 0
    assert Event.objects.count() == 0

    other.close()  # it dies with its records unwritten: the lock is released
    assert spool.recover_journals() == 1
    result = spool.replay_all(write_events)
    assert (result.written, result.rejected) == (3, 0)
    assert set(Event.objects.values_list("tracking_id", flat=True)) == {
        r.tracking_id for r in records
    }
    assert not list(directory.glob("*"))  # segments and lock file gone


@pytest.mark.django_db
def test_a_recovered_journal_waits_in_the_spool_while_the_database_is_down(spool_dir, monkeypatch):
    dead = Journal(spool.spool_dir() / "journal")
    records = [make_record(feature="orphaned") for _ in range(3)]
    assert dead.append(records)
    dead.close()

    with database_refused(monkeypatch):
        result = spool.replay_all(write_events)
    assert (result.written, result.rejected) == (0, 0)
    assert result.error.startswith("OperationalError")
    assert spool.pending_events() == 3  # back in the spool (after their header line)

    result = spool.replay_all(write_events)
    assert (result.written, result.rejected, result.error) == (3, 0, "")
    assert Event.objects.filter(feature="orphaned").count() == 3


@pytest.mark.django_db
def test_the_periodic_replay_task_recovers_a_dead_processes_journal(spool_dir):
    pytest.importorskip("celery", reason="the periodic task needs Celery")
    from fluxgate_django.tasks import replay_spool

    dead = Journal(spool.spool_dir() / "journal")
    records = [make_record(feature="orphaned") for _ in range(2)]
    assert dead.append(records)
    dead.close()  # (its process is gone: nothing holds its lock)

    assert replay_spool() == 2  # what the beat schedule runs
    assert Event.objects.filter(feature="orphaned").count() == 2


@pytest.mark.django_db(transaction=True)
def test_journal_off_writes_nothing_to_it(spool_dir):
    with fluxgate_overrides(RECORDER="thread", JOURNAL=False, FLUSH_INTERVAL=60):
        for _ in range(3):
            pipeline.submit(make_record(feature="unjournaled"))
        assert journal.get_journal() is None
        assert not (spool_dir / "journal").exists()
        assert get_recorder().flush(timeout=30)
    assert Event.objects.filter(feature="unjournaled").count() == 3


@pytest.mark.parametrize("journal_on", [True, False])
@pytest.mark.django_db(transaction=True)
def test_an_ingested_batch_is_durable_when_submit_batch_returns(spool_dir, journal_on):
    with fluxgate_overrides(RECORDER="thread", JOURNAL=journal_on, FLUSH_INTERVAL=60):
        records = [make_record(feature="ingested") for _ in range(5)]
        pipeline.submit_batch(records)
        if journal_on:  # in the journal (the API's 202 follows), written later
            assert journal_rows(spool_dir / "journal") == 5
            assert Event.objects.count() == 0
        else:  # no journal: written before it returns
            assert Event.objects.filter(feature="ingested").count() == 5
        assert get_recorder().flush(timeout=30)
    assert Event.objects.filter(feature="ingested").count() == 5


# -- backpressure -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_full_queue_overflows_to_the_spooler_thread_never_to_the_caller(spool_dir, monkeypatch):
    io_threads: list[str] = []
    real_fsync, real_append, real_size = os.fsync, spool.append, spool.size_bytes
    appends: list[int] = []
    globs: list[str] = []

    def fsync(fd):
        io_threads.append(threading.current_thread().name)
        return real_fsync(fd)

    def append(records):
        appends.append(len(records))
        io_threads.append(threading.current_thread().name)
        return real_append(records)

    def size_bytes(directory=None):
        globs.append(threading.current_thread().name)
        return real_size(directory)

    caller = threading.current_thread().name
    with fluxgate_overrides(
        RECORDER="thread", MAX_QUEUE_SIZE=10, BATCH_SIZE=500, FLUSH_INTERVAL=60
    ):
        recorder = get_recorder()
        records = [make_record(feature="overflow") for _ in range(210)]
        with pytest.MonkeyPatch.context() as m:
            m.setattr(os, "fsync", fsync)
            m.setattr(spool, "append", append)
            m.setattr(spool, "size_bytes", size_bytes)
            # The writers are stuck (the database far behind): the queue fills up.
            m.setattr(recorder, "_drain", lambda: None)
            for record in records:
                pipeline.submit(record)
            assert caller not in io_threads  # no spooling, no fsync by the caller
            assert caller not in globs
            assert recorder._wait_overflow(timeout=30)
            assert sum(appends) == 200 and len(appends) < 20  # in batches
            assert set(io_threads) == {"fluxgate-spooler"}
            assert len(globs) <= 1  # the spool's size is counted once, then kept in memory
        assert spool.pending_events() == 200
        assert recorder.flush(timeout=30)  # writes the queue and replays the spool
    stored = list(Event.objects.filter(feature="overflow").values_list("tracking_id", flat=True))
    assert sorted(stored) == sorted(r.tracking_id for r in records)  # exactly 210, no duplicate


# -- the rows' format (version 2) -----------------------------------------------------------


def _v1_lines(records) -> list[bytes]:
    """A journal file as the previous version wrote it: a version 1 header, then each
    record's values in ``EventRecord``'s field order, the id and the time as text."""
    import json

    from fluxgate_django.records import EVENT_RECORD_FIELDS, record_row

    header = json.dumps({"journal": 1, "fields": list(EVENT_RECORD_FIELDS)}, separators=(",", ":"))
    rows = [json.dumps(record_row(r), separators=(",", ":")) for r in records]
    return [private._sealed(header.encode()), *(private._sealed(row.encode()) for row in rows)]


#: The two ways a row is encoded: orjson's (where it is installed), the standard library's.
ENCODERS = pytest.mark.parametrize("orjson", [True, False], ids=["orjson", "json"])


def use_encoder(monkeypatch, orjson: bool) -> None:
    if not orjson:
        monkeypatch.setattr(private, "_orjson_dumps", None)
    elif private._orjson_dumps is None:
        pytest.skip("orjson is not installed")


def comparable(record):
    """``record`` with a NaN duration as text (a NaN is equal to nothing, itself included)."""
    names = ("latency_ms", "time_to_first_token_ms", "stream_duration_ms")
    nans = {n: "NaN" for n in names if getattr(record, n) != getattr(record, n)}
    return dataclasses.replace(record, **nans)


@ENCODERS
@pytest.mark.django_db
def test_a_journal_row_reads_back_as_the_record_it_was(spool_dir, monkeypatch, orjson):
    """Each record of a journal file reads back equal, field by field, whichever encoder
    wrote its row (the standard library's: the id as its integer, a UTC time as
    microseconds): times to the microsecond in their own time zone (a naive one naive),
    money to its last digit, odd text and non-finite durations as they were."""
    use_encoder(monkeypatch, orjson)
    import datetime as dt
    import uuid
    import zoneinfo
    from decimal import Decimal

    from fluxgate_django.models import Team

    team = Team.objects.create(name="Rows", slug="rows")
    utc = dt.timezone.utc
    times = [
        dt.datetime(2026, 3, 1, 12, 0, 0, 999_999, tzinfo=utc),
        dt.datetime(2000, 1, 1, tzinfo=utc),
        dt.datetime(2242, 1, 1, 0, 0, 0, 1, tzinfo=utc),
        dt.datetime(2026, 7, 14, 2, 30, 0, 5, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
        dt.datetime(2026, 3, 1, 12, 0, 0, 7, tzinfo=dt.timezone(dt.timedelta(hours=-7))),
        dt.datetime(2026, 3, 1, 12, 0, 0, 7),  # (USE_TZ = False)
    ]
    odd = [
        {"é": [1, 2.5, None, '\n\\"', "\u2028"]},
        {"big": 1 << 70},  # (more than orjson takes: the standard library's row)
        {"lone": "\ud800"},  # (a surrogate: likewise)
    ]
    durations = [12.5, float("nan"), float("inf"), None, 0.0, 1e-300]
    records = []
    for n, at in enumerate(times):
        record = make_record(feature=f"rows-{n}", team=team if n % 2 else "rows")
        record.created_at = at
        record.tracking_id = uuid.UUID(int=(1 << 128) - 1 - n)
        record.cost_saved_usd = Decimal("0.00000001") if n % 2 else None
        record.metadata = odd[n % len(odd)]
        record.latency_ms = durations[n]
        record.time_to_first_token_ms = durations[-1 - n]
        records.append(record)
    lines = [private.header_line(), *(private.encode_row(r) for r in records)]
    assert b'"journal":2' in lines[0]
    reader = private.LineReader()
    assert reader.read(lines[0]) is None
    for line, record in zip(lines[1:], records, strict=True):
        back = reader.read(line)
        team_value = record.team if record.team == "rows" else team.pk
        expected = dataclasses.replace(record, team=team_value)
        assert comparable(back) == comparable(expected)
        assert back.created_at.utcoffset() == record.created_at.utcoffset()
        assert (back.created_at.tzinfo is None) == (record.created_at.tzinfo is None)


@pytest.mark.django_db
def test_a_journal_of_the_previous_version_is_recovered_as_before(spool_dir):
    """A dead process's segment in the version 1 format (written before an upgrade) is
    recovered and stored like one of today's."""
    directory = spool.spool_dir() / "journal"
    other = Journal(directory)
    records = [make_record(feature="v1") for _ in range(3)]
    data = b"".join(_v1_lines(records))
    segment = other._segment
    segment.map[: len(data)] = data  # (over the version 2 header)
    segment.used = len(data)
    os.close(other._lock_fd)  # the process dies

    assert spool.recover_journals() == 1
    result = spool.replay_all(write_events)
    assert (result.written, result.rejected) == (3, 0)
    assert set(Event.objects.filter(feature="v1").values_list("tracking_id", flat=True)) == {
        r.tracking_id for r in records
    }


@ENCODERS
@pytest.mark.django_db
def test_a_changed_value_in_a_journal_row_fails_its_mac(spool_dir, monkeypatch, orjson):
    use_encoder(monkeypatch, orjson)
    record = make_record(feature="sealed")
    reader = private.LineReader()
    reader.read(private.header_line())
    line = private.encode_row(record)
    assert reader.read(line) == record
    forged = line.replace(b'"sealed"', b'"forged"')
    with pytest.raises(private.ForgedLine):
        reader.read(forged)
    with pytest.raises(private.ForgedLine):
        reader.read(line[:-38] + b"]\n")  # the MAC cut off


def test_a_line_is_sealed_with_the_current_key_after_a_change(settings):
    """The sealing MAC is derived once and forgotten when ``SECRET_KEY`` changes: a line
    sealed after the change verifies with the new key only."""
    settings.SECRET_KEY = "first-key-" + "x" * 40
    body = b'["a",1]'
    first = private._sealed(body)
    settings.SECRET_KEY = "second-key-" + "y" * 40
    second = private._sealed(body)
    assert first != second
    assert private.verified(second) == body
    with pytest.raises(private.ForgedLine):
        private.verified(first)


# -- the caller's path ------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_new_segment_is_made_writable_before_callers_copy_into_it(spool_dir, monkeypatch):
    """At a rotation the writer maps the new segment's first pages (as many as the last
    segment used, twice over) before a caller copies into it; the segment's bytes are
    unchanged, and a kernel that can't do it is left alone (the callers' copies fault)."""
    directory = spool.spool_dir() / "journal"
    j = Journal(directory)
    try:
        records = [make_record(feature="prefaulted") for _ in range(300)]
        assert j.append(records)
        used = j._segment.used
        calls: list[tuple[int, int]] = []
        real = journal._prefault

        def prefault(segment, size):
            calls.append((segment.used, size))
            real(segment, size)

        monkeypatch.setattr(journal, "_prefault", prefault)
        j.rotate()
        assert calls == [(len(private.header_line()), 2 * used)]
        new = j._segment
        assert bytes(new.map[: new.used]) == private.header_line()
        assert bytes(new.map[new.used : new.size]).count(0) == new.size - new.used

        monkeypatch.setattr(journal, "_POPULATE_WRITE", -1)  # (EINVAL, as an old kernel says)
        real(new, 1 << 20)
        assert journal._POPULATE_WRITE is None
        real(new, 1 << 20)  # (then nothing is tried)
    finally:
        j.release(records)
        j.close()


@pytest.mark.django_db
def test_the_callers_path_asks_no_pid_where_fork_hooks_clear_the_journal():
    """``getpid()`` is a system call: where a forked child runs the at-fork hooks (which
    drop the parent's journal and writers), the caller's path does not ask it."""
    if not journal._FORK_HOOKS:
        pytest.skip("no os.register_at_fork")
    j = journal.get_journal()
    assert j is not None
    record = make_record(feature="no-getpid")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(os, "getpid", lambda: pytest.fail("getpid() on the caller's path"))
        assert journal.append_one(record)
    j.release([record])


@pytest.mark.django_db
def test_a_forked_child_journals_into_its_own_journal(spool_dir):
    """The at-fork hook leaves a child without its parent's journal: the child's first
    record opens its own (another lock, other segments), and the parent's is untouched."""
    if not journal._FORK_HOOKS:
        pytest.skip("no os.register_at_fork")
    parent = journal.get_journal()
    assert parent is not None
    record = make_record(feature="child")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            ok = journal.append_one(record)
            child = journal._journal
            mine = child is not None and child is not parent and child.name != parent.name
            os.write(write, f"{ok} {mine} {child.pid if child else 0}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        ok, mine, child_pid = answer.read().split()
    os.waitpid(pid, 0)
    assert (ok, mine, child_pid) == ("True", "True", str(pid))
    assert journal._journal is parent and parent.pid == os.getpid()
    assert parent.pending() == 0  # (the child's record is in the child's journal)
