"""The statements on spend counters: reserve, settle (exactly once), adjust.

A reservation is ONE conditional UPDATE over every counter that applies to a call::

    UPDATE spendcounter SET reserved = reserved + :x
     WHERE id IN (:counters) AND (NOT blocking OR spent + reserved + :x <= limit)
    RETURNING id

The database serialises concurrent updates of a row and re-checks the condition on the
newest row, so N workers together can never reserve past a limit. ``:x`` is the call's
bound, scaled by the counters' ``bound_scale``: how far this window's calls have cost
more than their bound, learned at settlement in every process.

A settlement (reserved -= x, spent += real cost) inserts the call's
:class:`~fluxgate_django.models.SettlementToken` in the same statement and touches the
counters only if the token is new: one that is retried — its connection was cut during
``COMMIT``, so it may or may not have happened — counts once, by construction.

On PostgreSQL each of these is one autocommit statement (one round trip), committed
without waiting for the WAL flush (:data:`_NO_WAIT`); elsewhere a short transaction.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    connections,
    router,
    transaction,
)
from django.utils import timezone

from .money import to_units
from .records import CHARGE_ESTIMATE, CostSource, EventRecord, Status

#: A settlement moves a counter's ``bound_scale`` 2 % of the way back to 1, unless the
#: calls it settles ran further past their bound; a ratio is kept up to MAX_SCALE.
SCALE_DECAY = 0.98
MAX_SCALE = 100.0

#: Commit without waiting for the WAL flush: a reservation is one autocommit statement,
#: and waiting for fsync at each commit caps a budget at a few hundred calls a second on
#: ordinary disks (the flush, not the update, is the cost). Counters are derived data:
#: events are stored durably, and ``manage.py fluxgate_budgets --reconcile`` rebuilds
#: counters from them after a database crash lost their last moments.
#: ``set_config(..., true)`` applies to this statement's own transaction only.
_NO_WAIT = "fluxgate_no_wait AS (SELECT set_config('synchronous_commit', 'off', true))"


def counters_alias() -> str:
    """The database alias the spend counters are updated on."""
    from .models import SpendCounter

    return str(router.db_for_write(SpendCounter))


def _connection() -> tuple[Any, str]:
    from .models import SpendCounter

    conn = connections[counters_alias()]
    return conn, conn.ops.quote_name(SpendCounter._meta.db_table)


def _tokens_table(conn: Any) -> str:
    from .models import SettlementToken

    return str(conn.ops.quote_name(SettlementToken._meta.db_table))


def discard_broken_connections(exc: BaseException | None = None) -> bool:
    """After a database error outside a transaction: close this thread's connections the
    budget statements use, so that the next call opens new ones. True if one was open.

    A long-lived process (a script, a thread pool, a Celery task, a management command)
    has no request cycle to close a connection the server dropped, and Django's own
    check (``close_if_unusable_or_obsolete``) runs only around requests: without this,
    every later call would fail on the dead connection after the database is back. A
    connection inside a transaction (``atomic``) is the caller's to roll back; after a
    data error (a value refused) the connection is fine, and left open.
    """
    if isinstance(exc, DataError | IntegrityError):
        return False
    from .models import Budget, SpendCounter, Team

    aliases = {
        DEFAULT_DB_ALIAS,
        router.db_for_write(SpendCounter),
        router.db_for_read(Budget),
        router.db_for_read(Team),
    }
    closed = False
    for alias in aliases:
        conn = connections[alias]
        if conn.connection is None or conn.in_atomic_block:
            continue
        closed = True
        try:
            conn.close()
        except Exception:  # closing a broken connection can fail too: it is gone either way
            conn.connection = None
    return closed


def _discarding(exc: BaseException) -> None:
    if isinstance(exc, DatabaseError | InterfaceError):
        discard_broken_connections(exc)


# -- outside the caller's transaction --------------------------------------------------------

T = TypeVar("T")

#: How long a budget statement run for a caller in a transaction waits for a row lock
#: (one the caller's own transaction holds would otherwise wait forever).
LOCK_TIMEOUT_MS = 5000

_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_thread = threading.local()


def outside_callers_transaction(work: Callable[[], T]) -> T:
    """Run ``work`` (budget statements of a call: its reservation, its settlement) on a
    connection of its own when the caller is inside a transaction on the counters'
    database (``ATOMIC_REQUESTS``, an ``atomic()`` block), so that the counter row is not
    locked until the caller's transaction ends — which would make every other call of
    the team wait for it — and the caller's rollback does not undo a settlement whose
    event is stored all the same. Elsewhere (no transaction, a test's own, SQLite with
    its one writer) ``work`` runs here."""
    alias = counters_alias()
    conn = connections[alias]
    if not conn.in_atomic_block or conn.vendor == "sqlite":
        return work()
    if all(getattr(block, "_from_testcase", False) for block in conn.atomic_blocks):
        return work()  # (a test's transaction: what it made is visible only to it)
    return in_ledger_thread(work).result()


def in_ledger_thread(work: Callable[[], T]) -> concurrent.futures.Future[T]:
    """Run ``work`` in this process's one ledger thread, on its own connection: for a
    caller in a transaction (above), and for settlements on an event loop, where no
    database I/O may happen (``ledger.settler``)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="fluxgate-ledger"
            )
        executor = _executor
    return executor.submit(_in_ledger_thread, counters_alias(), work)


