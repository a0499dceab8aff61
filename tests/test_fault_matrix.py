"""The fault matrix: real faults injected between FluxGate and PostgreSQL, each row ending
with exactly N events stored, no duplicate, every event counted once by the rollups, and
every budget's spend equal to the sum of its events' costs.

Connections are cut, stalled and refused by :class:`tests.tcp_proxy.TcpProxy`, a loopback
proxy every new database connection of this process goes through; nothing stops the
server. Rows:

* a connection cut in the middle of a ``COPY`` (psycopg's own error, which ``except
  DatabaseError`` used to miss: the batch was dropped);
* a connection cut during ``COMMIT``: before the server has it, and after it committed
  with the reply lost;
* a stalled connection (the proxy stops forwarding; the write's watchdog shuts it);
* the database down and back: budgeted calls in the same long-lived threads succeed
  again within seconds; a team without a budget is never refused;
* a poison record the database refuses (NUL in JSON, NUL in text, a cost the spend
  counter can't hold): the batch is bisected, N-1 stored, 1 dead letter.

Each prints ``N / stored / duplicates``. All rows together take well under a minute.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.db import OperationalError, connection
from django.db.models import Count, Sum

import fluxgate_django
from fluxgate_django import Status, track_openai, tracking_context
from fluxgate_django.budgets import check_budget
from fluxgate_django.context import TrackingContext
from fluxgate_django.exceptions import BudgetStoreUnavailable
from fluxgate_django.models import (
    Budget,
    DeadLetter,
    Event,
    SpendCounter,
    Team,
    UsageRollup,
    to_units,
)
from fluxgate_django.recording import get_recorder, spool, sql, stalls, write_events
from fluxgate_django.testing import DEFAULT_TEXT
from tests import services
from tests.helpers import MSGS, fluxgate_overrides
from tests.services import make_record, wait_until
from tests.tcp_proxy import TcpProxy

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("spool_dir"),
]


def require_postgres(why: str) -> None:
    if connection.vendor != "postgresql":
        pytest.skip(f"{why}: run with DATABASE_URL=postgres://... (CI does)")


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    require_postgres(
        "cuts and stalls real PostgreSQL connections through a TCP proxy (SQLite has no "
        "connection to cut)"
    )
    proxy = TcpProxy(services.host_port(services.database_url(), 5432))
    try:
        yield proxy
    finally:
        proxy.close()


@contextlib.contextmanager
def through(proxy: TcpProxy, **options: Any) -> Iterator[None]:
    """Every new database connection of this process (every thread) goes through
    ``proxy``, with these extra connection ``options`` (e.g. ``connect_timeout``)."""
    settings = connection.settings_dict  # shared by every thread's connection
    saved = settings["HOST"], settings["PORT"], settings.get("OPTIONS")
    connection.close()
    settings["HOST"], settings["PORT"] = "127.0.0.1", str(proxy.port)
    settings["OPTIONS"] = {**(saved[2] or {}), **options}
    try:
        yield
    finally:
        settings["HOST"], settings["PORT"], settings["OPTIONS"] = saved
        connection.close()


def budgeted_team(slug: str) -> Budget:
    team = Team.objects.create(name=slug, slug=slug)
    return Budget.objects.create(team=team, period="day", limit_usd=Decimal("100000"))


def reserved_records(slug: str, n: int) -> list[Any]:
    """``n`` records of tracked calls that reserved their estimate on the team's budget,
    not settled yet: the write that stores each one settles it."""
    records = []
    for _ in range(n):
        reservation = check_budget(
            TrackingContext(team=slug), "openai", "gpt-4o", input_tokens=14, max_output_tokens=50
        )
        assert reservation is not None
        records.append(make_record(team=slug, budget_reservation=reservation.as_record_field()))
    return records


class Once:
    """Runs ``action`` the ``at``-th time :meth:`tick` is called from a FluxGate writer
    thread (named ``fluxgate-…``)."""

    def __init__(self, action: Callable[..., Any], at: int = 1) -> None:
        self.action = action
        self.at = at
        self.calls = 0
        self.fired = False

    def tick(self, *args: Any) -> None:
        if self.fired or not threading.current_thread().name.startswith("fluxgate-"):
            return
        self.calls += 1
        if self.calls == self.at:
            self.fired = True
            self.action(*args)


def in_copy(monkeypatch: Any, once: Once) -> None:
    """``once`` ticks at each row a writer thread sends in a ``COPY``."""
    copy_row = sql._Inserter.copy_row

    def copy_row_and_tick(self: Any, row: list[Any]) -> list[Any]:
        once.tick()
        return copy_row(self, row)

    monkeypatch.setattr(sql._Inserter, "copy_row", copy_row_and_tick)


def client_port(wrapper: Any) -> int:
    """The local port of a Django connection's socket (the proxy's peer port for it)."""
    sock = socket.socket(fileno=os.dup(wrapper.connection.pgconn.socket))
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


def spooled(monkeypatch: Any) -> list[int]:
    """The sizes of the batches the writer spools from now on."""
    sizes: list[int] = []
    append = spool.append

    def counting_append(records: Any) -> int:
        sizes.append(len(records))
        return append(records)

    monkeypatch.setattr(spool, "append", counting_append)
    return sizes


def record_all(records: list[Any]) -> None:
    recorder = get_recorder()
    for record in records:
        recorder.record(record)


def replay_what_was_spooled() -> int:
    """What the next write, or the periodic replay task, does with a spooled batch."""
    return spool.replay(write_events) if spool.has_pending() else 0


def assert_row(
    capsys: Any,
    name: str,
    ids: set[uuid.UUID],
    *budgets: Budget,
    note: str = "",
    dead: int = 0,
    in_flight_units: int = 0,
) -> None:
    """Exactly the events ``ids``, each once, counted once by the rollups; ``dead`` dead
    letters; every budget's spend the sum of its events' costs, and nothing left reserved
    (but ``in_flight_units``: a reservation whose reply a cut lost stays reserved until
    ``fluxgate_budgets --reconcile``, as documented)."""
    rows = Event.objects.count()
    distinct = Event.objects.values("tracking_id").distinct().count()
    repeated = Event.objects.values("tracking_id").annotate(n=Count("id")).filter(n__gt=1)
    with capsys.disabled():
        print(
            f"\n[{name}] N {len(ids)} / stored {rows} / duplicates {rows - distinct}"
            f" / dead letters {DeadLetter.objects.count()}" + (f" ({note})" if note else ""),
            flush=True,
        )
    assert not repeated.exists()
    assert set(Event.objects.values_list("tracking_id", flat=True)) == ids
    assert rows == len(ids)
    assert DeadLetter.objects.count() == dead
    assert (UsageRollup.objects.aggregate(n=Sum("requests"))["n"] or 0) == rows
    for budget in budgets:
        counter = SpendCounter.objects.get(budget=budget)
        costs = Event.objects.filter(team_id=budget.team_id).values_list("cost_usd", flat=True)
        assert counter.spent_units == sum(to_units(c) for c in costs if c is not None)
        assert 0 <= counter.reserved_units <= in_flight_units, budget.team.slug


THREAD = {"RECORDER": "thread", "FLUSH_INTERVAL": 60, "BATCH_SIZE": 500, "RAISE_ERRORS": True}


# -- cuts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("during", ["copy", "insert-select"])
def test_a_connection_cut_while_a_batch_is_written(proxy, monkeypatch, capsys, during):
    """The audit's first row: psycopg's own error from ``COPY`` escaped ``except
    DatabaseError`` and the batch was dropped. Now a cut anywhere in the write — in the
    middle of the ``COPY`` into the staging table, or in the ``INSERT … SELECT`` from it —
    is a connection failure: the broken connection is discarded and the batch written
    again on a new one."""
    from django.db.backends.utils import CursorWrapper

    budget = budgeted_team("cut-copy")
    records = reserved_records("cut-copy", 1000)  # two batches of 500: COPY
    if during == "copy":
        cut = Once(lambda: proxy.sever(), at=200)  # at the 200th row of the first COPY
        in_copy(monkeypatch, cut)
    else:
        cut = Once(lambda: proxy.sever())
        execute = CursorWrapper.execute

        def execute_with_cut(self: Any, query: str, params: Any = None) -> Any:
            if query.startswith("INSERT INTO") and f"FROM {sql.STAGING}" in query.replace('"', ""):
                cut.tick()
            return execute(self, query, params)

        monkeypatch.setattr(CursorWrapper, "execute", execute_with_cut)
    spools = spooled(monkeypatch)
    with through(proxy), fluxgate_overrides(**THREAD):
        record_all(records)
        assert fluxgate_django.flush(timeout=30)
    assert cut.fired
    assert spools == []  # retried on a new connection, not spooled
    assert_row(capsys, f"cut during {during}", {r.tracking_id for r in records}, budget)


@pytest.mark.parametrize("when", ["before-the-server-has-it", "after-it-committed"])
def test_a_connection_cut_during_commit(proxy, monkeypatch, capsys, when):
    """``before-the-server-has-it``: the server sees the connection drop and rolls back;
    ``after-it-committed``: the server committed, the reply is lost (the proxy holds it,
    then cuts). Either way the client can't tell: it writes the batch again, which stores
    what is missing and settles nothing twice."""
    from django.db.backends.postgresql.base import DatabaseWrapper

    budget = budgeted_team("cut-commit")
    records = reserved_records("cut-commit", 120)  # batches of 60: COPY
    direct = services.database_url()
    real_commit = DatabaseWrapper._commit
    committed_first = threading.Event()

    def cut(wrapper: Any) -> None:
        port = client_port(wrapper)
        if when == "before-the-server-has-it":
            proxy.sever(port)
            return
        proxy.stall(direction="down", client_port=port)  # the server's replies held

        def cut_once_committed() -> None:
            import psycopg

            with psycopg.connect(direct, autocommit=True) as conn:
                query = "SELECT count(*) FROM fluxgate_django_event"
                if wait_until(lambda: conn.execute(query).fetchone()[0] > 0, 10, 0.01):
                    committed_first.set()
            proxy.sever(port)

        threading.Thread(target=cut_once_committed, daemon=True).start()

    cutter = Once(cut)

    def commit(wrapper: Any) -> Any:
        cutter.tick(wrapper)
        return real_commit(wrapper)

    monkeypatch.setattr(DatabaseWrapper, "_commit", commit)
    spools = spooled(monkeypatch)
    with through(proxy), fluxgate_overrides(**{**THREAD, "BATCH_SIZE": 60}):
        record_all(records)
        assert fluxgate_django.flush(timeout=30)
    assert cutter.fired
    if when == "after-it-committed":
        assert committed_first.is_set()
    assert spools == []  # retried on a new connection, not spooled
    assert_row(capsys, f"cut during COMMIT, {when}", {r.tracking_id for r in records}, budget)


@pytest.mark.parametrize("when", ["before-the-server-has-it", "after-it-committed"])
def test_a_connection_cut_during_the_commit_of_a_calls_settlement(
    proxy, fake, monkeypatch, capsys, when
):
    """A call's reservation is settled at its end, in the caller's thread, by one
    autocommit statement; the connection is cut before the server has it, or once it has
    committed and before its reply is back. The caller can't tell which: it used to settle
    it again with the event (spend counted twice, seen in CI). The statement inserts the
    call's settlement token, so the write's retry of it is a no-op if it committed."""
    import openai

    from fluxgate_django import ledger

    budget = budgeted_team("cut-settle")
    direct = services.database_url()
    real_settle = ledger.settle_once
    fired: list[int] = []

    def spent() -> int:
        import psycopg

        with psycopg.connect(direct, autocommit=True) as conn:
            query = "SELECT spent_units FROM fluxgate_django_spendcounter WHERE budget_id = %s"
            row = conn.execute(query, [budget.pk]).fetchone()
            return 0 if row is None else int(row[0])

    def settle_once(records: Any) -> Any:
        if threading.current_thread().name == "caller" and not fired:
            port = client_port(connection)
            fired.append(port)
            if when == "before-the-server-has-it":
                proxy.sever(port)
            else:
                proxy.stall(direction="down", client_port=port)  # the reply is held
                before = spent()

                def cut_once_committed() -> None:
                    wait_until(lambda: spent() > before, 10, 0.01)
                    proxy.sever(port)

                threading.Thread(target=cut_once_committed, daemon=True).start()
        return real_settle(records)

    monkeypatch.setattr(ledger, "settle_once", settle_once)
    ids: set[uuid.UUID] = set()

    def calls() -> None:
        client = track_openai(
            openai.OpenAI(api_key="sk-test-key", base_url=fake.openai_base_url, max_retries=0)
        )
        with tracking_context(team="cut-settle"):
            for _ in range(6):
                response = client.chat.completions.create(
                    model="gpt-4o-mini", messages=MSGS, max_tokens=20
                )
                ids.add(response.fluxgate.tracking_id)
        connection.close()

    with through(proxy), fluxgate_overrides(**THREAD):
        caller = threading.Thread(target=calls, name="caller")
        caller.start()
        caller.join(60)
        assert fluxgate_django.flush(timeout=30)
    assert fired
    assert len(ids) == 6
    assert_row(capsys, f"cut during a settlement's COMMIT, {when}", ids, budget)


def test_a_stalled_connection(proxy, monkeypatch, capsys):
    """In the middle of a ``COPY`` the writer's connection stops moving bytes for good —
    no error, no close: a hung server, a black-holed path — and new connections stall
    too, for 2.5 s. Without the write's watchdog the writer would wait forever; it shuts
    the stalled socket, the batch is retried on new connections (spooled if they don't
    answer in time) and stored once the database answers again."""
    monkeypatch.setattr(stalls, "STALL_SECONDS", 1.0)
    budget = budgeted_team("stall")
    records = reserved_records("stall", 1000)
    began: list[float] = []

    def stall() -> None:
        proxy.stall(client_port=client_port(connection))  # this one, for good
        proxy.stall()  # and new ones, for a while
        began.append(time.monotonic())
        timer = threading.Timer(2.5, proxy.restore)
        timer.daemon = True
        timer.start()

    stalled = Once(stall, at=200)
    in_copy(monkeypatch, stalled)
    with through(proxy, connect_timeout=1), fluxgate_overrides(**THREAD):
        record_all(records)
        assert fluxgate_django.flush(timeout=30)
        flushed = time.monotonic() - began[0]
        replayed = replay_what_was_spooled()
    assert stalled.fired
    assert_row(
        capsys,
        "stalled connection",
        {r.tracking_id for r in records},
        budget,
        note=f"flushed {flushed:.1f} s after the stall began; {replayed} replayed from the spool",
    )


def test_a_restart_between_calls_is_invisible_to_a_long_lived_process(proxy, monkeypatch, capsys):
    """A long-lived process (a script, a management command: no request cycle closes its
    connection) whose idle connection the server dropped — a restart, a failover, an idle
    timeout. The next budgeted call is not refused: the guard discards the dead connection
    and asks again on a new one; the next write (sync recorder, in the caller) is retried
    the same way, not spooled."""
    budget = budgeted_team("restart")
    spools = spooled(monkeypatch)
    records = []
    with through(proxy), fluxgate_overrides(RECORDER="sync", RAISE_ERRORS=True):
        for _ in range(3):
            assert proxy.sever() >= 1 or not records  # the server drops this connection
            reservation = check_budget(
                TrackingContext(team="restart"),
                "openai",
                "gpt-4o",
                input_tokens=14,
                max_output_tokens=50,
            )
            assert reservation is not None
            record = make_record(team="restart", budget_reservation=reservation.as_record_field())
            proxy.sever()
            get_recorder().record(record)
            records.append(record)
        assert fluxgate_django.flush(timeout=10)
    assert spools == []
    assert_row(capsys, "restart between calls", {r.tracking_id for r in records}, budget)


def test_a_stalled_connection_under_a_budget_check(proxy, monkeypatch, capsys):
    """The caller's own connection stops answering in the middle of a budget check (the
    reservation's UPDATE is sent, no reply ever comes). The call is not stuck: the
    watchdog shuts the socket, the guard asks again on a new connection, and the call
    goes ahead with its reservation."""
    monkeypatch.setattr(stalls, "STALL_SECONDS", 1.0)
    budget = budgeted_team("stall-budget")

    def check() -> Any:
        return check_budget(
            TrackingContext(team="stall-budget"),
            "openai",
            "gpt-4o",
            input_tokens=14,
            max_output_tokens=50,
        )

    with through(proxy), fluxgate_overrides(RECORDER="sync", RAISE_ERRORS=True):
        check().release()  # (connected, caches warm: the next check is one UPDATE)
        proxy.stall(client_port=client_port(connection))
        started = time.monotonic()
        reservation = check()
        took = time.monotonic() - started
        assert reservation is not None
        record = make_record(team="stall-budget", budget_reservation=reservation.as_record_field())
        get_recorder().record(record)
    assert 0.9 < took < 5.0, took
    assert_row(
        capsys,
        "stalled connection under a budget check",
        {record.tracking_id},
        budget,
        note=f"the check took {took:.1f} s (watchdog at 1 s)",
    )


def test_with_spool_on_error_false_a_connection_failure_raises(proxy, monkeypatch):
    """The Celery task's write (``spool_on_error=False``): the database unreachable is
    raised, as Django's ``OperationalError``, after the short retry — so the task is
    retried by the broker — and nothing is spooled on the worker's disk."""
    Team.objects.create(name="raise", slug="raise")
    records = [make_record(team="raise") for _ in range(100)]
    spools = spooled(monkeypatch)
    with through(proxy, connect_timeout=1):
        proxy.stop()
        started = time.monotonic()
        with pytest.raises(OperationalError):
            write_events(records, spool_on_error=False)
        took = time.monotonic() - started
        proxy.start()
        assert spools == []
        assert write_events(records, spool_on_error=False) == len(records)
    assert took < 2.0
    assert Event.objects.count() == len(records)


