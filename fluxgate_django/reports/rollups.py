"""Daily rollups of events, kept current by the recorder and rebuilt exactly from events.

Two tables hold the same measures (see :class:`~fluxgate_django.models.RollupBase`):
``UsageRollup`` per (day, team, feature, provider, model) and ``EndUserUsageRollup`` per
(day, team, feature, provider, model, end user). Reports read them, so a report's cost
grows with groups x days, not with events.

* **Incrementally**: :func:`~fluxgate_django.recording.base.write_events` builds a
  :class:`RollupBatch` from its records (aggregated in Python, one row per group) and
  saves it in the transaction that inserts the events, with one
  ``INSERT … ON CONFLICT (grain) DO UPDATE SET n = n + EXCLUDED.n`` executemany per table
  (PostgreSQL and SQLite; other databases fall back to an UPDATE-or-INSERT per group).
  Records already stored (same ``tracking_id``: a spool replay, a client re-sending an
  ingest batch) are left out, so they are never counted twice: on PostgreSQL the
  recorder passes exactly the rows its ``INSERT … RETURNING`` added, elsewhere
  :meth:`RollupBatch.for_records` looks the stored ones up before the insert.
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
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, models, transaction
from django.db.models import Count, F, Q, Sum, Value
from django.db.models.functions import Cast, Coalesce, Round, TruncDate
from django.utils import timezone

from ..records import EventRecord, Status
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
    """The rollup deltas of one batch of records, one row of measures per group."""

    def __init__(self) -> None:
        #: user-grain key → measures; the coarser table's rows are summed from these.
        self.user_rows: dict[tuple[Any, ...], list[int]] = {}

    @classmethod
    def for_records(
        cls, records: Sequence[EventRecord], team_ids: dict[str, int | None]
    ) -> RollupBatch:
        """Deltas of ``records`` minus those already stored. Run it before inserting them."""
        from ..models import Event
        from ..recording.base import _column_values

        batch = cls()
        ids = {_as_uuid(r.tracking_id) for r in records}
        seen = set(Event.objects.filter(tracking_id__in=ids).values_list("tracking_id", flat=True))
        for record in records:
            tracking_id = _as_uuid(record.tracking_id)
            if tracking_id in seen:
                continue
            seen.add(tracking_id)
            batch.add(_column_values(record, team_ids))
        return batch

    def add(self, event: dict[str, Any]) -> None:
        """Count one event, given as ``Event`` column values (``team_id``, ``feature``…)."""
        key = (
            event_day(event["created_at"]),
            event["team_id"] or 0,
            event["feature"],
            event["provider"],
            event["model"],
            event["end_user_id"],
        )
        row = self.user_rows.get(key)
        if row is None:
            row = self.user_rows[key] = [0] * len(MEASURE_FIELDS)
        if event["status"] == BLOCKED_STATUS:
            row[_INDEX["budget_blocked"]] += 1
            return
        row[_INDEX["requests"]] += 1
        if event["status"] in ERROR_STATUSES:
            row[_INDEX["errors"]] += 1
        if event["fallback_attempt"]:
            row[_INDEX["fallbacks"]] += 1
        if event["cache_hit"]:
            row[_INDEX["cache_hits"]] += 1
        for name in _TOKEN_FIELDS:
            row[_INDEX[name]] += event[name] or 0
        cost = event["cost_usd"]
        if cost is not None:
            row[_INDEX["priced"]] += 1
            row[_INDEX["cost_units"]] += money_units(cost)
        elif event["cost_source"] != NOT_BILLED:
            row[_INDEX["unpriced"]] += 1
        if event["cost_saved_usd"] is not None:
            row[_INDEX["cost_saved_units"]] += money_units(event["cost_saved_usd"])
        if event["latency_ms"] is not None:
            row[_BUCKET0 + bucket_of(event["latency_ms"])] += 1

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
        "requests": Count("id", filter=sent),
        "errors": Count("id", filter=sent & Q(status__in=ERROR_STATUSES)),
        "budget_blocked": Count("id", filter=Q(status=BLOCKED_STATUS)),
        "fallbacks": Count("id", filter=sent & Q(fallback_attempt__gt=0)),
        "cache_hits": Count("id", filter=sent & Q(cache_hit=True)),
        "priced": Count("id", filter=sent & Q(cost_usd__isnull=False)),
        "unpriced": Count(
            "id", filter=sent & Q(cost_usd__isnull=True) & ~Q(cost_source=NOT_BILLED)
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
        measures[name] = Count("id", filter=sent & in_bucket)

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
        select, params = aggregated_events(events, USER_GROUP_KEYS).query.sql_with_params()
        columns = [*USER_GROUP_KEYS, *MEASURE_FIELDS]
        # Computed columns are aliased r_<name>; grouped event columns keep their name.
        aliases = [
            c if c in USER_GROUP_KEYS and c not in ("day", "team_key") else f"r_{c}"
            for c in columns
        ]
        cursor.execute(
            f"INSERT INTO {qn(users)} ({', '.join(map(qn, columns))}) "
            f"SELECT {', '.join(f's.{qn(a)}' for a in aliases)} FROM ({select}) s",
            params,
        )
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
