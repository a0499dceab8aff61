"""The recorder interface and the one function that writes events to the database."""

from __future__ import annotations

import abc
import dataclasses
import functools
import json
import logging
import operator
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

from ..records import EventRecord
from . import spool

logger = logging.getLogger("fluxgate.recording")


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

    rows = _event_rows()
    return Event(**dict(zip(rows.columns, rows.row(record, team_ids), strict=True)))


class _EventRows:
    """Records as rows of ``Event`` column values, in the table's column order.

    One ``attrgetter`` call reads a record's fields (the writer builds a row per event, on
    a thread that shares the GIL with the callers), then the few columns that need it are
    fixed up: the team (a slug, id or instance) becomes ``team_id``, and strings longer
    than their column are cut — a client's long X-Request-ID or feature name would fail
    the whole batch on PostgreSQL, and every replay of it.
    """

    def __init__(self) -> None:
        from ..models import Event

        fields = [f for f in Event._meta.concrete_fields if not f.primary_key]
        self.fields = fields
        self.columns: list[str] = [f.attname for f in fields]
        self.index = {name: i for i, name in enumerate(self.columns)}
        sources = {"team_id": "team", "user_id": "user_pk"}
        self._get = operator.attrgetter(*(sources.get(c, c) for c in self.columns))
        self._team = self.index["team_id"]
        self._metadata = self.index["metadata"]
        self._limits = [
            (self.index[f.attname], f.max_length)
            for f in fields
            if f.max_length and f.get_internal_type() in ("CharField", "SlugField")
        ]

    def row(self, record: EventRecord, team_ids: dict[str, int | None]) -> list[Any]:
        row = list(self._get(record))
        team = row[self._team]
        if team is not None and team.__class__ is not int:
            if isinstance(team, str):
                row[self._team] = team_ids.get(team)
                if row[self._team] is None:
                    row[self._metadata] = {**row[self._metadata], "unknown_team": team}
            else:
                row[self._team] = team.pk
        for i, limit in self._limits:
            value = row[i]
            if value.__class__ is str and len(value) > limit:
                row[i] = value[:limit]
        return row


@functools.cache
def _event_rows() -> _EventRows:
    return _EventRows()


def event_rows(records: Sequence[EventRecord], team_ids: dict[str, int | None]) -> list[list[Any]]:
    """The ``Event`` rows of ``records`` (columns: ``_event_rows().columns``)."""
    row = _event_rows().row
    return [row(r, team_ids) for r in records]


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

    PostgreSQL: ``COPY`` into a session temp table, then ``INSERT ... SELECT`` — close to
    ``COPY``'s speed. If a tracking id is already stored, that INSERT fails and is redone
    as ``INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING tracking_id``, which says
    which rows *this* transaction inserted (a row another transaction is inserting at the
    same moment is waited for and left to it), so budgets and rollups count each event
    once even when the same batch is written twice at once. Elsewhere: one prepared
    ``INSERT ... ON CONFLICT DO NOTHING`` run with executemany.

    ``bulk_create`` builds a model instance and compiles SQL per row (~50 µs an event);
    the writer thread shares the GIL with the callers' LLM calls, so it is kept lean: rows
    come from :class:`_EventRows`, and values are adapted by each field's own
    ``get_db_prep_save`` only for the types that need it (UUID, datetime, Decimal, JSON).
    """

    _ADAPTED = ("UUIDField", "DateTimeField", "DecimalField", "JSONField")
    #: The session's staging table (PostgreSQL), emptied at every commit.
    STAGING = "fluxgate_incoming_events"

    def __init__(self, conn: Any) -> None:
        from django.db.models.constants import OnConflict

        from ..models import Event

        fields = _event_rows().fields
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
        # (Emptied at every commit: this only matters for a second write in a transaction;
        # DELETE of an empty temp table costs nothing, TRUNCATE makes a new file.)
        self.empty_staging = f"DELETE FROM {staging}"
        self.copy = f"COPY {staging} ({columns}) FROM STDIN"
        self.values_prefix = f"INSERT INTO {table} ({columns}) VALUES "
        self.values_row = f"({', '.join(['%s'] * len(fields))})"
        self.returning = f"{conflict} RETURNING {qn(Event._meta.get_field('tracking_id').column)}"
        self.move = f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging}"
        self.move_new = f"{self.move}{self.returning}"
        self.adapted = [
            (i, f) for i, f in enumerate(fields) if f.get_internal_type() in self._ADAPTED
        ]
        # COPY sends every value as text, parsed by its column's type: only JSON needs
        # encoding here (psycopg writes UUIDs, datetimes and Decimals as is).
        self.json = [
            (i, getattr(f, "encoder", None))
            for i, f in enumerate(fields)
            if f.get_internal_type() == "JSONField"
        ]

    def params(self, row: list[Any], conn: Any) -> list[Any]:
        """A row's values as query parameters."""
        params = list(row)
        for i, field in self.adapted:
            params[i] = field.get_db_prep_save(params[i], conn)
        return params

    def copy_row(self, row: list[Any]) -> list[Any]:
        """A row's values for ``COPY``."""
        values = list(row)
        for i, encoder in self.json:
            value = values[i]
            if value is None:
                continue
            if not value and value.__class__ in (dict, list):
                values[i] = "{}" if value.__class__ is dict else "[]"  # (most tags, metadata)
            else:
                values[i] = json.dumps(value, cls=encoder)
        return values


