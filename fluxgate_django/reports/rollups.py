"""Daily rollups of events, kept current by the recorder and rebuilt exactly from events.

Two tables hold the same measures (see :class:`~fluxgate_django.models.RollupBase`):
``UsageRollup`` per (day, team, feature, provider, model) and ``EndUserUsageRollup`` per
(day, team, feature, provider, model, end user). Reports read them, so a report's cost
grows with groups x days, not with events.

* **Incrementally**, in the transaction that inserts the events
  (:func:`~fluxgate_django.recording.base.write_events`), counting only the rows that
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
import uuid
from collections.abc import Iterable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, models, transaction
from django.db.models import Count, F, Q, Sum, Value
from django.db.models.functions import Cast, Coalesce, Round, TruncDate
from django.utils import timezone

from ..records import Status
from .histogram import BUCKET_FIELDS, EDGES_MS, bucket_of
from .managers import MEASURE_FIELDS

logger = logging.getLogger("fluxgate.reports")

#: Statuses counted as errors (provider failures and rejected requests).
ERROR_STATUSES = (Status.ERROR.value, Status.MALFORMED_REQUEST.value)
#: Calls refused by a budget before reaching a provider: counted only in budget_blocked.
BLOCKED_STATUS = Status.BUDGET_EXCEEDED.value
#: ``cost_source`` of a failed call the provider did not bill: no cost, but not unpriced.
NOT_BILLED = "not-billed"

GROUP_KEYS = ("day", "team_key", "feature", "provider", "model")
USER_GROUP_KEYS = (*GROUP_KEYS, "end_user_id")

#: Databases whose ``INSERT … ON CONFLICT … DO UPDATE`` the recorder uses.
UPSERT_VENDORS = ("postgresql", "sqlite")

_MONEY_EXPONENT = Decimal("1e-10")
_INDEX = {name: i for i, name in enumerate(MEASURE_FIELDS)}
_BUCKET0 = _INDEX[BUCKET_FIELDS[0]]
_TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


def money_units(amount: Any) -> int:
    """USD → integer units of 1e-10 USD, rounded as a ``numeric(20, 10)`` column does."""
    if not isinstance(amount, Decimal):
        amount = Decimal(str(amount))
    return int(amount.quantize(_MONEY_EXPONENT, rounding=ROUND_HALF_UP).scaleb(10))


def event_day(created_at: dt.datetime) -> dt.date:
    """The date of an event in the site's time zone (what ``TruncDate`` gives in SQL)."""
    if settings.USE_TZ and timezone.is_aware(created_at):
        return timezone.localtime(created_at, timezone.get_default_timezone()).date()
    return created_at.date()


def rollup_models() -> tuple[tuple[Any, tuple[str, ...]], ...]:
    from ..models import EndUserUsageRollup, UsageRollup

    return ((UsageRollup, GROUP_KEYS), (EndUserUsageRollup, USER_GROUP_KEYS))


# -- incremental ---------------------------------------------------------------------------


