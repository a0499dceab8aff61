"""``RECORDER = "thread"`` (default): an in-process queue written in batches by a thread.

The caller only appends to a deque (well under a microsecond); a daemon thread wakes
every ``FLUSH_INTERVAL`` seconds, or as soon as ``BATCH_SIZE`` events are waiting, and
writes them with one ``bulk_create``. ``flush()`` puts a marker in the queue and waits
for the thread to reach it; the queue is flushed at interpreter exit too. After a fork
(gunicorn, Celery prefork) the child starts its own thread.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
from typing import Any

from django.db import connection

from ..conf import fluxgate_settings
from ..records import EventRecord
from . import spool
from .base import BaseRecorder, write_events

logger = logging.getLogger("fluxgate.recording")


class ThreadRecorder(BaseRecorder):
    def __init__(self) -> None:
        self.batch_size = int(fluxgate_settings.BATCH_SIZE)
        self.interval = float(fluxgate_settings.FLUSH_INTERVAL)
        self.max_queue = int(fluxgate_settings.MAX_QUEUE_SIZE)
        self._queue: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._closed = False
        self._errors: list[Exception] = []
        atexit.register(self._at_exit)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    # -- caller side -------------------------------------------------------------------

    def record(self, record: EventRecord) -> None:
        if self._pid != os.getpid() or self._thread is None:
            self._start()
        queue = self._queue
        if len(queue) >= self.max_queue:
            # The database is far behind: keep the event on disk rather than drop it.
            spool.append([record])
            return
        queue.append(record)
        if len(queue) >= self.batch_size:
            self._wake.set()

    def flush(self, timeout: float | None = None) -> bool:
        alive = self._thread is not None and self._thread.is_alive()
        if not self._queue and not alive:
            # (A live writer may have taken the last batch off the queue and still be
            # writing it, so an empty queue alone does not mean everything is written.)
            return True
        if self._thread is None or not self._thread.is_alive():
            self._start()
        marker = threading.Event()
        self._queue.append(marker)
        self._wake.set()
        done = marker.wait(timeout)
        if self._errors and fluxgate_settings.RAISE_ERRORS:
            raise self._errors.pop(0)
        return done

    def close(self) -> None:
        self.flush(timeout=5)
        self._closed = True
        self._wake.set()

    # -- writer thread -----------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._closed = False
            self._thread = threading.Thread(target=self._run, name="fluxgate-recorder", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            while not self._closed:
                self._wake.wait(self.interval)
                self._wake.clear()
                self._drain()
            self._drain()
        finally:
            connection.close()

    def _drain(self) -> None:
        queue = self._queue
        batch: list[EventRecord] = []
        while queue:
            item = queue.popleft()
            if isinstance(item, threading.Event):
                self._write(batch)
                batch = []
                item.set()
            else:
                batch.append(item)
                if len(batch) >= self.batch_size:
                    self._write(batch)
                    batch = []
        self._write(batch)

    def _write(self, batch: list[EventRecord]) -> None:
        if not batch:
            return
        try:
            self.persist(batch)
        except Exception as exc:
            # Never let the writer thread die; under RAISE_ERRORS the next flush() raises
            # (otherwise the error is only logged: nothing piles up in a long-lived process).
            logger.exception("FluxGate could not write %d events", len(batch))
            if fluxgate_settings.RAISE_ERRORS:
                self._errors.append(exc)

    def persist(self, batch: list[EventRecord]) -> None:
        """Store one batch (here: write it to the database; the Celery recorder sends it)."""
        write_events(batch)

    # -- process lifecycle -------------------------------------------------------------

    def _at_exit(self) -> None:
        if not self._closed:  # also waits for a batch the writer is still writing
            self.flush(timeout=10)

    def _after_fork(self) -> None:
        # The parent's queued events are the parent's to write.
        self._queue = collections.deque()
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._thread = None