_inserters: dict[str, _Inserter] = {}


def _inserter(conn: Any) -> _Inserter:
    inserter = _inserters.get(conn.vendor)
    if inserter is None:
        inserter = _inserters[conn.vendor] = _Inserter(conn)
    return inserter


def _insert(rows: Sequence[list[Any]]) -> None:
    """Insert the rows with executemany, skipping tracking ids already stored."""
    conn = connections[DEFAULT_DB_ALIAS]  # this thread's connection, not the proxy
    inserter = _inserter(conn)
    params = [inserter.params(row, conn) for row in rows]
    with conn.cursor() as cursor:
        for start in range(0, len(params), 1000):
            cursor.executemany(inserter.sql, params[start : start + 1000])


#: Up to this many rows, one ``INSERT … VALUES … RETURNING`` costs fewer round trips than
#: ``COPY`` through the staging table (the sync recorder, a quiet site's flushes).
SMALL_BATCH = 50


def _insert_new(rows: Sequence[list[Any]]) -> set[Any] | None:
    """PostgreSQL: insert the rows, skipping tracking ids already stored. Returns None
    when every row was inserted (a big batch), else the tracking ids this transaction
    inserted."""
    if len(rows) > SMALL_BATCH:
        return _copy_insert(rows)
    conn = connections[DEFAULT_DB_ALIAS]
    inserter = _inserter(conn)
    params = [value for row in rows for value in inserter.params(row, conn)]
    values = ", ".join([inserter.values_row] * len(rows))
    with conn.cursor() as cursor:
        cursor.execute(f"{inserter.values_prefix}{values}{inserter.returning}", params)
        return {row[0] for row in cursor.fetchall()}


def _copy_insert(rows: Sequence[list[Any]]) -> set[Any] | None:
    """PostgreSQL: insert the rows through the staging table. Returns None when every row
    was inserted (the usual case: one plain ``INSERT … SELECT``), else — some were stored
    before (a spool replay, a batch delivered again) or are in the batch twice — the
    tracking ids this transaction inserted (``ON CONFLICT DO NOTHING RETURNING``, ~25%
    slower, so only then)."""
    conn = connections[DEFAULT_DB_ALIAS]
    inserter = _inserter(conn)
    with conn.cursor() as cursor:
        cursor.execute(inserter.create_staging)
        cursor.execute(inserter.empty_staging)  # (a write earlier in this transaction)
        with cursor.copy(inserter.copy) as copy:
            for row in rows:
                copy.write_row(inserter.copy_row(row))
        try:
            with transaction.atomic():
                cursor.execute(inserter.move)
            return None
        except IntegrityError:
            pass
        cursor.execute(inserter.move_new)
        return {row[0] for row in cursor.fetchall()}


def _inserted_rows(
    records: Sequence[EventRecord], rows: Sequence[list[Any]], inserted: set[Any]
) -> tuple[list[EventRecord], list[list[Any]]]:
    """The records (and their rows) this transaction inserted (a repeated tracking id
    counts once)."""
    fresh, fresh_rows = [], []
    for record, row in zip(records, rows, strict=True):
        if record.tracking_id in inserted:
            inserted.discard(record.tracking_id)
            fresh.append(record)
            fresh_rows.append(row)
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
            _note_estimate_charges(records)  # (into their metadata: before making rows)
            rows = event_rows(records, team_ids)
            fresh = None
            if connections[DEFAULT_DB_ALIAS].vendor == "postgresql":
                # Settle and count exactly the rows this transaction inserts, even when
                # the same batch is being written at the same moment by another worker.
                try:
                    with transaction.atomic():
                        inserted = _insert_new(rows)
                except IntegrityError:
                    pass
                else:
                    if inserted is None:  # all new (the usual case)
                        fresh, rollup = records, _rollup_of_staged()
                    else:
                        fresh, fresh_rows = _inserted_rows(records, rows, inserted)
                        rollup = _rollup_of_rows(fresh_rows)
            if fresh is not None:
                settlement = _settlement_of(fresh)
            else:
                # Elsewhere: leave out the records stored before, then insert.
                settlement = _settlement(records)
                rollup = _rollup_of_unstored(rows)
                try:
                    with transaction.atomic():
                        _insert(rows)
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


def _rollup_of_unstored(rows: Sequence[list[Any]]) -> Any:
    """The report rollups' deltas of the rows not stored yet (queried before the insert)."""
    from ..errors import capture_internal_exceptions
    from ..reports.rollups import RollupBatch

    with capture_internal_exceptions("report rollups"):
        return RollupBatch.of_unstored(rows, _event_rows().columns)
    return None


def _rollup_of_staged() -> Any:
    """PostgreSQL: the report rollups' deltas of the whole staging table (every row of it
    just inserted), summed by the database when saved."""
    from ..reports.rollups import StagedEvents

    return StagedEvents(_Inserter.STAGING)


def _rollup_of_rows(rows: Sequence[list[Any]]) -> Any:
    """The report rollups' deltas of rows this transaction has just inserted."""
    from ..errors import capture_internal_exceptions
    from ..reports.rollups import RollupBatch

    with capture_internal_exceptions("report rollups"):
        batch = RollupBatch()
        batch.add_rows(rows, _event_rows().columns)
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
