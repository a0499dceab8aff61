"""``RECORDER = "celery"``: batches are written by Celery workers.

Events are batched in-process exactly as by the thread recorder, and each batch goes to
the broker as ONE task (``fluxgate.record_events``), not one task per event. The task is
``acks_late`` and idempotent (``tracking_id``), so a worker killed mid-batch makes the
broker deliver the batch again without duplicates. When the broker can't be reached the
batch is written to the database directly, and if that fails too it is spooled — a
broker outage loses nothing.

The batch is published from the recorder's writer thread, where Celery has no current
app of its own (Celery keeps the current app per thread, and a thread without one gets
an unconfigured fallback app that talks to ``amqp://localhost``). So the recorder finds
the site's app itself: ``FLUXGATE["CELERY_APP"]`` (a dotted path, or the app) if set,
else the app current in this thread, else the one Celery app the process created. A site
with several Celery apps should set ``CELERY_APP``. With none found, batches are written
directly (with a warning), never sent to Celery's default broker.

``flush()`` means written: it sends the batch still pending, then waits until every batch
this process sent since the last flush is in the database — its events stored (or
quarantined) — by asking the database for their ``tracking_id``s, a few queries a second
until ``timeout``. That needs no result backend (``record_events`` keeps
``ignore_result``: no backend write per batch on the normal path) and is exact whichever
worker wrote which batch. Only the ids of batches sent since the last flush are kept, at
most :data:`MAX_UNCONFIRMED` of them (the oldest are forgotten past it). Shutting down
(``close()``, interpreter exit) only waits for the batches to be sent: the broker keeps
them. With ``task_always_eager`` (``CELERY_TASK_ALWAYS_EAGER``, which ``send_task``
ignores) each batch is written in the writer thread, as the eager task would, so
``flush()`` waits for that write.

A user's primary key travels as JSON: an int as it is, any other (a UUID, ...) as text,
turned back into the user model's own type in the worker (:func:`payload_records`).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

from ..celery_app import TASKS, is_celery_fallback, site_celery_app
from ..records import EventRecord, pack_records, unpack_records
from . import journal
from .thread import ThreadRecorder
from .write import write_events

logger = logging.getLogger("fluxgate.recording")

#: Publishing must fail fast when the broker is down: the batch then goes to the database.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2}

TASK_NAME = TASKS.record_events

#: The most tracking ids of sent, unconfirmed batches a process keeps for ``flush()``.
MAX_UNCONFIRMED = 100_000
#: Tracking ids per query while ``flush()`` waits for them (well under SQLite's limit).
CHECK_CHUNK = 500


class CeleryRecorder(ThreadRecorder):
    def __init__(self) -> None:
        super().__init__()
        self._app: Any = None
        self._warned = False
        self._init_unconfirmed()

    def _init_unconfirmed(self) -> None:
        #: The tracking ids of each batch sent since the last flush, oldest first.
        self._unconfirmed: collections.deque[list[UUID]] = collections.deque()
        self._unconfirmed_count = 0
        self._unconfirmed_lock = threading.Lock()

    def writers_wanted(self) -> int:
        # Publishing a batch is quick: one thread sends them all (and writes them itself,
        # one at a time, while the broker is unreachable).
        return 1

    def persist(self, batch: list[EventRecord]) -> None:
        payload = pack_payload(batch)
        try:
            app = self._app or site_celery_app()
            if is_celery_fallback(app):
                # Celery's unconfigured app would send the batch to amqp://localhost,
                # where no worker of this site may be listening: write it here instead.
                if not self._warned:
                    self._warned = True
                    logger.warning(
                        "FluxGate found no configured Celery app (set FLUXGATE['CELERY_APP']); "
                        "writing events directly"
                    )
                write_events(batch)
                return
            self._app = app
            if getattr(getattr(app, "conf", None), "task_always_eager", False):
                # send_task ignores it (it would publish to the broker): write it here, as
                # the eager task would, and flush() waits for this write.
                write_events(batch)
                return
            # By name: the task is defined by fluxgate_django.tasks in the worker, which no
            # module of the app imports.
            app.send_task(TASK_NAME, args=[payload], retry=True, retry_policy=PUBLISH_RETRY_POLICY)
            self._sent([r.tracking_id for r in batch])
        except Exception as exc:  # kombu/redis/amqp connection errors differ per transport
            logger.warning(
                "FluxGate could not send %d events to the broker (%s); writing them directly",
                len(batch),
                type(exc).__name__,
            )
            write_events(batch)

    def _sent(self, ids: list[UUID]) -> None:
        with self._unconfirmed_lock:
            self._unconfirmed.append(ids)
            self._unconfirmed_count += len(ids)
            while self._unconfirmed_count > MAX_UNCONFIRMED and len(self._unconfirmed) > 1:
                self._unconfirmed_count -= len(self._unconfirmed.popleft())

    # -- flush: sent, then written -----------------------------------------------------

    def send_pending(self, timeout: float | None = None) -> bool:
        """Hand every batch recorded so far to the broker (or, while it is unreachable,
        write or spool it); True unless ``timeout`` passed first."""
        return super().flush(timeout)

    def flush(self, timeout: float | None = None) -> bool:
        """Send what is pending, then wait until every batch sent so far is written by the
        workers. False if ``timeout`` passed first (a worker stopped, the database down)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.send_pending(timeout):
            return False
        with self._unconfirmed_lock:
            batches = list(self._unconfirmed)
        waiting: Iterable[UUID] = [i for ids in batches for i in ids]
        pause = 0.01
        while True:
            waiting = unwritten(waiting)
            if not waiting:
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, 0.2)
        with self._unconfirmed_lock:  # (batches sent meanwhile stay for the next flush)
            confirmed = {id(ids) for ids in batches}
            kept = [ids for ids in self._unconfirmed if id(ids) not in confirmed]
            self._unconfirmed = collections.deque(kept)
            self._unconfirmed_count = sum(len(ids) for ids in kept)
        return True

    def close(self) -> None:
        # Shutting down needs the batches in the broker (which keeps them), not written.
        self.send_pending(timeout=5)
        self._closed = True
        self._wake.set()
        self._overflow_wake.set()

    def _at_exit(self) -> None:
        if not self._closed and self.send_pending(timeout=10):
            journal.close(final=True)

    def _after_fork(self) -> None:
        super()._after_fork()
        self._init_unconfirmed()  # the parent's batches are the parent's to confirm