def _in_ledger_thread(alias: str, work: Callable[[], T]) -> T:
    """``work`` on this thread's connection, kept as the site keeps its own
    (``CONN_MAX_AGE``: 0, Django's default, closes it after each use)."""
    conn = connections[alias]
    conn.ensure_connection()
    if conn.vendor == "postgresql" and getattr(_thread, "connection", None) is not conn.connection:
        with conn.cursor() as cursor:
            cursor.execute("SET lock_timeout = %s", [f"{LOCK_TIMEOUT_MS}ms"])
        _thread.connection = conn.connection
    try:
        return work()
    finally:
        conn.close_if_unusable_or_obsolete()


def _after_fork_in_child() -> None:
    global _executor, _executor_lock
    _executor = None
    _executor_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- reserve -------------------------------------------------------------------------------


def reserve(ids: list[int], units: int, bound: int = 0) -> tuple[set[int], int]:
    """Reserve on counters ``ids``: ``units``, or ``bound`` times the counters'
    ``bound_scale`` where that is more. Returns the counters that took the reservation
    and the units reserved."""
    conn, table = _connection()
    placeholders = ", ".join(["%s"] * len(ids))
    fits = "(NOT c.blocking OR c.spent_units + c.reserved_units + x.units <= c.limit_units)"
    if conn.vendor == "postgresql":
        sql = (
            f"WITH {_NO_WAIT}, x AS (SELECT GREATEST(%s::bigint, CEIL(%s::bigint * "
            f"LEAST(MAX(bound_scale), {MAX_SCALE}))::bigint) AS units FROM {table} "
            f"WHERE id IN ({placeholders})) "
            f"UPDATE {table} AS c SET reserved_units = c.reserved_units + x.units "
            f"FROM fluxgate_no_wait, x WHERE c.id IN ({placeholders}) AND {fits} "
            "RETURNING c.id, x.units"
        )
        with conn.cursor() as cursor:
            cursor.execute(sql, [units, bound, *ids, *ids])
            rows = cursor.fetchall()
        return {row[0] for row in rows}, int(rows[0][1]) if rows else units
    with conn.cursor() as cursor:  # (autocommit: the scale is advisory, read first)
        cursor.execute(f"SELECT MAX(bound_scale) FROM {table} WHERE id IN ({placeholders})", ids)
        found = cursor.fetchone()
    if found and found[0]:
        units = max(units, math.ceil(bound * min(float(found[0]), MAX_SCALE)))
    where = (
        f"id IN ({placeholders}) AND "
        "(NOT blocking OR spent_units + reserved_units + %s <= limit_units)"
    )
    sql = f"UPDATE {table} SET reserved_units = reserved_units + %s WHERE {where}"
    if _update_returning(conn):
        with conn.cursor() as cursor:
            cursor.execute(f"{sql} RETURNING id", [units, *ids, units])
            return {row[0] for row in cursor.fetchall()}, units
    # Databases without UPDATE ... RETURNING: one row at a time, in a transaction.
    taken = set()
    with transaction.atomic(using=conn.alias), conn.cursor() as cursor:
        for counter in ids:
            cursor.execute(
                f"UPDATE {table} SET reserved_units = reserved_units + %s WHERE id = %s AND "
                "(NOT blocking OR spent_units + reserved_units + %s <= limit_units)",
                [units, counter, units],
            )
            if cursor.rowcount:
                taken.add(counter)
    return taken, units


