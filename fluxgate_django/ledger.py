"""The budget ledger: spend counters, and the statements that reserve and settle them.

Each budget has one ``SpendCounter`` per window (day or month). A reservation is ONE
conditional UPDATE over every counter that applies to a call::

    UPDATE spendcounter SET reserved = reserved + :x
     WHERE id IN (:counters) AND (NOT blocking OR spent + reserved + :x <= limit)
    RETURNING id

The database serialises concurrent updates of a row and re-checks the condition on the
newest row, so N workers together can never reserve past a limit. A reservation travels
on the call's event and is settled (reserved -= estimate, spent += real cost) at the end
of the call (:data:`settler`, from the pipeline), so spend is current within one call
whatever the recorder; the settled mark travels with the event, so it is never settled
twice. A reservation that could not be settled then (the database was unreachable, an
ingested event) is settled by the recorder in the transaction that stores its event
(:func:`settle_batch`, a write hook); one whose ``COMMIT`` was cut, so that it may or may
not have happened, is decided by asking PostgreSQL what became of its transaction
(:func:`resolve_settlements`). Either way a budget's spend equals the sum of its
stored events' costs; ``reconcile`` rebuilds it from them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connections,
    router,
    transaction,
)
from django.db.models import Sum

from .conf import fluxgate_settings, on_reload
from .money import from_units, to_units
from .periods import window_bounds, window_start
from .records import CHARGE_ESTIMATE, CostSource, EventRecord, Status

logger = logging.getLogger("fluxgate.budgets")


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetInfo:
    """What a reservation needs to know of a ``Budget`` row (cached per process)."""

    id: int
    team_id: int
    feature: str
    period: str
    limit_units: int
    blocking: bool
    threshold: int


class _BudgetCache:
    """Teams' budget lists and counter ids per window, for BUDGET_CACHE_SECONDS.

    A budget saved or deleted in this process clears it at once (signals); other
    processes' edits are seen after at most BUDGET_CACHE_SECONDS.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        self.budgets: dict[int, tuple[float, tuple[BudgetInfo, ...]]] = {}
        self.counters: dict[tuple[int, dt.date], int] = {}

    @staticmethod
    def fresh(loaded_at: float) -> bool:
        return time.monotonic() - loaded_at < fluxgate_settings.BUDGET_CACHE_SECONDS


_cache = _BudgetCache()
on_reload(_cache.clear)


def clear_cache() -> None:
    """Forget cached budgets (after editing budgets outside the ORM, and in tests)."""
    _cache.clear()


def cached_budgets(team_id: int) -> tuple[BudgetInfo, ...] | None:
    """The team's budgets if cached and fresh (no query), else None."""
    cached = _cache.budgets.get(team_id)
    if cached is None or not _cache.fresh(cached[0]):
        return None
    return cached[1]


def last_known_budgets(team_id: int) -> tuple[BudgetInfo, ...] | None:
    """The team's budgets as last loaded, however old (None: never loaded here). For
    when the database can't be asked: a team last seen without budgets has none."""
    cached = _cache.budgets.get(team_id)
    return None if cached is None else cached[1]


def budgets_for_team(team_id: int) -> tuple[BudgetInfo, ...]:
    cached = cached_budgets(team_id)
    if cached is not None:
        return cached
    from .models import Budget

    infos = tuple(
        BudgetInfo(
            id=b.id,
            team_id=b.team_id,
            feature=b.feature,
            period=b.period,
            limit_units=to_units(b.limit_usd),
            blocking=b.action == Budget.Action.BLOCK,
            threshold=b.alert_threshold_percent,
        )
        for b in Budget.objects.filter(team_id=team_id)
    )
    _cache.budgets[team_id] = (time.monotonic(), infos)
    return infos


def applicable_budgets(team_id: int, feature: str | None) -> list[BudgetInfo]:
    """The team-wide budgets plus those scoped to ``feature``."""
    return [b for b in budgets_for_team(team_id) if not b.feature or b.feature == feature]


def counter_ids(budgets: Iterable[BudgetInfo], now: dt.datetime | None = None) -> list[int]:
    """The ``SpendCounter`` ids of these budgets' windows at ``now`` (created when missing)."""
    from .models import SpendCounter

    wanted = [(b, window_start(b.period, now)) for b in budgets]
    missing = [(b, start) for b, start in wanted if (b.id, start) not in _cache.counters]
    if missing:
        # (Read back where they were written: a replica may not have them yet.)
        counters = SpendCounter.objects.db_manager(counters_alias())
        counters.bulk_create(
            [
                SpendCounter(
                    budget_id=b.id,
                    window_start=start,
                    limit_units=b.limit_units,
                    blocking=b.blocking,
                )
                for b, start in missing
            ],
            ignore_conflicts=True,
        )
        for row in counters.filter(
            budget_id__in=[b.id for b, _ in missing],
            window_start__in={start for _, start in missing},
        ).values("id", "budget_id", "window_start"):
            _cache.counters[(row["budget_id"], row["window_start"])] = row["id"]
    return [_cache.counters[(b.id, start)] for b, start in wanted]


