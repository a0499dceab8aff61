"""The one pipeline: observed call → ``make_record`` → pricing → recorder.

Tracked SDK clients, the LangChain handler, the LLM service, budget refusals and the
ingest API all end here, so an event means the same thing whichever way it arrived::

    record = make_record(info, usage, ctx, latency_ms=...)   # builder.py, Django-free
    submit(record)          # prices it, settles its budget reservation, then records it

A recorder that stores records after the call returns (thread, Celery) gets each record
only once it is in this process's journal (``recording.journal``: one copy into a
memory-mapped file), so a process killed before the write loses nothing the caller was told about.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import ledger, otel
from .builder import (
    ServiceAttempt,
    make_record,
    redact_secrets,
    refuse_unstorable_price,
    service_attempt,
    user_fields,
)
from .conf import fluxgate_settings
from .errors import capture_internal_exceptions
from .estimate import calibration
from .pricing import calculate_cost
from .recording import get_recorder, journal
from .recording.write import write_events
from .records import CostSource, EventRecord

__all__ = [
    "ServiceAttempt",
    "make_record",
    "price_record",
    "redact_secrets",
    "service_attempt",
    "submit",
    "submit_batch",
    "user_fields",
]


def price_record(record: EventRecord) -> EventRecord:
    """Fill the cost fields of a record whose cost is not decided yet (``cost_source``
    empty) from the price data and ``ModelPrice`` overrides, at the prices in force at its
    ``created_at`` (an ingested or replayed event is priced as of its own time); others
    are returned as is."""
    if record.cost_source:
        return record
    priced = calculate_cost(
        record.provider,
        record.model,
        record.usage,
        requested_model=record.requested_model,
        service_tier=record.service_tier,
        at=record.created_at,
    )
    record.cost_usd, record.cost_source = priced.usd, priced.source
    if record.cost_saved_usd is None:
        record.cost_saved_usd = priced.saved
    refuse_unstorable_price(record)  # (a price no column or budget counter holds)
    return record


def finish_record(record: EventRecord) -> EventRecord:
    """Pricing, and the site's content setting: what every record goes through before it is
    recorded (prompt content is kept only with ``FLUXGATE["STORE_CONTENT"]``)."""
    price_record(record)
    if record.content is not None and not fluxgate_settings.STORE_CONTENT:
        record.content = None
    return record


def submit(record: EventRecord) -> EventRecord:
    """Price ``record`` and hand it to the configured recorder (never raises into the
    caller). Returns the record, priced."""
    _finish_safely(record)
    with capture_internal_exceptions("settling a budget reservation"):
        ledger.settler.settle(record)
        calibration.observe_record(record)
    with capture_internal_exceptions("making the call's span"):
        otel.emit(record)
    with capture_internal_exceptions("recording"):
        recorder = get_recorder()
        if recorder.uses_journal:
            journal.append_one(record)
        recorder.record(record)
    return record


def submit_batch(records: Sequence[EventRecord]) -> None:
    """:func:`submit` for many records at once (the ingest API): one hand-over, and it
    returns only once the records are durable — in the journal (one copy into its
    memory-mapped file), or, if the journal is off or can't take them, written to the
    database (or the spool, fsync'd) here, in the caller. (A bug in that write is raised,
    not logged: the API must not answer "accepted" for events it did not keep.)"""
    if not records:
        return
    _finish_all(records)
    for record in records:
        if record.budget_reservation:  # (settle() ignores a record without one)
            with capture_internal_exceptions("settling a budget reservation"):
                ledger.settler.settle(record)
    recorder = get_recorder()
    if recorder.uses_journal and not journal.append(records):
        write_events(records)  # (the journal is off or failed: the caller waits for it)
        return
    with capture_internal_exceptions("recording"):
        recorder.record_batch(records)


def _finish_all(records: Sequence[EventRecord]) -> None:
    """:func:`_finish_safely` of each record, with one guard for them all rather than one
    per record (an ingest batch, priced already: a few steps per record) — the same
    outcome: a record whose pricing raises is logged (or, under ``RAISE_ERRORS``, raised)
    and kept unpriced; the others are finished."""
    done = 0
    try:
        for record in records:
            finish_record(record)
            if not record.cost_source:  # pricing failed: the event is kept, unpriced
                record.cost_source = CostSource.UNKNOWN.value
            done += 1
        return
    except Exception:
        with capture_internal_exceptions("pricing"):
            raise
    failed = records[done]
    if not failed.cost_source:
        failed.cost_source = CostSource.UNKNOWN.value
    for record in records[done + 1 :]:
        _finish_safely(record)


def _finish_safely(record: EventRecord) -> None:
    with capture_internal_exceptions("pricing"):
        finish_record(record)
    if not record.cost_source:  # pricing failed: the event is kept, unpriced and says so
        record.cost_source = CostSource.UNKNOWN.value