def _update_returning(conn: Any) -> bool:
    if conn.vendor == "postgresql":
        return True
    if conn.vendor == "sqlite":
        import sqlite3

        return sqlite3.sqlite_version_info >= (3, 35)
    return False


# -- adjust (no event: a refusal's other counters, a call that records none) ---------------


def settle_counters(changes: dict[int, tuple[int, int]]) -> None:
    """Apply ``{counter_id: (reserved units to free, units spent)}`` (no token: for
    reservations no event carries)."""
    if not changes:
        return
    conn, table = _connection()
    rows = [(freed, spent, counter) for counter, (freed, spent) in changes.items()]
    try:
        with conn.cursor() as cursor:
            if conn.vendor == "postgresql":
                values = ", ".join(["(%s::bigint, %s::bigint, %s::bigint)"] * len(rows))
                own = "" if conn.in_atomic_block else f"WITH {_NO_WAIT} "
                cursor.execute(
                    f"{own}UPDATE {table} AS c SET reserved_units = c.reserved_units - v.freed, "
                    f"spent_units = c.spent_units + v.spent FROM (VALUES {values}) AS "
                    f"v(freed, spent, id){', fluxgate_no_wait' if own else ''} WHERE c.id = v.id",
                    [value for row in rows for value in row],
                )
                return
            cursor.executemany(
                f"UPDATE {table} SET reserved_units = reserved_units - %s, "
                "spent_units = spent_units + %s WHERE id = %s",
                rows,
            )
    except (DatabaseError, InterfaceError) as exc:
        _discarding(exc)
        raise


# -- settle, once ----------------------------------------------------------------------------


def charge(record: EventRecord) -> int:
    """Units a reserved record spends: its cost; the estimate when usage was not reported
    (a stream read without usage must not slip past budgets); else nothing."""
    reservation = record.budget_reservation or {}
    if record.cost_usd is not None:
        return to_units(record.cost_usd)
    kind = CostSource.of(record.cost_source)
    if kind in CHARGE_ESTIMATE and record.status != Status.ERROR.value:
        return int(reservation.get("estimate_units", 0))
    return 0


def _ratio(record: EventRecord, spent: int) -> float:
    """How far the call's real cost ran past its unscaled bound (0: nothing to learn)."""
    reservation = record.budget_reservation or {}
    bound = int(reservation.get("bound_units") or 0)
    if bound <= 0 or record.cost_usd is None:
        return 0.0
    return min(spent / bound, MAX_SCALE)


def settlement_rows(records: Iterable[EventRecord]) -> list[tuple[str, int, int, int, float]]:
    """``(tracking_id, counter, freed, spent, ratio)`` for each counter each record's
    reservation holds."""
    rows = []
    for record in records:
        reservation = record.budget_reservation
        if not reservation:
            continue
        estimate = int(reservation["estimate_units"])
        spent = charge(record)
        ratio = _ratio(record, spent)
        for counter in reservation["counters"]:
            rows.append((str(record.tracking_id), int(counter), estimate, spent, ratio))
    return rows