# -- connections after an error -------------------------------------------------------


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


# -- reserve / settle ----------------------------------------------------------------


def counters_alias() -> str:
    """The database alias the spend counters are updated on."""
    from .models import SpendCounter

    return str(router.db_for_write(SpendCounter))


def _connection() -> Any:
    from .models import SpendCounter

    conn = connections[counters_alias()]
    return conn, conn.ops.quote_name(SpendCounter._meta.db_table)


def reserve(ids: list[int], units: int) -> set[int]:
    """One conditional UPDATE; the ids of the counters that took the reservation."""
    conn, table = _connection()
    placeholders = ", ".join(["%s"] * len(ids))
    where = (
        f"id IN ({placeholders}) AND "
        f"(NOT blocking OR spent_units + reserved_units + %s <= limit_units)"
    )
    sql = f"UPDATE {table} SET reserved_units = reserved_units + %s WHERE {where}"
    if conn.vendor == "postgresql":
        sql = _without_commit_wait(table, "reserved_units = reserved_units + %s", where)
    if _update_returning(conn):
        with conn.cursor() as cursor:
            cursor.execute(f"{sql} RETURNING id", [units, *ids, units])
            return {row[0] for row in cursor.fetchall()}
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
    return taken


def _update_returning(conn: Any) -> bool:
    if conn.vendor == "postgresql":
        return True
    if conn.vendor == "sqlite":
        import sqlite3

        return sqlite3.sqlite_version_info >= (3, 35)
    return False


def settle_counters(
    changes: dict[int, tuple[int, int]], *, own_transaction: bool = False
) -> str | None:
    """Apply ``{counter_id: (reserved units to free, units spent)}``.

    On PostgreSQL it is one statement, which returns its transaction's id: if the commit
    fails (a cut connection), :func:`resolve_settlements` asks the server whether it
    happened anyway. None elsewhere (or with nothing to apply). ``own_transaction``: the
    atomic block it runs in is FluxGate's own, not a caller's, so its commit need not wait
    for the WAL flush either (see :func:`_without_commit_wait`)."""
    if not changes:
        return None
    conn, table = _connection()
    rows = [(freed, spent, counter) for counter, (freed, spent) in changes.items()]
    try:
        with conn.cursor() as cursor:
            if conn.vendor == "postgresql":
                values = ", ".join(["(%s::bigint, %s::bigint, %s::bigint)"] * len(rows))
                target, sources, where = (
                    f"{table} AS c",
                    f"(VALUES {values}) AS v(freed, spent, id)",
                    "c.id = v.id",
                )
                assignments = (
                    "reserved_units = c.reserved_units - v.freed, "
                    "spent_units = c.spent_units + v.spent"
                )
                if conn.in_atomic_block and not own_transaction:
                    sql = f"UPDATE {target} SET {assignments} FROM {sources} WHERE {where}"
                else:  # its own transaction
                    sql = _without_commit_wait(target, assignments, where, sources=sources)
                cursor.execute(
                    f"{sql} RETURNING pg_current_xact_id()::text",
                    [value for row in rows for value in row],
                )
                found = cursor.fetchone()
                return None if found is None else str(found[0])
            cursor.executemany(
                f"UPDATE {table} SET reserved_units = reserved_units - %s, "
                "spent_units = spent_units + %s WHERE id = %s",
                rows,
            )
    except (DatabaseError, InterfaceError) as exc:
        discard_broken_connections(exc)
        raise
    return None


def resolve_settlements(records: Sequence[EventRecord]) -> None:
    """Decide the records whose settlement at the end of the call failed as its
    transaction was committing (``settle_xid``: the connection was cut during
    ``COMMIT``, so it may have happened). PostgreSQL says whether that transaction
    committed (``pg_xact_status``): if it did, the reservation is settled, else not.
    :class:`OperationalError` (the write is retried) while it is still in progress."""
    uncertain = [
        r for r in records if r.budget_reservation and r.budget_reservation.get("settle_xid")
    ]
    if not uncertain:
        return
    xids = sorted({str(r.budget_reservation["settle_xid"]) for r in uncertain})  # type: ignore[index]
    conn, _ = _connection()
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT x, pg_xact_status(x::xid8) FROM unnest(%s::text[]) AS x", [xids])
            status = dict(cursor.fetchall())
    except (DatabaseError, InterfaceError) as exc:
        discard_broken_connections(exc)
        raise
    if "in progress" in status.values():
        raise OperationalError("a budget settlement's transaction is still committing")
    for record in uncertain:
        reservation = dict(record.budget_reservation)  # type: ignore[arg-type]
        xid = reservation.pop("settle_xid")
        reservation["settled"] = status.get(xid) == "committed"
        record.budget_reservation = reservation