def test_a_team_known_to_have_no_budget_is_not_refused_during_an_outage(monkeypatch):
    """The database refuses connections after the budget caches expired: a team last
    seen without a budget (or a slug last seen as no team) is let through; a budgeted
    team, and a team never seen, are refused (fail closed)."""
    budgeted_team("outage-budgeted")
    Team.objects.create(name="free", slug="outage-free")

    def check(slug: str) -> Any:
        return check_budget(
            TrackingContext(team=slug), "openai", "gpt-4o", input_tokens=14, max_output_tokens=50
        )

    with fluxgate_overrides(BUDGET_CACHE_SECONDS=0.05):
        assert check("outage-free") is None
        assert check("no-such-team") is None
        check("outage-budgeted").release()
        time.sleep(0.1)  # every cached answer expired
        with services.database_refused(monkeypatch):
            assert check("outage-free") is None
            assert check("no-such-team") is None
            with pytest.raises(BudgetStoreUnavailable):
                check("outage-budgeted")
            with pytest.raises(BudgetStoreUnavailable):
                check("never-seen")


# -- the database down and back -------------------------------------------------------------


class Caller:
    """A long-lived thread making tracked calls for one team until stopped (no request
    cycle closes its database connection), noting every outcome with its time."""

    def __init__(self, base_url: str, team: str) -> None:
        self.base_url = base_url
        self.team = team
        self.ok: list[tuple[float, uuid.UUID]] = []
        self.refused: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"caller-{team}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import openai

        client = track_openai(
            openai.OpenAI(api_key="sk-test-key", base_url=self.base_url, max_retries=0)
        )
        with tracking_context(team=self.team):
            while not self._stop.is_set():
                try:
                    response = client.chat.completions.create(
                        model="gpt-4o-mini", messages=MSGS, max_tokens=20
                    )
                    assert response.choices[0].message.content == DEFAULT_TEXT
                    assert response.fluxgate.status is Status.SUCCESS
                    self.ok.append((time.monotonic(), response.fluxgate.tracking_id))
                except BudgetStoreUnavailable:
                    self.refused.append(time.monotonic())
                except Exception as exc:  # the test fails on any
                    self.failures.append(repr(exc))
                time.sleep(0.01)
        connection.close()

    def ok_since(self, when: float) -> list[float]:
        return [t for t, _ in self.ok if t >= when]

    def stop(self) -> set[uuid.UUID]:
        self._stop.set()
        self._thread.join(30)
        assert not self.failures, self.failures[:5]
        return {tracking_id for _, tracking_id in self.ok}


