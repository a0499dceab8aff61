"""The recorder interface and the one function that writes events to the database."""

from __future__ import annotations

import abc
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

_MODEL_FIELDS = tuple(f for f in EVENT_RECORD_FIELDS if f not in ("team", "user_pk"))


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


def to_event(record: EventRecord, team_ids: dict[str, int | None]) -> Any:
    """An unsaved ``Event`` for ``record`` (teams given as slugs resolved via ``team_ids``)."""
    from ..models import Event

    return Event(**_column_values(record, team_ids))


def _column_values(record: EventRecord, team_ids: dict[str, int | None]) -> dict[str, Any]:
    values = {f: getattr(record, f) for f in _MODEL_FIELDS}
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


class _Inserter:
    """One prepared ``INSERT ... ON CONFLICT DO NOTHING`` for events, run with executemany.

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
        placeholders = ", ".join(["%s"] * len(fields))
        self.sql = (
            f"{ops.insert_statement(on_conflict=OnConflict.IGNORE)} "
            f"{qn(Event._meta.db_table)} ({columns}) VALUES ({placeholders})"
            f"{ops.on_conflict_suffix_sql(fields, OnConflict.IGNORE, None, None) or ''}"
        )
        self.fields = [
            (f.attname, f if f.get_internal_type() in self._ADAPTED else None) for f in fields
        ]

    def params(self, values: dict[str, Any], conn: Any) -> tuple[Any, ...]:
        return tuple(
            values[name] if field is None else field.get_db_prep_save(values[name], conn)
            for name, field in self.fields
        )


_inserters: dict[str, _Inserter] = {}


def _insert(records: Sequence[EventRecord], team_ids: dict[str, int | None]) -> None:
    conn = connections[DEFAULT_DB_ALIAS]  # this thread's connection, not the proxy
    inserter = _inserters.get(conn.vendor)
    if inserter is None:
        inserter = _inserters[conn.vendor] = _Inserter(conn)
    params = [inserter.params(_column_values(r, team_ids), conn) for r in records]
    with transaction.atomic(), conn.cursor() as cursor:
        for start in range(0, len(params), 1000):
            cursor.executemany(inserter.sql, params[start : start + 1000])


def write_events(records: Sequence[EventRecord], *, replay_spool: bool = True) -> int:
    """Insert ``records`` (duplicates by ``tracking_id`` are skipped).

    If the database is unreachable the records go to the spool instead, and are written
    by a later successful call. Returns how many records were written (not spooled).
    """
    if not records:
        return 0
    try:
        team_ids = _team_ids.resolve(records)
        try:
            _insert(records, team_ids)
        except IntegrityError:
            # A row points at a user or team deleted meanwhile: keep the event, drop the link.
            _write_one_by_one([to_event(r, team_ids) for r in records])
    except DatabaseError:
        logger.warning(
            "FluxGate could not write %d events to the database; spooling them",
            len(records),
            exc_info=True,
        )
        spool.append(records)
        _discard_broken_connection()
        return 0
    if replay_spool and spool.has_pending():
        spool.replay(write_events)
    return len(records)


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