def unwritten(ids: Iterable[UUID]) -> list[UUID]:
    """Those of ``ids`` not in the database yet, neither stored nor quarantined (all of
    them while the database can't be asked)."""
    from django.db import DatabaseError

    from ..models import DeadLetter, Event

    ids = list(ids)
    left: list[UUID] = []
    try:
        for start in range(0, len(ids), CHECK_CHUNK):
            chunk = ids[start : start + CHECK_CHUNK]
            found = set(
                Event.objects.filter(tracking_id__in=chunk).values_list("tracking_id", flat=True)
            )
            rest = [i for i in chunk if i not in found]
            if rest:
                found = set(
                    DeadLetter.objects.filter(tracking_id__in=rest).values_list(
                        "tracking_id", flat=True
                    )
                )
                left.extend(i for i in rest if i not in found)
    except DatabaseError:
        logger.debug("FluxGate could not ask the database which batches are written", exc_info=True)
        return ids
    return left


def pack_payload(batch: Sequence[EventRecord]) -> str:
    """A batch as the task's argument: :func:`~fluxgate_django.records.pack_records`, with
    user keys JSON can't hold (a UUID primary key) as text."""
    if any(r.user_pk is not None and r.user_pk.__class__ not in (int, str) for r in batch):
        batch = [
            dataclasses.replace(r, user_pk=str(r.user_pk))
            if r.user_pk is not None and r.user_pk.__class__ not in (int, str)
            else r
            for r in batch
        ]
    return pack_records(batch)


def payload_records(payload: str | list[dict[str, Any]]) -> list[EventRecord]:
    """The records of a task's payload: a :func:`pack_payload` text, or (sent by an
    earlier version, still in the broker) a list of ``to_json()`` dicts. User keys are
    the user model's own type again (a UUID, not its text)."""
    if isinstance(payload, str):
        records = unpack_records(payload)
    else:
        records = [EventRecord.from_json(item) for item in payload]
    return user_keys_restored(records)


def user_keys_restored(records: list[EventRecord]) -> list[EventRecord]:
    """``records`` with each text ``user_pk`` as the user model's primary key type (one
    that isn't a key of that model is left as it is: the writer drops that link)."""
    if not any(r.user_pk.__class__ is str for r in records):
        return records
    from django.contrib.auth import get_user_model
    from django.core.exceptions import ValidationError

    to_python = get_user_model()._meta.pk.to_python
    restored = []
    for record in records:
        if record.user_pk.__class__ is str:
            try:
                record = dataclasses.replace(record, user_pk=to_python(record.user_pk))
            except ValidationError:
                pass
        restored.append(record)
    return restored
