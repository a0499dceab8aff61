"""The recorder interface and the one function that writes events to the database."""

from __future__ import annotations

import abc
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    IntegrityError,
    connection,
    connections,
    transaction,
)

from ..records import EVENT_RECORD_FIELDS, EventRecord
from . import spool

logger = logging.getLogger("fluxgate.recording")

_MODEL_FIELDS = tuple(
    f for f in EVENT_RECORD_FIELDS if f not in ("team", "user_pk", "budget_reservation")
)


class BaseRecorder(abc.ABC):
    """Receives every ``EventRecord``; must never raise into, or block, the caller."""

    @abc.abstractmethod
    def record(self, record: EventRecord) -> None:
        """Accept one record for persistence."""

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything recorded so far is persisted (or spooled)."""
        return True

    def close(self) -> None:
        """Flush and release resources (settings change, shutdown)."""
        self.flush(timeout=5)


class _TeamIds:
    """Team slug → id, cached for a minute (teams are rarely renamed)."""

    def __init__(self) -> None:
        self._ids: dict[str, int | None] = {}
        self._loaded_at = 0.0

    def resolve(self, records: Sequence[EventRecord]) -> dict[str, int | None]:
        if time.monotonic() - self._loaded_at > 60:
            self._ids.clear()
            self._loaded_at = time.monotonic()
        wanted = {r.team for r in records if isinstance(r.team, str)} - self._ids.keys()
        if wanted:
            from ..models import Team

            found = dict(Team.objects.filter(slug__in=wanted).values_list("slug", "id"))
            for slug in wanted:
                self._ids[slug] = found.get(slug)
        return self._ids


_team_ids = _TeamIds()


def forget_team_ids() -> None:
    """Teams changed: resolve slugs afresh (connected to Team saves and deletes)."""
    _team_ids._ids.clear()


def to_event(record: EventRecord, team_ids: dict[str, int | None]) -> Any:
    """An unsaved ``Event`` for ``record`` (teams given as slugs resolved via ``team_ids``)."""
    from ..models import Event

    return Event(**_column_values(record, team_ids))


def _column_values(record: EventRecord, team_ids: dict[str, int | None]) -> dict[str, Any]:
    values = {f: getattr(record, f) for f in _MODEL_FIELDS}
    for name, limit in _max_lengths().items():
        # A value longer than its column (a client's X-Request-ID, a long feature name)
        # would fail the whole batch on PostgreSQL, and every replay of it: cut it.
        value = values[name]
        if isinstance(value, str) and len(value) > limit:
            values[name] = value[:limit]
    team = record.team
    if team is None or isinstance(team, int):
        values["team_id"] = team
    elif isinstance(team, str):
        values["team_id"] = team_ids.get(team)
        if values["team_id"] is None:
            values["metadata"] = {**record.metadata, "unknown_team": team}
    else:
        values["team_id"] = team.pk
    values["user_id"] = record.user_pk
    return values


@functools.cache
def _max_lengths() -> dict[str, int]:
    from ..models import Event

    return {
        f.name: f.max_length
        for f in Event._meta.concrete_fields
        if f.name in _MODEL_FIELDS and f.max_length and f.get_internal_type() == "CharField"
    }


def _drop_dangling_links(
    records: Sequence[EventRecord], team_ids: dict[str, int | None]
) -> Sequence[EventRecord]:
    """``records``, minus their links to users or teams that no longer exist.

    Foreign keys are checked when the transaction commits, so one event of a deleted user
    would fail its whole batch there (past the IntegrityError fallback) and every replay
    of it from the spool. The event is kept; only the broken link is dropped.
    """
    from django.contrib.auth import get_user_model
    from django.core.exceptions import ValidationError

    from ..models import Team

    def team_pk(r: EventRecord) -> Any:
        return team_ids.get(r.team) if isinstance(r.team, str) else getattr(r.team, "pk", r.team)

    user_model = get_user_model()
    wanted: dict[Any, Any] = {}
    gone_users: set[Any] = set()
    for raw in {r.user_pk for r in records if r.user_pk is not None}:
        try:
            wanted[raw] = user_model._meta.pk.to_python(raw)
        except ValidationError:
            gone_users.add(raw)
    if wanted:
        found = set(
            user_model._default_manager.filter(pk__in=wanted.values()).values_list("pk", flat=True)
        )
        gone_users.update(raw for raw, pk in wanted.items() if pk not in found)
    teams = {pk for pk in map(team_pk, records) if pk is not None}
    gone_teams = teams - set(Team.objects.filter(pk__in=teams).values_list("pk", flat=True))
    if not gone_users and not gone_teams:
        return records
    return [
        dataclasses.replace(
            r,
            user_pk=None if r.user_pk in gone_users else r.user_pk,
            team=None if team_pk(r) in gone_teams else r.team,
        )
        for r in records
    ]


class _Inserter:
    """Inserts event rows, skipping tracking ids already stored.

    PostgreSQL: ``COPY`` into a session temp table, then ``INSERT ... SELECT ... ON
    CONFLICT DO NOTHING RETURNING tracking_id`` — close to ``COPY``'s speed, and it says
    which rows *this* transaction inserted (a row another transaction is inserting at the
    same moment is waited for and left to it), so budgets and rollups count each event
    once even when the same batch is written twice at once. Elsewhere: one prepared
    ``INSERT ... ON CONFLICT DO NOTHING`` run with executemany.

    ``bulk_create`` builds a model instance and compiles SQL per row (~50 µs an event);
    the writer thread shares the GIL with the callers' LLM calls, so it is kept lean:
    values are adapted by each field's own ``get_db_prep_save`` only for the types that
    need it (UUID, datetime, Decimal, JSON) and passed through otherwise.
    """

    _ADAPTED = ("UUIDField", "DateTimeField", "DecimalField", "JSONField")
    #: The session's staging table (PostgreSQL), emptied at every commit.
    STAGING = "fluxgate_incoming_events"

    def __init__(self, conn: Any) -> None:
        from django.db.models.constants import OnConflict

        from ..models import Event

        fields = [f for f in Event._meta.concrete_fields if not f.primary_key]
        ops = conn.ops
        qn = ops.quote_name
        table = qn(Event._meta.db_table)
        columns = ", ".join(qn(f.column) for f in fields)
        conflict = ops.on_conflict_suffix_sql(fields, OnConflict.IGNORE, None, None) or ""
        self.sql = (
            f"{ops.insert_statement(on_conflict=OnConflict.IGNORE)} {table} ({columns}) "
            f"VALUES ({', '.join(['%s'] * len(fields))}){conflict}"
        )
        staging = qn(self.STAGING)
        self.create_staging = (
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} ON COMMIT DELETE ROWS AS "
            f"SELECT {columns} FROM {table} WITH NO DATA"
        )
        self.empty_staging = f"TRUNCATE {staging}"
        self.copy = f"COPY {staging} ({columns}) FROM STDIN"
        self.move = (
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging}{conflict} "
            f"RETURNING {qn(Event._meta.get_field('tracking_id').column)}"
        )
        self.fields = [
            (f.attname, f if f.get_internal_type() in self._ADAPTED else None) for f in fields
        ]
        # COPY sends every value as text, parsed by its column's type: only JSON needs
        # encoding here (psycopg writes UUIDs, datetimes and Decimals as is).
        self.copy_fields: list[tuple[str, bool, Any]] = [
            (f.attname, f.get_internal_type() == "JSONField", getattr(f, "encoder", None))
            for f in fields
        ]

    def params(self, values: dict[str, Any], conn: Any) -> tuple[Any, ...]:
        return tuple(
            values[name] if field is None else field.get_db_prep_save(values[name], conn)
            for name, field in self.fields
        )

    def copy_row(self, values: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(
            json.dumps(values[name], cls=encoder)
            if is_json and values[name] is not None
            else values[name]
            for name, is_json, encoder in self.copy_fields
        )


_inserters: dict[str, _Inserter] = {}


def _inserter(conn: Any) -> _Inserter:
    inserter = _inserters.get(conn.vendor)
    if inserter is None:
        inserter = _inserters[conn.vendor] = _Inserter(conn)
    return inserter


def _insert(records: Sequence[EventRecord], team_ids: dict[str, int | None]) -> None:
    """Insert the rows with executemany, skipping tracking ids already stored."""
    conn = connections[DEFAULT_DB_ALIAS]  # this thread's connection, not the proxy
    inserter = _inserter(conn)
    params = [inserter.params(_column_values(r, team_ids), conn) for r in records]
    with conn.cursor() as cursor:
        for start in range(0, len(params), 1000):
            cursor.executemany(inserter.sql, params[start : start + 1000])


def _copy_insert(rows: Sequence[dict[str, Any]]) -> set[Any]:
    """PostgreSQL: insert the rows (column values) through the staging table; returns the
    tracking ids this transaction inserted."""
    conn = connections[DEFAULT_DB_ALIAS]
    inserter = _inserter(conn)
    with conn.cursor() as cursor:
        cursor.execute(inserter.create_staging)
        cursor.execute(inserter.empty_staging)  # (a write earlier in this transaction)
        with cursor.copy(inserter.copy) as copy:
            for values in rows:
                copy.write_row(inserter.copy_row(values))
        cursor.execute(inserter.move)
        return {row[0] for row in cursor.fetchall()}


def _inserted_rows(
    records: Sequence[EventRecord], rows: Sequence[dict[str, Any]], inserted: set[Any]
) -> tuple[list[EventRecord], list[dict[str, Any]]]:
    """The records (and their column values) this transaction inserted (a repeated
    tracking id counts once)."""
    fresh, fresh_rows = [], []
    for record, values in zip(records, rows, strict=True):
        if record.tracking_id in inserted:
            inserted.discard(record.tracking_id)
            fresh.append(record)
            fresh_rows.append(values)
    return fresh, fresh_rows


def write_events(
    records: Sequence[EventRecord], *, replay_spool: bool = True, spool_on_error: bool = True
) -> int:
    """Insert ``records`` (duplicates by ``tracking_id`` are skipped) and settle the budget
    reservations they carry, in one transaction.

    If the database is unreachable the records go to the spool instead, and are written
    by a later successful call. Returns how many records were written (not spooled).
    With ``spool_on_error=False`` the ``DatabaseError`` is raised instead (the Celery
    task: its batch stays in the broker and is retried).
    """
    if not records:
        return 0
    try:
        team_ids = _team_ids.resolve(records)
        records = _drop_dangling_links(records, team_ids)
        with transaction.atomic():
            fresh = None
            if connections[DEFAULT_DB_ALIAS].vendor == "postgresql":
                # Settle and count exactly the rows this transaction inserts, even when
                # the same batch is being written at the same moment by another worker.
                _note_estimate_charges(records)
                rows = [_column_values(r, team_ids) for r in records]
                try:
                    with transaction.atomic():
                        fresh, fresh_rows = _inserted_rows(records, rows, _copy_insert(rows))
                except IntegrityError:
                    fresh = None
            if fresh is not None:
                settlement = _settlement_of(fresh)
                rollup = _rollup_of_rows(fresh_rows)
            else:
                # Elsewhere: leave out the records stored before, then insert.
                settlement = _settlement(records)
                rollup = _rollup_batch(records, team_ids)
                try:
                    with transaction.atomic():
                        _insert(records, team_ids)
                except IntegrityError:
                    # A row points at a user or team deleted meanwhile: keep the event,
                    # drop the link.
                    _write_one_by_one([to_event(r, team_ids) for r in records])
            _save_rollup(rollup)
            if settlement:
                from ..alerts import check_thresholds
                from ..budgets import settle_counters

                settle_counters(settlement)
                check_thresholds(list(settlement))
    except DatabaseError:
        if not spool_on_error:
            _discard_broken_connection()
            raise
        logger.warning(
            "FluxGate could not write %d events to the database; spooling them",
            len(records),
            exc_info=True,
        )
        spool.append(records)
        _discard_broken_connection()
        return 0
    _count_spend_rate(records, team_ids)
    if replay_spool and spool.has_pending():
        spool.replay(write_events)
    return len(records)


def _settlement(records: Sequence[EventRecord]) -> dict[int, tuple[int, int]]:
    """Budget settlements of the records not stored before (a replay settles nothing twice)."""
    reserved = [r for r in records if r.budget_reservation]
    if not reserved:
        return {}
    from ..budgets import settlement_for
    from ..models import Event

    stored = set(
        Event.objects.filter(tracking_id__in=[r.tracking_id for r in reserved]).values_list(
            "tracking_id", flat=True
        )
    )
    return settlement_for(r for r in reserved if r.tracking_id not in stored)


def _settlement_of(fresh: Sequence[EventRecord]) -> dict[int, tuple[int, int]]:
    """Budget settlements of records just inserted by this transaction."""
    reserved = [r for r in fresh if r.budget_reservation]
    if not reserved:
        return {}
    from ..budgets import settlement_for

    return settlement_for(reserved)


def _note_estimate_charges(records: Sequence[EventRecord]) -> None:
    """Note on each unpriced record charged its estimate (in its metadata, before it is
    stored); the settlement itself is computed once the insert says which are new."""
    reserved = [r for r in records if r.budget_reservation]
    if reserved:
        from ..budgets import settlement_for

        settlement_for(reserved)


def _rollup_batch(records: Sequence[EventRecord], team_ids: dict[str, int | None]) -> Any:
    """The report rollups' deltas of the records not stored yet (queried before the insert)."""
    from ..errors import capture_internal_exceptions
    from ..reports.rollups import RollupBatch

    with capture_internal_exceptions("report rollups"):
        return RollupBatch.for_records(records, team_ids)
    return None