def test_the_database_down_and_back(proxy, fake, capsys):
    """Budgets fail closed while PostgreSQL is unreachable, and heal by themselves when
    it is back: the same long-lived threads' budgeted calls succeed again within
    seconds. A team without a budget is not refused meanwhile (its cached budget list
    has expired: the last answer the database gave is used). Events of calls made during
    the outage are spooled and replayed."""
    budget = budgeted_team("down-budgeted")
    Team.objects.create(name="free", slug="down-free")  # no budget
    with (
        through(proxy, connect_timeout=1),
        fluxgate_overrides(
            RECORDER="thread", FLUSH_INTERVAL=0.05, BUDGET_CACHE_SECONDS=0.2, RAISE_ERRORS=True
        ),
    ):
        budgeted = Caller(fake.openai_base_url, "down-budgeted")
        free = Caller(fake.openai_base_url, "down-free")
        try:
            assert wait_until(lambda: budgeted.ok and free.ok, 10)
            down = time.monotonic()
            proxy.stop()
            assert wait_until(lambda: len(budgeted.refused) >= 5, 10)
            time.sleep(1.0)
            free_during = len(free.ok_since(down + 0.3))
            back = time.monotonic()
            proxy.start()
            assert wait_until(lambda: budgeted.ok_since(back), 10), "budgets never healed"
            healed = budgeted.ok_since(back)[0] - back
            assert wait_until(lambda: len(budgeted.ok_since(back)) >= 5, 10)
        finally:
            ids = budgeted.stop() | free.stop()
        assert fluxgate_django.flush(timeout=30)
        replayed = replay_what_was_spooled()
    refused_after = [t for t in budgeted.refused if t > back + healed]
    assert free_during > 0  # the team without a budget went on during the outage
    assert healed < 3.0, healed
    assert not refused_after
    assert_row(
        capsys,
        "database down and back",
        ids,
        budget,
        note=f"{len(budgeted.refused)} budgeted calls refused while down; budgets healed "
        f"{healed:.2f} s after it was back; {free_during} unbudgeted calls made while down; "
        f"{replayed} replayed after the flush",
        in_flight_units=to_units(Decimal("0.01")),
    )


