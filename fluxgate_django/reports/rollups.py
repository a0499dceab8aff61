"""Daily rollups of events, kept current by the recorder and rebuilt exactly from events.

Two tables hold the same measures (see :class:`~fluxgate_django.models.RollupBase`):
``UsageRollup`` per (day, team, feature, provider, model) and ``EndUserUsageRollup`` per
(day, team, feature, provider, model, end user). Reports read them, so a report's cost
grows with groups x days, not with events.

* **Incrementally**, in the transaction that inserts the events
  (:func:`~fluxgate_django.recording.write.write_events`), counting only the rows that
  transaction inserted (a spool replay or a re-sent batch is never counted twice):

  - PostgreSQL, a big batch all of whose events are new (the usual case):
    :class:`StagedEvents` — the database sums the recorder's staging table with the
    rebuild's own SQL (below) into a temp table of per-user rows, then adds them to both
    tables with one ``INSERT … SELECT … ON CONFLICT (grain) DO UPDATE SET n = n +
    EXCLUDED.n`` each (the coarser table's rows summed by ``GROUP BY``): a few statements
    a batch however many events and groups, nothing per event in Python.
  - Otherwise :class:`RollupBatch` sums the inserted rows in Python (one row per per-user
    group; on PostgreSQL the rows its ``INSERT … RETURNING`` reported, elsewhere
    :meth:`RollupBatch.of_unstored` looks the stored ones up before the insert) and
    saves them with an upsert run with executemany per table (PostgreSQL, SQLite; other
    databases fall back to an UPDATE-or-INSERT per group). On PostgreSQL this is the
    rare way: a batch part of which was stored before, or a small one.

  Both ways give the same rows (a test checks it in three time zones).
* **From scratch**: :func:`rebuild_rollups` deletes the rows from a day on and recomputes
  them with one ``INSERT … SELECT … GROUP BY`` per table, bucketing latencies with the
  same edges; the result equals the incremental one exactly (integers only: money is in
  units of 1e-10 USD, rounded half away from zero like PostgreSQL's ``numeric``).

Known limits, both fixed by ``manage.py fluxgate_rebuild_rollups``: a deleted team's rows
keep its id (events get ``team=NULL``), and events deleted or edited by hand are not
reflected. If saving a batch's rollup fails, the events are still stored and the error is
logged (tracking is fail-open).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.db import connections, models, router, transaction
from django.db.models import Count, F, Q, Sum, Value
from django.db.models.functions import Cast, Coalesce, Round, TruncDate
from django.utils import timezone

from ..errors import capture_internal_exceptions
from .histogram import BUCKET_FIELDS, EDGES_MS
from .managers import MEASURE_FIELDS
from .rollup_batch import (
    BLOCKED_STATUS,
    ERROR_STATUSES,
    GROUP_KEYS,
    NOT_BILLED,
    TOKEN_FIELDS,
    UPSERT_VENDORS,
    USER_GROUP_KEYS,
    RollupBatch,
    event_day,
    rollup_models,
)

logger = logging.getLogger("fluxgate.reports")


__all__ = [
    "BLOCKED_STATUS",
    "ERROR_STATUSES",
    "GROUP_KEYS",
    "NOT_BILLED",
    "UPSERT_VENDORS",
    "USER_GROUP_KEYS",
    "RollupBatch",
    "StagedEvents",
    "aggregated_events",
    "day_start",
    "event_day",
    "rebuild_rollups",
    "rollup_models",
    "rollup_rows",
    "save_written",
]


def save_written(batch: Any) -> None:
    """Write hook (in the events' transaction, on their database ``batch.alias``): add
    the events a write inserted to the rollups. A failure here loses no event: it is
    logged, and the rollups are put right by ``manage.py fluxgate_rebuild_rollups``."""
    alias = batch.alias
    with capture_internal_exceptions("report rollups"), transaction.atomic(using=alias):
        if batch.staged_table is not None:
            StagedEvents(batch.staged_table).save(alias)
        elif batch.records:
            rollup = RollupBatch()
            rollup.add_rows(batch.rows, batch.columns)
            rollup.save(alias)


class StagedEvents:
    """The rollup deltas of the events in the recorder's staging table, every one of them
    just inserted (PostgreSQL): summed by the database with the very SQL
    :func:`rebuild_rollups` uses into a temp table of per-user rows, then added to both
    tables with one ``INSERT … SELECT … ON CONFLICT DO UPDATE`` each (the coarser one
    summed by ``GROUP BY``). Nothing per event crosses to Python."""

    def __init__(self, table: str) -> None:
        self.table = table

    def save(self, using: str) -> None:
        """Add the staged events to the rollups, on the connection ``using`` that holds
        the staging table (the events' transaction)."""
        conn = connections[using]
        sql = _staged_sql(conn)
        select = _staged_user_deltas(self.table, conn)
        with conn.cursor() as cursor:
            cursor.execute(sql.create)
            cursor.execute(sql.empty)  # (a batch saved earlier in this transaction)
            cursor.execute(f"INSERT INTO {sql.staging} ({sql.columns}) {select}")
            cursor.execute(sql.add_users)
            cursor.execute(sql.add_groups)


_staged_deltas: dict[tuple[Any, ...], str] = {}


def _staged_user_deltas(table: str, conn: Any) -> str:
    """:func:`_user_deltas` of every event in ``table``, a copy of the events table's
    columns: the events query, its table aliased to the staging one. Compiled once per
    table and time zone, its parameters (constants: statuses, bucket edges, the time
    zone) bound in by the driver's own quoting, so that the long text is not parsed for
    placeholders at every batch."""
    from ..models import Event

    key = (table, settings.USE_TZ, settings.TIME_ZONE)
    compiled = _staged_deltas.get(key)
    if compiled is None:
        qn = conn.ops.quote_name
        select, params = _user_deltas(Event._default_manager.all(), conn)
        events = f"FROM {qn(Event._meta.db_table)}"
        if select.count(events) != 1:
            raise RuntimeError(f"unexpected events query for the rollups: {select}")
        select = select.replace(events, f"FROM {qn(table)} {qn(Event._meta.db_table)}")
        compiled = _staged_deltas[key] = conn.ops.compose_sql(select, params)
    return compiled


class _StagedSQL:
    """The statements of :meth:`StagedEvents.save` (PostgreSQL)."""

    STAGING = "fluxgate_incoming_rollup"

    def __init__(self, conn: Any) -> None:
        from ..models import EndUserUsageRollup, UsageRollup

        qn = conn.ops.quote_name
        users, groups = qn(EndUserUsageRollup._meta.db_table), qn(UsageRollup._meta.db_table)
        staging = qn(self.STAGING)
        columns = ", ".join(map(qn, (*USER_GROUP_KEYS, *MEASURE_FIELDS)))
        user_keys, group_keys = ", ".join(map(qn, USER_GROUP_KEYS)), ", ".join(map(qn, GROUP_KEYS))
        measures = ", ".join(map(qn, MEASURE_FIELDS))

        def add_to(table: str) -> str:
            return " DO UPDATE SET " + ", ".join(
                f"{qn(m)} = {table}.{qn(m)} + EXCLUDED.{qn(m)}" for m in MEASURE_FIELDS
            )

        self.staging, self.columns = staging, columns
        self.create = (
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} ON COMMIT DELETE ROWS AS "
            f"SELECT {columns} FROM {users} WITH NO DATA"
        )
        self.empty = f"DELETE FROM {staging}"
        # ORDER BY: concurrent writers lock the rows they update in the same order.
        self.add_users = (
            f"INSERT INTO {users} ({columns}) SELECT {columns} FROM {staging} "
            f"ORDER BY {user_keys} ON CONFLICT ({user_keys})" + add_to(users)
        )
        sums = ", ".join(f"SUM({qn(m)})" for m in MEASURE_FIELDS)
        self.add_groups = (
            f"INSERT INTO {groups} ({group_keys}, {measures}) "
            f"SELECT {group_keys}, {sums} FROM {staging} GROUP BY {group_keys} "
            f"ORDER BY {group_keys} ON CONFLICT ({group_keys})" + add_to(groups)
        )


_staged: list[_StagedSQL] = []


def _staged_sql(conn: Any) -> _StagedSQL:
    if not _staged:
        _staged.append(_StagedSQL(conn))
    return _staged[0]


def day_start(day: dt.date) -> dt.datetime:
    """Midnight at the start of ``day`` in the site's time zone."""
    start = dt.datetime.combine(day, dt.time.min)
    if settings.USE_TZ:
        return timezone.make_aware(start, timezone.get_default_timezone())
    return start


def aggregated_events(events: Any, keys: tuple[str, ...]) -> Any:
    """``events`` grouped by the rollup grain ``keys``, with every measure as ``r_<name>``
    (a values queryset; :func:`rebuild_rollups` inserts it with INSERT … SELECT)."""
    sent = ~Q(status=BLOCKED_STATUS)
    money = models.DecimalField(max_digits=30, decimal_places=10)

    def units(field: str) -> Any:
        scaled = models.ExpressionWrapper(F(field) * Value(10**10), output_field=money)
        return Coalesce(
            Sum(Cast(Round(scaled), models.BigIntegerField()), filter=sent),
            0,
            output_field=models.BigIntegerField(),
        )

    measures: dict[str, Any] = {
        "requests": Count("tracking_id", filter=sent),
        "errors": Count("tracking_id", filter=sent & Q(status__in=ERROR_STATUSES)),
        "budget_blocked": Count("tracking_id", filter=Q(status=BLOCKED_STATUS)),
        "fallbacks": Count("tracking_id", filter=sent & Q(fallback_attempt__gt=0)),
        "cache_hits": Count("tracking_id", filter=sent & Q(cache_hit=True)),
        "priced": Count("tracking_id", filter=sent & Q(cost_usd__isnull=False)),
        "unpriced": Count(
            "tracking_id", filter=sent & Q(cost_usd__isnull=True) & ~Q(cost_source=NOT_BILLED)
        ),
        **{
            name: Coalesce(Sum(name, filter=sent), 0, output_field=models.BigIntegerField())
            for name in TOKEN_FIELDS
        },
        "cost_units": units("cost_usd"),
        "cost_saved_units": units("cost_saved_usd"),
    }
    for index, name in enumerate(BUCKET_FIELDS):
        in_bucket = Q()
        if index > 0:
            in_bucket &= Q(latency_ms__gte=EDGES_MS[index - 1])
        if index < len(EDGES_MS):
            in_bucket &= Q(latency_ms__lt=EDGES_MS[index])
        else:
            in_bucket &= Q(latency_ms__isnull=False)
        measures[name] = Count("tracking_id", filter=sent & in_bucket)

    key_columns = {
        "day": TruncDate(
            "created_at", tzinfo=timezone.get_default_timezone() if settings.USE_TZ else None
        ),
        "team_key": Coalesce("team_id", 0, output_field=models.BigIntegerField()),
    }
    return (
        events.order_by()
        .annotate(**{f"r_{k}": expr for k, expr in key_columns.items()})
        .values(*(f"r_{k}" if k in key_columns else k for k in keys))
        .annotate(**{f"r_{name}": expr for name, expr in measures.items()})
    )


def _user_deltas(events: Any, conn: Any) -> tuple[str, Sequence[Any]]:
    """``SELECT`` of the per-user rollup rows of ``events`` (a queryset), its columns in
    the order ``USER_GROUP_KEYS + MEASURE_FIELDS``, and its parameters."""
    select, params = aggregated_events(events, USER_GROUP_KEYS).query.sql_with_params()
    qn = conn.ops.quote_name
    # Computed columns are aliased r_<name>; grouped event columns keep their name.
    aliases = [
        c if c in USER_GROUP_KEYS and c not in ("day", "team_key") else f"r_{c}"
        for c in (*USER_GROUP_KEYS, *MEASURE_FIELDS)
    ]
    return f"SELECT {', '.join(f's.{qn(a)}' for a in aliases)} FROM ({select}) s", params


def rebuild_rollups(since: dt.date | None = None, *, using: str | None = None) -> int:
    """Recompute the rollups of ``since`` (a site-local date) and later days — all of
    them if None — from the events, in one transaction on ``using`` (default: where the
    routers write rollups; the events are read there too). Returns the rows written.

    The per-user table is computed from the events, then the coarser table by summing
    it (what the recorder does too). On PostgreSQL the rollup tables are locked
    (EXCLUSIVE) meanwhile: recorders wait, and add their batches once the rebuild
    commits, so nothing is lost or counted twice.
    """
    from ..models import EndUserUsageRollup, Event, UsageRollup

    using = using or str(router.db_for_write(UsageRollup))
    conn = connections[using]
    qn = conn.ops.quote_name
    users, groups = EndUserUsageRollup._meta.db_table, UsageRollup._meta.db_table
    written = 0
    with transaction.atomic(using=using), conn.cursor() as cursor:
        if conn.vendor == "postgresql":
            cursor.execute(f"LOCK TABLE {qn(groups)}, {qn(users)} IN EXCLUSIVE MODE")
            # The planner expects about one group per event and would sort all the events
            # by their text keys (in parallel, then merge ~60 partial aggregates per group):
            # hashing the groups in one process is 2-5x faster. JIT-compiling the ~60
            # aggregates costs more than it saves (7 of 12 s at 1M events).
            for setting in (
                "jit = off",
                "enable_sort = off",
                "max_parallel_workers_per_gather = 0",
                "work_mem = '128MB'",
            ):
                cursor.execute(f"SET LOCAL {setting}")
        for model in (EndUserUsageRollup, UsageRollup):
            stale = model._default_manager.using(using).all()
            if since is not None:
                stale = stale.filter(day__gte=since)
            stale._raw_delete(using)

        events = Event._default_manager.using(using).all()
        if since is not None:
            events = events.filter(created_at__gte=day_start(since))
        select, params = _user_deltas(events, conn)
        columns = ", ".join(map(qn, (*USER_GROUP_KEYS, *MEASURE_FIELDS)))
        cursor.execute(f"INSERT INTO {qn(users)} ({columns}) {select}", params)
        written += max(cursor.rowcount, 0)

        keys = ", ".join(map(qn, GROUP_KEYS))
        sums = ", ".join(f"SUM({qn(m)})" for m in MEASURE_FIELDS)
        where, params = ("WHERE day >= %s", [since]) if since is not None else ("", [])
        cursor.execute(
            f"INSERT INTO {qn(groups)} ({keys}, {', '.join(map(qn, MEASURE_FIELDS))}) "
            f"SELECT {keys}, {sums} FROM {qn(users)} {where} GROUP BY {keys}",
            params,
        )
        written += max(cursor.rowcount, 0)
    return written


def rollup_rows(model: Any, *, using: str | None = None) -> list[tuple[Any, ...]]:
    """Every row of a rollup table as ``(key values…, measures…)``, sorted (for tests and
    for checking a rebuild against the incremental result). ``using``: default, where
    the routers read the table."""
    keys = GROUP_KEYS if model._meta.model_name == "usagerollup" else USER_GROUP_KEYS
    return sorted(
        model._default_manager.db_manager(using).order_by().values_list(*keys, *MEASURE_FIELDS)
    )