def settlement_for(records: Iterable[EventRecord]) -> dict[int, tuple[int, int]]:
    """``{counter: (freed, spent)}`` for the budget reservations these records carry."""
    changes: dict[int, list[int]] = {}
    for _, counter, freed, spent, _ in settlement_rows(records):
        totals = changes.setdefault(counter, [0, 0])
        totals[0] += freed
        totals[1] += spent
    return {c: (freed, spent) for c, (freed, spent) in changes.items()}


def settle_once(records: Sequence[EventRecord]) -> None:
    """Settle the reservations ``records`` carry, each once ever however often this is
    retried: their tokens are inserted in the same statement (or transaction), and only
    records whose token is new touch the counters. It also moves the counters'
    ``bound_scale`` (see :data:`SCALE_DECAY`)."""
    rows = settlement_rows(records)
    if not rows:
        return
    conn, table = _connection()
    try:
        if conn.vendor == "postgresql":
            with conn.cursor() as cursor:
                cursor.execute(*_settle_once_sql(conn, table, rows))
            return
        with transaction.atomic(using=conn.alias):
            new = _insert_tokens(conn, {row[0] for row in rows})
            _apply(conn, table, [row for row in rows if str(uuid.UUID(row[0])) in new])
    except (DatabaseError, InterfaceError) as exc:
        _discarding(exc)
        raise


def _settle_once_sql(
    conn: Any, table: str, rows: list[tuple[str, int, int, int, float]]
) -> tuple[str, list[Any]]:
    """PostgreSQL's one statement for :func:`settle_once`: the token inserted (nothing if
    it is there), and the counters updated only for tokens it inserted."""
    tokens = _tokens_table(conn)
    own = not conn.in_atomic_block  # (else the caller's transaction commits it)
    no_wait = f"{_NO_WAIT}, " if own else ""
    scale = f"1 + (c.bound_scale - 1) * {SCALE_DECAY}"
    if len({row[0] for row in rows}) == 1:
        # One call (the end of a call: the hot path): the same change on each of its
        # counters; the simplest plan (measured 0.26 ms against 0.38 for the general one).
        tracking_id, _, freed, spent, ratio = rows[0]
        ids = [row[1] for row in rows]
        sql = (
            f"WITH {no_wait}t AS (INSERT INTO {tokens} (tracking_id) SELECT %s::uuid"
            f"{' FROM fluxgate_no_wait' if own else ''} ON CONFLICT DO NOTHING RETURNING 1) "
            f"UPDATE {table} AS c SET reserved_units = c.reserved_units - %s::bigint, "
            f"spent_units = c.spent_units + %s::bigint, bound_scale = GREATEST(%s::float8, "
            f"{scale}) FROM t WHERE c.id IN ({', '.join(['%s'] * len(ids))})"
        )
        return sql, [tracking_id, freed, spent, ratio, *ids]
    values = ", ".join(["(%s::uuid, %s::bigint, %s::bigint, %s::bigint, %s::float8)"] * len(rows))
    sql = (
        f"WITH {no_wait}v(tid, id, freed, spent, ratio) AS (VALUES {values}), "
        f"t AS (INSERT INTO {tokens} (tracking_id) SELECT DISTINCT tid FROM v "
        "ON CONFLICT DO NOTHING RETURNING tracking_id), "
        "a AS (SELECT v.id, SUM(v.freed) AS freed, SUM(v.spent) AS spent, "
        "MAX(v.ratio) AS ratio FROM v JOIN t ON t.tracking_id = v.tid GROUP BY v.id) "
        f"UPDATE {table} AS c SET reserved_units = c.reserved_units - a.freed, "
        f"spent_units = c.spent_units + a.spent, bound_scale = GREATEST(a.ratio, {scale}) "
        f"FROM a{', fluxgate_no_wait' if own else ''} WHERE c.id = a.id"
    )
    return sql, [value for row in rows for value in row]