def _without_commit_wait(table: str, assignments: str, where: str, sources: str = "") -> str:
    """The same UPDATE, committed without waiting for the WAL flush (PostgreSQL).

    A reservation is one autocommit statement; waiting for fsync at each commit caps a
    budget at a few hundred calls a second on ordinary disks (the flush, not the update,
    is the cost). Counters are derived data: events are stored durably, and
    ``manage.py fluxgate_budgets --reconcile`` rebuilds counters from them after a
    database crash lost their last moments. ``set_config(..., true)`` applies to this
    statement's own transaction only, in the same round trip.
    """
    return (
        "WITH fluxgate_no_wait AS (SELECT set_config('synchronous_commit', 'off', true)) "
        f"UPDATE {table} SET {assignments} "
        f"FROM {sources + ', ' if sources else ''}fluxgate_no_wait WHERE {where}"
    )


# -- settlement in the recorder (write hooks) -------------------------------------------


def _charge(record: EventRecord) -> int:
    """Units a reserved record spends: its cost; the estimate when usage was not reported
    (a stream read without usage must not slip past budgets); else nothing."""
    reservation = record.budget_reservation or {}
    if record.cost_usd is not None:
        return to_units(record.cost_usd)
    kind = CostSource.of(record.cost_source)
    if kind in CHARGE_ESTIMATE and record.status != Status.ERROR.value:
        return int(reservation.get("estimate_units", 0))
    return 0


def note_estimate_charges(records: Sequence[EventRecord]) -> None:
    """Write hook (before rows are made): note on each unpriced record charged its
    estimate, in its metadata, so that ``reconcile`` counts it."""
    for record in records:
        if record.budget_reservation and record.cost_usd is None:
            charged = _charge(record)
            if charged:
                record.metadata = {
                    **record.metadata,
                    "budget_charged_usd": str(from_units(charged)),
                }


def settlement_for(records: Iterable[EventRecord]) -> dict[int, tuple[int, int]]:
    """``{counter: (freed, spent)}`` for the budget reservations these records carry."""
    changes: dict[int, list[int]] = {}
    for record in records:
        reservation = record.budget_reservation
        if not reservation:
            continue
        estimate = int(reservation["estimate_units"])
        spent = _charge(record)
        for counter in reservation["counters"]:
            totals = changes.setdefault(int(counter), [0, 0])
            totals[0] += estimate
            totals[1] += spent
    return {c: (freed, spent) for c, (freed, spent) in changes.items()}


def withdrawal_for(records: Iterable[EventRecord]) -> dict[int, tuple[int, int]]:
    """``{counter: (freed, spent)}`` that takes back what these records hold on budgets:
    for records that will never be stored (quarantined), so that spend stays the sum of
    the stored events' costs. A reservation not settled yet is freed; one settled at the
    end of its call has its charge taken back too."""
    changes: dict[int, list[int]] = {}
    records = list(records)
    resolve_settlements(records)
    for record in records:
        reservation = record.budget_reservation
        if not reservation:
            continue
        if _settled(record):
            freed, spent = 0, -_charge(record)
        else:
            freed, spent = int(reservation["estimate_units"]), 0
        for counter in reservation["counters"]:
            totals = changes.setdefault(int(counter), [0, 0])
            totals[0] += freed
            totals[1] += spent
    return {c: (freed, spent) for c, (freed, spent) in changes.items() if freed or spent}


def settle_batch(records: Sequence[EventRecord]) -> list[int]:
    """Write hook (in the write's transaction): settle the reservations of the records
    this transaction inserted that were not settled at the end of their call (an ingested
    event, a call whose settlement could not reach the database). Returns the counters
    these records touched (for threshold alerts)."""
    touched = {
        int(c) for r in records if r.budget_reservation for c in r.budget_reservation["counters"]
    }
    resolve_settlements(records)
    settle_counters(settlement_for(r for r in records if not _settled(r)))
    return sorted(touched)


def _settled(record: EventRecord) -> bool:
    return bool(record.budget_reservation and record.budget_reservation.get("settled"))


# -- settlement at the end of the call ------------------------------------------------