# -- poison --------------------------------------------------------------------------------

SECRET = "what-the-user-said"  # never in a log line
POISONS = {
    # (The record builder makes values storable; these bypass it, as a value it misses
    # would: the writer is the backstop.)
    "nul-in-metadata": lambda r: dataclasses.replace(r, metadata={"note": f"{SECRET}\x00"}),
    "nul-in-text": lambda r: dataclasses.replace(r, feature=f"{SECRET}\x00"),
    "cost-overflows-the-spend-counter": lambda r: dataclasses.replace(
        r, cost_usd=Decimal("1000000000")
    ),
    # Refused before any database sees it (JSON can't encode it): on SQLite too.
    "unencodable-metadata": lambda r: dataclasses.replace(r, metadata={"ids": {1, 2}}),
}


@pytest.mark.parametrize("poison", list(POISONS))
@pytest.mark.parametrize("batch", [200, 20], ids=["copy", "insert"])
def test_a_poison_record_is_quarantined(poison, batch, capsys, caplog, admin_client):
    """One record of a batch that the database refuses: the batch is bisected, every
    other event stored, and the bad one quarantined — a dead letter with the reason,
    listed in the admin, its budget reservation withdrawn."""
    if poison != "unencodable-metadata":
        require_postgres("PostgreSQL refuses these values (SQLite stores them)")
    budget = budgeted_team("poison")
    records = reserved_records("poison", batch)
    bad = batch // 3
    records[bad] = POISONS[poison](records[bad])
    with fluxgate_overrides(**{**THREAD, "BATCH_SIZE": batch}), caplog.at_level("DEBUG"):
        record_all(records)
        assert fluxgate_django.flush(timeout=30)
    assert "quarantined it" in caplog.text
    assert SECRET not in caplog.text
    good = {r.tracking_id for i, r in enumerate(records) if i != bad}
    assert not spool.has_pending()
    letter = DeadLetter.objects.get()
    note = f"reason: {letter.reason[:90]}"
    assert_row(capsys, f"poison: {poison}, {batch}", good, budget, dead=1, note=note)
    assert letter.tracking_id == records[bad].tracking_id
    assert letter.team_id == budget.team_id
    assert letter.reason
    assert str(records[bad].tracking_id) in letter.record
    page = admin_client.get("/admin/fluxgate_django/deadletter/")
    assert page.status_code == 200
    assert str(letter.tracking_id) in page.content.decode()
    page = admin_client.get(f"/admin/fluxgate_django/deadletter/{letter.pk}/change/")
    assert page.status_code == 200
    assert letter.reason.split(":")[0] in page.content.decode()
    # Written again (a Celery retry, a spool replay): nothing stored or withdrawn twice.
    assert write_events(records, spool_on_error=False) == batch
    assert_row(capsys, f"poison: {poison}, {batch}, written again", good, budget, dead=1)


def test_a_quarantined_call_settled_at_its_end_is_taken_back_from_the_budget(capsys):
    """The usual path settles a call's reservation at the end of the call, before its
    event is written. If the database then refuses the event, its charge is taken back
    with the quarantine: spend stays the sum of the stored events' costs."""
    from fluxgate_django import ledger

    require_postgres("PostgreSQL refuses NUL (SQLite stores it)")
    budget = budgeted_team("poison-settled")
    records = reserved_records("poison-settled", 60)
    records[7] = POISONS["nul-in-metadata"](records[7])
    for record in records:
        ledger.settler.settle(record)  # what the pipeline does at the end of each call
        assert record.budget_reservation["settled"]
    spent_before = SpendCounter.objects.get(budget=budget).spent_units
    assert spent_before == sum(to_units(r.cost_usd) for r in records)
    assert write_events(records) == len(records)
    good = {r.tracking_id for i, r in enumerate(records) if i != 7}
    assert_row(capsys, "poison settled at the end of its call", good, budget, dead=1)
