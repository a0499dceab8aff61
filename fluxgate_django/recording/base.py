"""The recorder interface and the one function that writes events to the database."""

from __future__ import annotations

import abc
import dataclasses
import functools
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
    """``INSERT ... ON CONFLICT DO NOTHING`` for events: one statement run with executemany
    or, where the database can say which rows it inserted (PostgreSQL), multi-row
    ``VALUES`` with ``RETURNING tracking_id``.

    ``bulk_create`` builds a model instance and compiles SQL per row (~50 µs an event);
    the writer thread shares the GIL with the callers' LLM calls, so it is kept lean:
    values are adapted by each field's own ``get_db_prep_save`` only for the types that
    need it (UUID, datetime, Decimal, JSON) and passed through otherwise.
    """

    _ADAPTED = ("UUIDField", "DateTimeField", "DecimalField", "JSONField")

    def __init__(self, conn: Any) -> None:
        from django.db.models.constants import OnConflict

        from ..models import Event

        fields = [f for f in Event._meta.concrete_fields if not f.primary_key]
        ops = conn.ops
        qn = ops.quote_name
        columns = ", ".join(qn(f.column) for f in fields)
        self.row = f"({', '.join(['%s'] * len(fields))})"
        self.head = (
            f"{ops.insert_statement(on_conflict=OnConflict.IGNORE)} "
            f"{qn(Event._meta.db_table)} ({columns}) VALUES "
        )
        self.tail = ops.on_conflict_suffix_sql(fields, OnConflict.IGNORE, None, None) or ""
        self.sql = f"{self.head}{self.row}{self.tail}"
        self.returning = f"{self.tail} RETURNING {qn(Event._meta.get_field('tracking_id').column)}"
        self.fields = [
            (f.attname, f if f.get_internal_type() in self._ADAPTED else None) for f in fields
        ]

    def multirow_sql(self, rows: int) -> str:
        return f"{self.head}{', '.join([self.row] * rows)}{self.returning}"

    def params(self, values: dict[str, Any], conn: Any) -> tuple[Any, ...]:
        return tuple(
            values[name] if field is None else field.get_db_prep_save(values[name], conn)
            for name, field in self.fields
        )


_inserters: dict[str, _Inserter] = {}


def _insert(
    records: Sequence[EventRecord], team_ids: dict[str, int | None], *, returning: bool = False
) -> set[Any] | None:
    """Insert the rows, skipping tracking ids already stored. With ``returning`` (PostgreSQL)
    returns the tracking ids this statement inserted: a row another transaction is
    inserting at the same moment is waited for, and counted there, not here."""
    conn = connections[DEFAULT_DB_ALIAS]  # this thread's connection, not the proxy
    inserter = _inserters.get(conn.vendor)
    if inserter is None:
        inserter = _inserters[conn.vendor] = _Inserter(conn)
    params = [inserter.params(_column_values(r, team_ids), conn) for r in records]
    inserted: set[Any] = set()
    with conn.cursor() as cursor:
        for start in range(0, len(params), 1000):
            chunk = params[start : start + 1000]
            if not returning:
                cursor.executemany(inserter.sql, chunk)
                continue
            cursor.execute(inserter.multirow_sql(len(chunk)), [v for row in chunk for v in row])
            inserted.update(row[0] for row in cursor.fetchall())
    return inserted if returning else None


def _inserted_records(records: Sequence[EventRecord], inserted: set[Any]) -> list[EventRecord]:
    """The records whose rows this transaction inserted (the first of a repeated id)."""
    fresh = []
    for record in records:
        if record.tracking_id in inserted:
            inserted.discard(record.tracking_id)
            fresh.append(record)
    return fresh


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
                try:
                    with transaction.atomic():
                        fresh = _inserted_records(
                            records, _insert(records, team_ids, returning=True) or set()
                        )
                except IntegrityError:
                    fresh = None
            if fresh is not None:
                settlement = _settlement_of(fresh)
                rollup = _rollup_batch(fresh, team_ids, stored_checked=True)
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


def _rollup_batch(
    records: Sequence[EventRecord],
    team_ids: dict[str, int | None],
    *,
    stored_checked: bool = False,
) -> Any:
    """The report rollups' deltas of the records not stored yet (queried before the insert,
    unless ``stored_checked``: they are the ones this transaction just inserted)."""
    from ..errors import capture_internal_exceptions
    from ..reports.rollups import RollupBatch

    with capture_internal_exceptions("report rollups"):
        if not stored_checked:
            return RollupBatch.for_records(records, team_ids)
        batch = RollupBatch()
        for record in records:
            batch.add(_column_values(record, team_ids))
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

    spend: dict[tuple[int, str], int] = {}
    for r in records:
        if r.cost_usd is None or r.team is None:
            continue
        team = r.team
        team_id = team_ids.get(team) if isinstance(team, str) else getattr(team, "pk", team)
        if team_id is not None:
            key = (int(team_id), r.feature)
            spend[key] = spend.get(key, 0) + to_units(r.cost_usd)
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