def _rollup_of_rows(rows: Sequence[dict[str, Any]]) -> Any:
    """The report rollups' deltas of rows this transaction has just inserted."""
    from ..errors import capture_internal_exceptions
    from ..reports.rollups import RollupBatch

    with capture_internal_exceptions("report rollups"):
        batch = RollupBatch()
        for values in rows:
            batch.add(values)
        return batch
    return None


def _save_rollup(rollup: Any) -> None:
    """Add a batch to the report rollups. A failure there loses no event: it is logged and
    the rollups are put right by ``manage.py fluxgate_rebuild_rollups``."""
    if rollup is None:
        return
    from ..errors import capture_internal_exceptions

    with capture_internal_exceptions("report rollups"), transaction.atomic():
        rollup.save()


def _count_spend_rate(records: Sequence[EventRecord], team_ids: dict[str, int | None]) -> None:
    """Feed runaway detection with this batch's spend per team and feature."""
    from ..conf import fluxgate_settings

    if not fluxgate_settings.RUNAWAY_DETECTION.get("enabled"):
        return
    from ..models import to_units
    from ..runaway import record_spend

    costs: dict[tuple[int, str], Any] = {}
    for r in records:
        if r.cost_usd is None or r.team is None:
            continue
        team = r.team
        team_id = team_ids.get(team) if isinstance(team, str) else getattr(team, "pk", team)
        if team_id is not None:
            key = (int(team_id), r.feature)
            costs[key] = costs.get(key, 0) + r.cost_usd
    # One conversion per team and feature, not per event (a heuristic's input: the
    # rounding of a sum rather than a sum of roundings is fine).
    spend = {key: to_units(cost) for key, cost in costs.items()}
    from ..errors import capture_internal_exceptions

    with capture_internal_exceptions("runaway detection"):
        record_spend(spend)


def _write_one_by_one(rows: list[Any]) -> None:
    from ..models import Event

    for row in rows:
        try:
            with transaction.atomic():
                Event.objects.bulk_create([row], ignore_conflicts=True)
        except IntegrityError:
            row.user_id = None
            row.team_id = None
            Event.objects.bulk_create([row], ignore_conflicts=True)


def _discard_broken_connection() -> None:
    try:
        if connection.in_atomic_block:
            return
        connection.close()
    except Exception:
        pass
