"""Rollup deltas summed in Python: :class:`RollupBatch`, and the upserts that add them.

The recorder's way for a batch part of which was stored before (a spool replay, a
redelivered batch), a small batch, and every batch on databases other than PostgreSQL
(see :mod:`.rollups`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connections, transaction
from django.db.models import F
from django.utils import timezone

from ..money import to_units as money_units
from ..records import FAILED_STATUSES, Status
from .histogram import BUCKET_FIELDS, bucket_of
from .managers import MEASURE_FIELDS

logger = logging.getLogger("fluxgate.reports")

#: Statuses counted as errors (provider failures and rejected requests).
ERROR_STATUSES = tuple(sorted(FAILED_STATUSES))
#: Calls refused by a budget before reaching a provider: counted only in budget_blocked.
BLOCKED_STATUS = Status.BUDGET_EXCEEDED.value
#: ``cost_source`` of a failed call the provider did not bill: no cost, but not unpriced.
NOT_BILLED = "not-billed"

GROUP_KEYS = ("day", "team_key", "feature", "provider", "model")
USER_GROUP_KEYS = (*GROUP_KEYS, "end_user_id")

#: Databases whose ``INSERT … ON CONFLICT … DO UPDATE`` the recorder uses.
UPSERT_VENDORS = ("postgresql", "sqlite")

_INDEX = {name: i for i, name in enumerate(MEASURE_FIELDS)}
_BUCKET0 = _INDEX[BUCKET_FIELDS[0]]
TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


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

    def add_rows(self, rows: Iterable[Sequence[Any]], columns: Sequence[str]) -> None:
        """Count events given as rows of ``Event`` column values in the order of ``columns``
        (the recorder's rows: one pass, no dict per event)."""
        at = {name: i for i, name in enumerate(columns)}
        key_at = [at[c] for c in ("team_id", "feature", "provider", "model", "end_user_id")]
        created, status = at["created_at"], at["status"]
        fallback, cache_hit, latency = at["fallback_attempt"], at["cache_hit"], at["latency_ms"]
        cost, source, saved = at["cost_usd"], at["cost_source"], at["cost_saved_usd"]
        tokens = [(_INDEX[name], at[name]) for name in TOKEN_FIELDS]
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

    def save(self, using: str) -> None:
        """Add the deltas to the rollup tables on ``using`` (run it in the events'
        transaction, on their database)."""
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