class _Settler:
    """Settles reservations at the end of their call, so that spend is current within one
    call whatever the recorder: in the caller (one statement), or — on a running event
    loop, where no database I/O may happen — in a thread of its own, within milliseconds.
    A reservation check waits for this process's pending settlements first (off the loop),
    so a sequential loop sees its previous call's real cost."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: set[concurrent.futures.Future[None]] = set()

    def settle(self, record: EventRecord) -> None:
        """Settle ``record``'s reservation with its (priced) cost and mark it settled; if
        the database can't be reached the recorder settles it when the event is written."""
        if not record.budget_reservation or _settled(record):
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._settle(record)
            return
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="fluxgate-settler"
                )
            # Marked now, before the record can reach a writer: the write hook must not
            # settle it as well. (If this settlement fails, it is unmarked first.)
            record.budget_reservation = {**record.budget_reservation, "settled": True}
            future = self._executor.submit(self._settle_in_thread, record)
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _settle(self, record: EventRecord) -> None:
        reservation = record.budget_reservation
        assert reservation is not None
        xid = None
        try:
            # A transaction (a savepoint inside a caller's) on the counters' database, so
            # that its id is known before its COMMIT, which a cut connection may lose.
            alias = counters_alias()
            own = not connections[alias].in_atomic_block
            with transaction.atomic(using=alias):
                xid = settle_counters(settlement_for([record]), own_transaction=own)
        except (DatabaseError, InterfaceError) as exc:
            discard_broken_connections(exc)
            logger.warning(
                "FluxGate could not settle a budget reservation now; it is settled when "
                "the call's event is written",
                exc_info=True,
            )
            # The statement ran and the commit failed: it may have committed all the
            # same; the write hook asks the database (resolve_settlements).
            unsettled = {**reservation, "settled": False}
            if xid is not None:
                unsettled["settle_xid"] = xid
            record.budget_reservation = unsettled
            return
        record.budget_reservation = {**reservation, "settled": True}

    def _settle_in_thread(self, record: EventRecord) -> None:
        try:
            self._settle(record)
        finally:
            connections.close_all()

    def _done(self, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)

    def wait(self, timeout: float = 2.0) -> bool:
        """Wait (off any event loop) for this process's pending settlements; False if some
        were still pending after ``timeout``."""
        with self._lock:
            pending = list(self._pending)
        if not pending:
            return True
        return not concurrent.futures.wait(pending, timeout=timeout).not_done


settler = _Settler()


def reconcile(budget: Any, *, release_reservations: bool = False) -> Any:
    """Recompute a budget's current-window spend from its events.

    For after a database crash lost the last counter updates (see _without_commit_wait),
    or to free reservations left by processes killed mid-call (only when no call is in
    flight). Returns the counter.
    """
    from .models import Event, SpendCounter

    start = window_start(budget.period)
    lower, upper = window_bounds(budget.period, start)
    # (The events as written, on the counters' database: not a replica that may lag.)
    events = Event.objects.using(counters_alias()).filter(
        team_id=budget.team_id, created_at__gte=lower, created_at__lt=upper
    )
    if budget.feature:
        events = events.filter(feature=budget.feature)
    priced = events.aggregate(total=Sum("cost_usd"))["total"] or Decimal(0)
    estimated = sum(
        (
            Decimal(m["budget_charged_usd"])
            for m in events.filter(cost_usd__isnull=True).values_list("metadata", flat=True)
            if isinstance(m, dict) and "budget_charged_usd" in m
        ),
        Decimal(0),
    )
    counter, _ = SpendCounter.objects.get_or_create(
        budget=budget,
        window_start=start,
        defaults={
            "limit_units": to_units(budget.limit_usd),
            "blocking": budget.action == "block",
        },
    )
    counter.spent_units = to_units(priced + estimated)
    fields = ["spent_units"]
    if release_reservations:
        counter.reserved_units = 0
        fields.append("reserved_units")
    counter.save(update_fields=fields)
    return counter


def connect_signals() -> None:
    """Keep counters' copied limits current and caches fresh as budgets change."""
    from django.db.models.signals import post_delete, post_save

    from .models import Budget, SpendCounter

    def saved(sender: Any, instance: Any, **kwargs: Any) -> None:
        SpendCounter.objects.filter(budget=instance).update(
            limit_units=to_units(instance.limit_usd),
            blocking=instance.action == Budget.Action.BLOCK,
        )
        _cache.budgets.pop(instance.team_id, None)

    def deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
        _cache.budgets.pop(instance.team_id, None)

    post_save.connect(saved, sender=Budget, weak=False, dispatch_uid="fluxgate_budget_saved")
    post_delete.connect(deleted, sender=Budget, weak=False, dispatch_uid="fluxgate_budget_del")
