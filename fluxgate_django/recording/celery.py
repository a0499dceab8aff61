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

A user's primary key travels as JSON: an int as it is, any other (a UUID, ...) as text,
turned back into the user model's own type in the worker (:func:`payload_records`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from ..celery_app import TASKS, is_celery_fallback, site_celery_app
from ..records import EventRecord, pack_records, unpack_records
from .thread import ThreadRecorder
from .write import write_events

logger = logging.getLogger("fluxgate.recording")

#: Publishing must fail fast when the broker is down: the batch then goes to the database.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2}

TASK_NAME = TASKS.record_events


class CeleryRecorder(ThreadRecorder):
    def __init__(self) -> None:
        super().__init__()
        self._app: Any = None
        self._warned = False

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
            # By name: the task is defined by fluxgate_django.tasks in the worker, which no
            # module of the app imports.
            app.send_task(TASK_NAME, args=[payload], retry=True, retry_policy=PUBLISH_RETRY_POLICY)
        except Exception as exc:  # kombu/redis/amqp connection errors differ per transport
            logger.warning(
                "FluxGate could not send %d events to the broker (%s); writing them directly",
                len(batch),
                type(exc).__name__,
            )
            write_events(batch)


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