def _insert_tokens(conn: Any, tracking_ids: Iterable[str]) -> set[str]:
    """Insert the tokens not there yet (in the caller's transaction); the ones inserted.
    A write first, so that SQLite takes its write lock at once (a read first could fail
    to turn into a write under concurrency)."""
    from .models import SettlementToken

    wanted = sorted({str(uuid.UUID(str(t))) for t in tracking_ids})
    tokens = _tokens_table(conn)
    value = uuid.UUID if conn.vendor == "postgresql" else (lambda t: uuid.UUID(t).hex)
    if conn.vendor in ("postgresql", "sqlite"):
        new = set()
        with conn.cursor() as cursor:
            for token in wanted:
                cursor.execute(
                    f"INSERT INTO {tokens} (tracking_id, created_at) VALUES (%s, %s) "
                    "ON CONFLICT DO NOTHING",
                    [value(token), conn.ops.adapt_datetimefield_value(timezone.now())],
                )
                if cursor.rowcount:
                    new.add(token)
        return new
    manager = SettlementToken.objects.using(conn.alias)
    there = manager.filter(tracking_id__in=wanted).values_list("tracking_id", flat=True)
    new = set(wanted) - {str(t) for t in there}
    manager.bulk_create([SettlementToken(tracking_id=uuid.UUID(t)) for t in sorted(new)])
    return new


def _apply(conn: Any, table: str, rows: list[tuple[str, int, int, int, float]]) -> None:
    changes: dict[int, list[float]] = {}
    for _, counter, freed, spent, ratio in rows:
        totals = changes.setdefault(counter, [0, 0, 0.0])
        totals[0] += freed
        totals[1] += spent
        totals[2] = max(totals[2], ratio)
    decayed = f"1 + (bound_scale - 1) * {SCALE_DECAY}"
    with conn.cursor() as cursor:
        cursor.executemany(
            f"UPDATE {table} SET reserved_units = reserved_units - %s, "
            f"spent_units = spent_units + %s, bound_scale = CASE WHEN %s > {decayed} "
            f"THEN %s ELSE {decayed} END WHERE id = %s",
            [(int(f), int(s), r, r, c) for c, (f, s, r) in changes.items()],
        )


def withdraw(records: Sequence[EventRecord]) -> None:
    """Take back what records that will never be stored (quarantined) hold on budgets,
    in the caller's transaction, so that spend stays the sum of the stored events' costs:
    a settled one (its token is there) has its charge taken back; one not settled has its
    reservation freed, and its token inserted, so that it is never settled later."""
    reserved = [r for r in records if r.budget_reservation]
    if not reserved:
        return
    conn, _ = _connection()
    try:
        new = _insert_tokens(conn, {str(r.tracking_id) for r in reserved})
    except (DatabaseError, InterfaceError) as exc:
        _discarding(exc)
        raise
    changes: dict[int, list[int]] = {}
    for record in reserved:
        settled = str(uuid.UUID(str(record.tracking_id))) not in new
        freed = 0 if settled else int(record.budget_reservation["estimate_units"])  # type: ignore[index]
        spent = -charge(record) if settled else 0
        for counter in record.budget_reservation["counters"]:  # type: ignore[index]
            totals = changes.setdefault(int(counter), [0, 0])
            totals[0] += freed
            totals[1] += spent
    settle_counters({c: (f, s) for c, (f, s) in changes.items() if f or s})


def forget_tokens(records: Sequence[EventRecord]) -> None:
    """In the transaction that stores these records' events: their tokens are no longer
    needed (an event is settled, if at all, only by the write that first stores it)."""
    from .models import SettlementToken

    ids = [
        r.tracking_id
        for r in records
        if r.budget_reservation
        and (r.budget_reservation.get("settled") or r.budget_reservation.get("attempted"))
    ]
    if ids:
        alias = counters_alias()
        SettlementToken.objects.using(alias).filter(tracking_id__in=ids)._raw_delete(alias)
