"""The SQL that inserts event rows: ``COPY`` through a staging table on PostgreSQL, one
prepared ``INSERT … ON CONFLICT DO NOTHING`` elsewhere; both skip stored tracking ids.

Each function runs on this thread's connection of ``alias``, the events' database
(:func:`.rows.events_alias`), inside the write's transaction."""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

from django.db import IntegrityError, connections, transaction

from ..records import EventRecord
from .rows import event_rows_spec

#: The session's staging table (PostgreSQL), emptied at every commit.
STAGING = "fluxgate_incoming_events"


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

    def __init__(self, conn: Any) -> None:
        from django.db.models.constants import OnConflict

        from ..models import Event

        fields = event_rows_spec().fields
        ops = conn.ops
        qn = ops.quote_name
        table = qn(Event._meta.db_table)
        columns = ", ".join(qn(f.column) for f in fields)
        conflict = ops.on_conflict_suffix_sql(fields, OnConflict.IGNORE, None, None) or ""
        self.sql = (
            f"{ops.insert_statement(on_conflict=OnConflict.IGNORE)} {table} ({columns}) "
            f"VALUES ({', '.join(['%s'] * len(fields))}){conflict}"
        )
        staging = qn(STAGING)
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
        # COPY sends every value as text, parsed by its column's type: JSON needs
        # encoding here (psycopg writes UUIDs and Decimals as is); a datetime is written
        # as its ISO text, the column's own input format (psycopg's text dumper of a
        # datetime costs a third of the row's).
        self.json = [
            (i, _json_dumps(getattr(f, "encoder", None)))
            for i, f in enumerate(fields)
            if f.get_internal_type() == "JSONField"
        ]
        self.datetimes = [
            i for i, f in enumerate(fields) if f.get_internal_type() == "DateTimeField"
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
        for i, dumps in self.json:
            value = values[i]
            if value is None:
                continue
            if not value and value.__class__ in (dict, list):
                values[i] = "{}" if value.__class__ is dict else "[]"  # (most tags, metadata)
            else:
                values[i] = dumps(value)
        for i in self.datetimes:
            value = values[i]
            if value.__class__ is dt.datetime:
                values[i] = value.isoformat()
        return values


def _json_dumps(encoder: type[json.JSONEncoder] | None) -> Callable[[Any], str]:
    """``json.dumps(value, cls=encoder)`` — for ``COPY`` into a ``jsonb`` column, which
    keeps the value, not its text — without its per-call setup (an encoder object and its
    C encoder, for each metadata): with ``orjson`` installed and no encoder of the
    field's own, orjson's encoding of a value it takes whole (plain JSON: the builder
    makes every JSON value so; a NaN, which orjson would write as null, is text there),
    else the same C encoder, options and ``default`` as ``json.dumps``."""
    standard = _standard_json_dumps(encoder)
    if encoder is not None or _orjson_dumps is None:
        return standard
    fast = _orjson_dumps

    def dumps(value: Any) -> str:
        try:
            return fast(value).decode()
        except TypeError:  # (a value orjson does not take: a 65-bit int, a surrogate...)
            return standard(value)

    return dumps


_orjson_dumps: Callable[..., bytes] | None
try:
    from orjson import dumps as _orjson_dumps
except ImportError:  # pragma: no cover - depends on the environment
    _orjson_dumps = None


def _standard_json_dumps(encoder: type[json.JSONEncoder] | None) -> Callable[[Any], str]:
    """``json.dumps(value, cls=encoder)``, built once."""
    cls = encoder or json.JSONEncoder
    make = getattr(json.encoder, "c_make_encoder", None)
    if (
        make is None
        or cls.encode is not json.JSONEncoder.encode
        or cls.iterencode is not json.JSONEncoder.iterencode
    ):
        return functools.partial(json.dumps, cls=encoder)
    options = cls()
    default = options.default
    ascii_strings = json.encoder.encode_basestring_ascii
    key_separator, item_separator = options.key_separator, options.item_separator
    sort_keys, skipkeys, allow_nan = options.sort_keys, options.skipkeys, options.allow_nan

    def dumps(value: Any) -> str:
        # (A new circular-reference memo per value, as json.dumps has.)
        encode = make(
            {}, default, ascii_strings, None, key_separator, item_separator,
            sort_keys, skipkeys, allow_nan,
        )  # fmt: skip
        return "".join(encode(value, 0))

    return dumps


_inserters: dict[str, _Inserter] = {}


def _inserter(conn: Any) -> _Inserter:
    inserter = _inserters.get(conn.vendor)
    if inserter is None:
        inserter = _inserters[conn.vendor] = _Inserter(conn)
    return inserter


def insert(rows: Sequence[list[Any]], alias: str) -> None:
    """Insert the rows with executemany, skipping tracking ids already stored."""
    conn = connections[alias]  # this thread's connection, not the proxy
    inserter = _inserter(conn)
    params = [inserter.params(row, conn) for row in rows]
    with conn.cursor() as cursor:
        for start in range(0, len(params), 1000):
            cursor.executemany(inserter.sql, params[start : start + 1000])


#: Up to this many rows, one ``INSERT … VALUES … RETURNING`` costs fewer round trips than
#: ``COPY`` through the staging table (the sync recorder, a quiet site's flushes).
SMALL_BATCH = 50


def insert_new(rows: Sequence[list[Any]], alias: str) -> set[Any] | None:
    """PostgreSQL: insert the rows, skipping tracking ids already stored. Returns None
    when every row was inserted (a big batch), else the tracking ids this transaction
    inserted."""
    if len(rows) > SMALL_BATCH:
        return _copy_insert(rows, alias)
    conn = connections[alias]
    inserter = _inserter(conn)
    params = [value for row in rows for value in inserter.params(row, conn)]
    values = ", ".join([inserter.values_row] * len(rows))
    with conn.cursor() as cursor:
        cursor.execute(f"{inserter.values_prefix}{values}{inserter.returning}", params)
        return {row[0] for row in cursor.fetchall()}


def _copy_insert(rows: Sequence[list[Any]], alias: str) -> set[Any] | None:
    """PostgreSQL: insert the rows through the staging table. Returns None when every row
    was inserted (the usual case: one plain ``INSERT … SELECT``), else — some were stored
    before (a spool replay, a batch delivered again) or are in the batch twice — the
    tracking ids this transaction inserted (``ON CONFLICT DO NOTHING RETURNING``, ~25%
    slower, so only then)."""
    conn = connections[alias]
    inserter = _inserter(conn)
    with conn.cursor() as cursor:
        cursor.execute(inserter.create_staging)
        cursor.execute(inserter.empty_staging)  # (a write earlier in this transaction)
        # psycopg raises its own errors from COPY: made Django's here, like every other
        # statement's (and the connection marked as having failed).
        with conn.wrap_database_errors, cursor.copy(inserter.copy) as copy:
            for row in rows:
                copy.write_row(inserter.copy_row(row))
        try:
            with transaction.atomic(using=alias):
                cursor.execute(inserter.move)
            return None
        except IntegrityError:
            pass
        cursor.execute(inserter.move_new)
        return {row[0] for row in cursor.fetchall()}


def inserted_rows(
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


def write_one_by_one(rows: list[Any], alias: str) -> None:
    """Save unsaved ``Event`` instances one at a time; one whose user or team is gone
    (a foreign key refused) is saved without those links."""
    from ..models import Event

    events = Event.objects.using(alias)
    for row in rows:
        try:
            with transaction.atomic(using=alias):
                events.bulk_create([row], ignore_conflicts=True)
        except IntegrityError:
            row.user_id = None
            row.team_id = None
            events.bulk_create([row], ignore_conflicts=True)
