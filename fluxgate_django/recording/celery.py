"""``RECORDER = "celery"``: batches are written by Celery workers.

Events are batched in-process exactly as by the thread recorder, and each batch goes to
the broker as ONE task (``fluxgate.record_events``), not one task per event. The task is
``acks_late`` and idempotent (``tracking_id``), so a worker killed mid-batch makes the
broker deliver the batch again without duplicates. When the broker can't be reached the
batch is written to the database directly, and if that fails too it is spooled — a
broker outage loses nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from ..records import EventRecord
from .base import write_events
from .thread import ThreadRecorder

logger = logging.getLogger("fluxgate.recording")

#: Publishing must fail fast when the broker is down: the batch then goes to the database.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2}


class CeleryRecorder(ThreadRecorder):
    def persist(self, batch: list[EventRecord]) -> None:
        from ..tasks import record_events

        payload = [record.to_json() for record in batch]
        try:
            record_events.apply_async(args=[payload], retry=True, retry_policy=PUBLISH_RETRY_POLICY)
        except Exception as exc:  # kombu/redis/amqp connection errors differ per transport
            logger.warning(
                "FluxGate could not send %d events to the broker (%s); writing them directly",
                len(batch),
                type(exc).__name__,
            )
            write_events(batch)


def payload_records(payload: list[dict[str, Any]]) -> list[EventRecord]:
    return [EventRecord.from_json(item) for item in payload]
