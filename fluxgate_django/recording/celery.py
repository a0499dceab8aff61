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
"""

from __future__ import annotations

import logging
from typing import Any

from django.utils.module_loading import import_string

from ..conf import fluxgate_settings
from ..records import EventRecord, pack_records, unpack_records
from .base import write_events
from .thread import ThreadRecorder

logger = logging.getLogger("fluxgate.recording")

#: Publishing must fail fast when the broker is down: the batch then goes to the database.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2}

TASK_NAME = "fluxgate.record_events"


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
        from .. import tasks  # noqa: F401  (registers the task with the app)

        payload = pack_records(batch)
        try:
            app = self._app or site_celery_app()
            if _is_celery_fallback(app):
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
            task = app.tasks[TASK_NAME]
            task.apply_async(args=[payload], retry=True, retry_policy=PUBLISH_RETRY_POLICY)
        except Exception as exc:  # kombu/redis/amqp connection errors differ per transport
            logger.warning(
                "FluxGate could not send %d events to the broker (%s); writing them directly",
                len(batch),
                type(exc).__name__,
            )
            write_events(batch)


def site_celery_app() -> Any:
    """The site's Celery app (see the module docstring for how it is found)."""
    configured = fluxgate_settings.CELERY_APP
    if configured:
        return import_string(configured) if isinstance(configured, str) else configured
    from celery import _state

    candidates = (_state._tls.current_app, _state.default_app, *_state._get_active_apps())
    for app in candidates:
        if app is not None and not _is_celery_fallback(app):
            return app
    return _state.get_current_app()


def _is_celery_fallback(app: Any) -> bool:
    # What ``celery._state`` creates for a thread that has no current app.
    return app.main == "default" and not app.fixups


def payload_records(payload: str | list[dict[str, Any]]) -> list[EventRecord]:
    """The records of a task's payload: a :func:`~fluxgate_django.records.pack_records`
    text, or (sent by an earlier version, still in the broker) a list of ``to_json()``
    dicts."""
    if isinstance(payload, str):
        return unpack_records(payload)
    return [EventRecord.from_json(item) for item in payload]
