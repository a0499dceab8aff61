"""The one function that writes events to the database: :func:`write_events`.

Every recorder, the ingest API, the Celery task and spool replays end here. One batch is
one transaction: its rows are inserted (skipping tracking ids already stored), and the
write hooks (:mod:`.hooks`: budget settlement, rollups, alerts) run on exactly the
records this transaction inserted.

No batch is ever dropped. Every error of a write — Django's, psycopg's own (``COPY``),
at any statement or at ``COMMIT`` — is a failure of that batch, sorted by
:func:`.failures.failure_kind`:

* a connection failure (the server went away, a cut or stalled connection): the broken
  connection is discarded and the batch retried on a new one with a short backoff (a
  few attempts within ~2 s in FluxGate's own threads, one quick retry in a caller's),
  then spooled — or, with ``spool_on_error=False``, raised (the Celery task: its batch
  stays in the broker and is retried);
* a data failure (a value the database refuses): the batch is bisected, its good events
  written, and each record refused alone quarantined (:mod:`.quarantine`);
* another database error (a table missing during a deploy): spooled, or raised.

A write attempt that runs too long is taken for a stalled connection (:mod:`.stalls`):
its socket is shut, so it fails as a connection failure and is retried.

Everything happens on the events' database, as the site's ``DATABASE_ROUTERS`` say
(:func:`.rows.events_alias`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

from django.db import IntegrityError, connections, transaction

from .. import teams
from ..errors import capture_internal_exceptions
from ..records import EventRecord
from . import failures, hooks, spool, stalls
from .failures import CONNECTION, DATA, DUPLICATE, OTHER, RetryPolicy
from .quarantine import describe, quarantine
from .rows import drop_dangling_links, event_rows, event_rows_spec, events_alias, to_event
from .sql import STAGING, insert, insert_new, inserted_rows, write_one_by_one

logger = logging.getLogger("fluxgate.recording")


@dataclasses.dataclass(slots=True)
class WriteOutcome:
    """What became of a batch: stored (inserted now, or stored before), quarantined (in
    the dead-letter table), spooled (for a later write)."""

    written: int = 0
    quarantined: int = 0
    spooled: int = 0

    def __iadd__(self, other: WriteOutcome) -> WriteOutcome:
        self.written += other.written
        self.quarantined += other.quarantined
        self.spooled += other.spooled
        return self


def write_events(
    records: Sequence[EventRecord],
    *,
    replay_spool: bool = True,
    spool_on_error: bool = True,
    retry: RetryPolicy | None = None,
) -> int:
    """Insert ``records`` (duplicates by ``tracking_id`` are skipped) and run the write
    hooks on those inserted, in one transaction.

    If the database can't be reached the records go to the spool instead, and are
    written by a later successful call; records it refuses are quarantined. Returns how
    many records were dealt with: written (or stored before) and quarantined, not
    spooled. With ``spool_on_error=False`` a database failure is raised instead of
    spooled, as a Django ``DatabaseError`` (``OperationalError`` when the connection
    failed) after the retries.

    ``retry``: the backoff (:mod:`.failures`); by default long in FluxGate's own threads
    and one short retry in a caller's.
    """
    outcome = write_batch(
        records, replay_spool=replay_spool, spool_on_error=spool_on_error, retry=retry
    )
    return outcome.written + outcome.quarantined


def write_batch(
    records: Sequence[EventRecord],
    *,
    replay_spool: bool = True,
    spool_on_error: bool = True,
    retry: RetryPolicy | None = None,
) -> WriteOutcome:
    """:func:`write_events`, saying what became of the records."""
    if not records:
        return WriteOutcome()
    writer = _Writer(spool_on_error, retry or failures.policy_for_this_thread(), events_alias())
    outcome = writer.store(list(records))
    if outcome.written and replay_spool and spool.has_pending():
        try:
            spool.replay(write_events)
        except failures.DATABASE_ERRORS:  # (the spool keeps what it could not replay)
            logger.warning("FluxGate could not replay the spool now", exc_info=True)
    return outcome


@dataclasses.dataclass(slots=True)
class _Writer:
    spool_on_error: bool
    policy: RetryPolicy
    #: The events' database (one per write: a router is asked once).
    alias: str

    def store(self, records: list[EventRecord]) -> WriteOutcome:
        """Write ``records`` as one transaction: retried, bisected, spooled."""
        started = time.monotonic()
        # Inside a caller's transaction a broken connection can't be replaced: no retry;
        # nor during an outage another batch already waited out.
        alias = self.alias
        retry = not (connections[alias].in_atomic_block or failures.outage.known())
        delays = iter(self.policy.delays if retry else ())
        while True:
            try:
                with stalls.watch(alias, len(records)):
                    batch = _write_once(records, alias)
            except Exception as exc:
                kind = failures.failure_kind(exc)
                if kind is None:
                    raise  # a bug
                if kind in (CONNECTION, OTHER):
                    failures.discard_connection(alias)
                if kind in (CONNECTION, DUPLICATE):
                    delay = next(delays, None)
                    if delay is not None and time.monotonic() - started + delay <= (
                        self.policy.seconds
                    ):
                        time.sleep(delay)
                        continue
                    if kind == CONNECTION:
                        failures.outage.started()
                    kind = DATA if kind == DUPLICATE else kind  # not a race: a refused row
                if kind == DATA:
                    return self.bisect(records, exc)
                return self.give_up(records, exc)
            failures.outage.ended()
            with capture_internal_exceptions("after writing events"):
                hooks.committed(batch)
            return WriteOutcome(written=len(records))

    def bisect(self, records: list[EventRecord], exc: Exception) -> WriteOutcome:
        """A record of the batch is refused: write each half on its own, down to the
        records refused alone, which are quarantined."""
        if len(records) == 1:
            return self.quarantine(records[0], exc)
        middle = len(records) // 2
        outcome = self.store(records[:middle])
        outcome += self.store(records[middle:])
        return outcome

    def quarantine(self, record: EventRecord, exc: Exception) -> WriteOutcome:
        if not isinstance(exc, failures.DATABASE_ERRORS):
            # A value that could not even be encoded (or a bug that looks like one): the
            # traceback says which.
            logger.error("FluxGate could not encode event %s", record.tracking_id, exc_info=exc)
        try:
            with stalls.watch(self.alias, 1):
                quarantine(record, describe(exc), self.alias)
        except failures.DATABASE_ERRORS as failure:
            # (Even the dead-letter table can't take it now: it is tried again later.)
            if failures.failure_kind(failure) in (CONNECTION, OTHER):
                failures.discard_connection(self.alias)
            return self.give_up([record], failure)
        return WriteOutcome(quarantined=1)

    def give_up(self, records: list[EventRecord], exc: Exception) -> WriteOutcome:
        if not self.spool_on_error:
            raise failures.as_django_error(exc)
        logger.warning(
            "FluxGate could not write %d events to the database (%s); spooling them",
            len(records),
            describe(exc, full=False),
        )
        return WriteOutcome(spooled=spool.append(records))


def _write_once(records: Sequence[EventRecord], alias: str) -> hooks.WrittenBatch:
    """One attempt: the batch in one transaction on ``alias``, its hooks included."""
    team_ids = teams.team_ids(r.team for r in records if isinstance(r.team, str))
    records = drop_dangling_links(records, team_ids, alias)
    with transaction.atomic(using=alias):
        hooks.prepare(records)  # (may add to metadata: before the rows are made)
        batch = _insert(records, event_rows(records, team_ids), team_ids, alias)
        hooks.written(batch)
    return batch


def _insert(
    records: Sequence[EventRecord],
    rows: list[list[Any]],
    team_ids: dict[str, int | None],
    alias: str,
) -> hooks.WrittenBatch:
    """Insert the rows; the batch of those this transaction inserted."""
    columns = event_rows_spec().columns
    if connections[alias].vendor == "postgresql":
        # Exactly the rows this transaction inserts, even when the same batch is being
        # written at the same moment by another worker.
        try:
            with transaction.atomic(using=alias):
                inserted = insert_new(rows, alias)
        except IntegrityError:
            pass  # a row points at a user or team deleted meanwhile: below
        else:
            if inserted is None:  # all new (the usual case): the staging table has them
                return hooks.WrittenBatch(records, None, columns, STAGING, team_ids, alias)
            fresh, fresh_rows = inserted_rows(records, rows, inserted)
            return hooks.WrittenBatch(fresh, fresh_rows, columns, None, team_ids, alias)
    fresh, fresh_rows = _unstored(records, rows, alias)
    try:
        with transaction.atomic(using=alias):
            insert(fresh_rows, alias)
    except IntegrityError:
        # A row points at a user or team deleted meanwhile: keep the event, drop the link.
        write_one_by_one([to_event(r, team_ids) for r in fresh], alias)
    return hooks.WrittenBatch(fresh, fresh_rows, columns, None, team_ids, alias)


def _unstored(
    records: Sequence[EventRecord], rows: list[list[Any]], alias: str
) -> tuple[list[EventRecord], list[list[Any]]]:
    """The records (and rows) not stored yet, each tracking id once."""
    from ..models import Event

    seen = set(
        Event.objects.using(alias)
        .filter(tracking_id__in=[r.tracking_id for r in records])
        .values_list("tracking_id", flat=True)
    )
    fresh, fresh_rows = [], []
    for record, row in zip(records, rows, strict=True):
        if record.tracking_id not in seen:
            seen.add(record.tracking_id)
            fresh.append(record)
            fresh_rows.append(row)
    return fresh, fresh_rows