class RollupBatch:
    """The rollup deltas of one batch of events, one row of measures per group."""

    def __init__(self) -> None:
        #: user-grain key → measures; the coarser table's rows are summed from these.
        self.user_rows: dict[tuple[Any, ...], list[int]] = {}

    @classmethod
    def of_unstored(cls, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> RollupBatch:
        """Deltas of the event ``rows`` (values in the order of ``columns``) minus those
        already stored. Run it before inserting them."""
        from ..models import Event

        at = list(columns).index("tracking_id")
        ids = {_as_uuid(row[at]) for row in rows}
        seen = set(Event.objects.filter(tracking_id__in=ids).values_list("tracking_id", flat=True))
        new = []
        for row in rows:
            tracking_id = _as_uuid(row[at])
            if tracking_id not in seen:
                seen.add(tracking_id)
                new.append(row)
        batch = cls()
        batch.add_rows(new, columns)
        return batch

    def add_rows(self, rows: Iterable[Sequence[Any]], columns: Sequence[str]) -> None:
        """Count events given as rows of ``Event`` column values in the order of ``columns``
        (the recorder's rows: one pass, no dict per event)."""
        at = {name: i for i, name in enumerate(columns)}
        key_at = [at[c] for c in ("team_id", "feature", "provider", "model", "end_user_id")]
        created, status = at["created_at"], at["status"]
        fallback, cache_hit, latency = at["fallback_attempt"], at["cache_hit"], at["latency_ms"]
        cost, source, saved = at["cost_usd"], at["cost_source"], at["cost_saved_usd"]
        tokens = [(_INDEX[name], at[name]) for name in _TOKEN_FIELDS]
        requests, errors, blocked = _INDEX["requests"], _INDEX["errors"], _INDEX["budget_blocked"]
        fallbacks, cache_hits = _INDEX["fallbacks"], _INDEX["cache_hits"]
        priced, unpriced = _INDEX["priced"], _INDEX["unpriced"]
        cost_units, saved_units = _INDEX["cost_units"], _INDEX["cost_saved_units"]
        groups = self.user_rows
        width = len(MEASURE_FIELDS)
        for event in rows:
            team, feature, provider, model, end_user = (event[i] for i in key_at)
            key = (event_day(event[created]), team or 0, feature, provider, model, end_user)
            row = groups.get(key)
            if row is None:
                row = groups[key] = [0] * width
            if event[status] == BLOCKED_STATUS:
                row[blocked] += 1
                continue
            row[requests] += 1
            if event[status] in ERROR_STATUSES:
                row[errors] += 1
            if event[fallback]:
                row[fallbacks] += 1
            if event[cache_hit]:
                row[cache_hits] += 1
            for measure, i in tokens:
                row[measure] += event[i] or 0
            if event[cost] is not None:
                row[priced] += 1
                row[cost_units] += money_units(event[cost])
            elif event[source] != NOT_BILLED:
                row[unpriced] += 1
            if event[saved] is not None:
                row[saved_units] += money_units(event[saved])
            if event[latency] is not None:
                row[_BUCKET0 + bucket_of(event[latency])] += 1

    def rows(self, keys: tuple[str, ...]) -> list[tuple[Any, ...]]:
        """``(key values…, measures…)`` per group of the grain ``keys``, sorted by key
        (a fixed order, so concurrent writers lock rows in the same order)."""
        if keys == USER_GROUP_KEYS:
            grouped = self.user_rows
        else:
            grouped = {}
            for key, measures in self.user_rows.items():
                total = grouped.get(key[:-1])
                if total is None:
                    grouped[key[:-1]] = list(measures)
                else:
                    for i, value in enumerate(measures):
                        total[i] += value
        return [(*key, *grouped[key]) for key in sorted(grouped)]

    def save(self, using: str = DEFAULT_DB_ALIAS) -> None:
        """Add the deltas to the rollup tables (run it in the events' transaction)."""
        if not self.user_rows:
            return
        conn = connections[using]
        for model, keys in rollup_models():
            rows = self.rows(keys)
            if conn.vendor in UPSERT_VENDORS:
                with conn.cursor() as cursor:
                    cursor.executemany(_upsert_sql(model, keys, conn), rows)
            else:
                _upsert_by_orm(model, keys, rows, using)


class StagedEvents:
    """The rollup deltas of the events in the recorder's staging table, every one of them
    just inserted (PostgreSQL): summed by the database with the very SQL
    :func:`rebuild_rollups` uses into a temp table of per-user rows, then added to both
    tables with one ``INSERT … SELECT … ON CONFLICT DO UPDATE`` each (the coarser one
    summed by ``GROUP BY``). Nothing per event crosses to Python."""

    def __init__(self, table: str) -> None:
        self.table = table

    def save(self, using: str = DEFAULT_DB_ALIAS) -> None:
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


def _as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


_upserts: dict[tuple[str, str], str] = {}


def _upsert_sql(model: Any, keys: tuple[str, ...], conn: Any) -> str:
    cached = _upserts.get((model._meta.db_table, conn.vendor))
    if cached is not None:
        return cached
    qn = conn.ops.quote_name
    table = qn(model._meta.db_table)
    columns = [*keys, *MEASURE_FIELDS]
    sql = (
        f"INSERT INTO {table} ({', '.join(map(qn, columns))}) "
        f"VALUES ({', '.join(['%s'] * len(columns))}) "
        f"ON CONFLICT ({', '.join(map(qn, keys))}) DO UPDATE SET "
        + ", ".join(f"{qn(m)} = {table}.{qn(m)} + EXCLUDED.{qn(m)}" for m in MEASURE_FIELDS)
    )
    _upserts[(model._meta.db_table, conn.vendor)] = sql
    return sql


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


def _upsert_by_orm(
    model: Any, keys: tuple[str, ...], rows: list[tuple[Any, ...]], using: str
) -> None:
    """For databases without ``ON CONFLICT``: UPDATE the group, INSERT it if missing."""
    for row in rows:
        lookup = dict(zip(keys, row, strict=False))
        measures = dict(zip(MEASURE_FIELDS, row[len(keys) :], strict=True))
        manager = model._default_manager.using(using)
        if manager.filter(**lookup).update(**{m: F(m) + v for m, v in measures.items()}):
            continue
        try:
            with transaction.atomic(using=using):
                manager.create(**lookup, **measures)
        except IntegrityError:  # created meanwhile by another writer
            manager.filter(**lookup).update(**{m: F(m) + v for m, v in measures.items()})


# -- rebuild -------------------------------------------------------------------------------


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
            for name in _TOKEN_FIELDS
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


def rebuild_rollups(since: dt.date | None = None, *, using: str = DEFAULT_DB_ALIAS) -> int:
    """Recompute the rollups of ``since`` (a site-local date) and later days — all of
    them if None — from the events, in one transaction. Returns the rows written.

    The per-user table is computed from the events, then the coarser table by summing
    it (what the recorder does too). On PostgreSQL the rollup tables are locked
    (EXCLUSIVE) meanwhile: recorders wait, and add their batches once the rebuild
    commits, so nothing is lost or counted twice.
    """
    from ..models import EndUserUsageRollup, Event, UsageRollup

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


def rollup_rows(model: Any, *, using: str = DEFAULT_DB_ALIAS) -> list[tuple[Any, ...]]:
    """Every row of a rollup table as ``(key values…, measures…)``, sorted (for tests and
    for checking a rebuild against the incremental result)."""
    keys = GROUP_KEYS if model._meta.model_name == "usagerollup" else USER_GROUP_KEYS
    return sorted(
        model._default_manager.using(using).order_by().values_list(*keys, *MEASURE_FIELDS)
    )
