"""``RECORDER = "thread"`` (default): an in-process queue written in batches by threads.

The caller only appends to a deque (well under a microsecond). Writer threads
(``WRITER_THREADS``, 2 by default, one on SQLite; each with its own database
connection) wake every ``FLUSH_INTERVAL`` seconds, or as soon as ``BATCH_SIZE`` events
are waiting, and write them a batch (one transaction) at a time. With a backlog, a
second writer takes the next batch while the first one's statements run in the
database, so the work in Python of one batch overlaps the database's work on the other
(~1.5x the events per second of one writer in ``bench/ingest.py``).

``flush()`` puts a marker in the queue and waits until the writer that reaches it has
written its batch and every batch taken before it, and has replayed the spool if
anything is in it. The queue is flushed at interpreter exit too. After a fork
(gunicorn, Celery prefork) the child starts its own writers.

Every record is in this process's journal (:mod:`.journal`, written by the pipeline
before the call returns) until its batch is written, spooled or sent: a writer starts a
new journal segment for each batch it takes, and releases the batch's records once
:meth:`persist` returns. The first writer of a process recovers the journals of dead
processes.

Backpressure never reaches the caller: when ``MAX_QUEUE_SIZE`` events wait, the next
ones go to an in-memory overflow buffer (``OVERFLOW_BUFFER_SIZE``) that a thread of its
own (``fluxgate-spooler``) appends to the spool in batches, one fsync each — the
caller's thread does no disk I/O, however far behind the database is.
"""

from __future__ import annotations

import atexit
import collections
import functools
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from django.db import connections

from ..conf import fluxgate_settings
from ..records import EventRecord
from . import journal, spool
from .base import BaseRecorder
from .rows import events_alias
from .write import write_events

logger = logging.getLogger("fluxgate.recording")

_FORK_HOOKS = hasattr(os, "register_at_fork")


class ThreadRecorder(BaseRecorder):
    #: The pipeline journals each record before handing it over; a writer releases it.
    uses_journal = True

    def __init__(self) -> None:
        self.batch_size = int(fluxgate_settings.BATCH_SIZE)
        self.interval = float(fluxgate_settings.FLUSH_INTERVAL)
        self.max_queue = int(fluxgate_settings.MAX_QUEUE_SIZE)
        self.max_overflow = int(fluxgate_settings.OVERFLOW_BUFFER_SIZE)
        self.writer_count = max(1, self.writers_wanted())
        self._queue: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._pid = 0
        self._closed = False
        self._errors: list[Exception] = []
        self._recovered_pid = 0
        #: Set once this process's first writer has recovered dead processes' journals
        #: (a flush waits for it: what they journaled is written before it returns).
        self._recovered = threading.Event()
        self._init_batches()
        self._init_overflow()
        atexit.register(self._at_exit)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def writers_wanted(self) -> int:
        """How many writer threads to run: ``WRITER_THREADS``, but one on SQLite, which
        takes one writer at a time (a second would wait for the lock, or fail to turn
        its read into a write, and spool its batch)."""
        if connections[events_alias()].vendor == "sqlite":
            return 1
        return int(fluxgate_settings.WRITER_THREADS)

    def _init_batches(self) -> None:
        #: Taking from the queue, and the batches taken but not yet written (by number).
        self._taking = threading.Condition()
        self._taken = 0
        self._in_flight: set[int] = set()

    def _init_overflow(self) -> None:
        #: Events past MAX_QUEUE_SIZE, for the spooler thread; how many it is spooling.
        self._overflow: collections.deque[EventRecord] = collections.deque()
        self._overflow_wake = threading.Event()
        self._overflow_done = threading.Condition()
        self._spooling = 0
        self._spooler: threading.Thread | None = None
        #: Events dropped because the overflow buffer was full too (each burst logged).
        self.overflow_dropped = 0
        self._drop_logged_at = 0.0

    # -- caller side -------------------------------------------------------------------

    def record(self, record: EventRecord) -> None:
        # (A forked child has no writers: ``_after_fork`` empties the list. Without fork
        # hooks, the pid says it: a system call per record, so only then.)
        if not self._threads or (not _FORK_HOOKS and self._pid != os.getpid()):
            self._start()
        queue = self._queue
        if len(queue) >= self.max_queue:
            # The database is far behind: the spooler keeps the event on disk.
            self._overflow_record(record)
            return
        queue.append(record)
        if len(queue) >= self.batch_size:
            self._wake.set()

    def record_batch(self, records: Sequence[EventRecord]) -> None:
        """:meth:`record` of each, in one step while the queue has room (one ``extend``)."""
        if not self._threads or (not _FORK_HOOKS and self._pid != os.getpid()):
            self._start()
        queue = self._queue
        room = self.max_queue - len(queue)
        if room < len(records):
            for record in records:
                self.record(record)
            return
        queue.extend(records)
        if len(queue) >= self.batch_size:
            self._wake.set()

    def _overflow_record(self, record: EventRecord) -> None:
        """Into the overflow buffer, for the spooler thread (no I/O in the caller)."""
        if len(self._overflow) >= self.max_overflow:
            # The disk can't keep up either: dropped (logged), as past SPOOL_MAX_BYTES.
            self.overflow_dropped += 1
            journal.release([record])
            now = time.monotonic()
            if now - self._drop_logged_at >= 10:
                self._drop_logged_at = now
                logger.error(
                    "FluxGate's queue (%d) and overflow buffer (%d) are full: dropping "
                    "events; %d dropped by this process so far",
                    self.max_queue,
                    self.max_overflow,
                    self.overflow_dropped,
                )
            return
        self._overflow.append(record)
        spooler = self._spooler
        if spooler is None or not spooler.is_alive():
            self._start_spooler()
        self._overflow_wake.set()

    def flush(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._wait_overflow(timeout):
            return False
        if deadline is not None:
            timeout = max(0.0, deadline - time.monotonic())
        if not self._queue and not self._alive():
            # (A live writer may have taken the last batch off the queue and still be
            # writing it, so an empty queue alone does not mean everything is written.)
            return True
        if not self._alive():
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
        self._overflow_wake.set()

    # -- the spooler thread (overflow) -------------------------------------------------

    def _start_spooler(self) -> None:
        with self._start_lock:
            spooler = self._spooler
            if spooler is not None and spooler.is_alive():
                return
            self._spooler = threading.Thread(
                target=self._run_spooler, name="fluxgate-spooler", daemon=True
            )
            self._spooler.start()

    def _run_spooler(self) -> None:
        while True:
            self._overflow_wake.wait(self.interval)
            self._overflow_wake.clear()
            self._spool_overflow()
            if self._closed:
                return

    def _spool_overflow(self) -> None:
        """Append the overflow buffer to the spool, a batch (one fsync) at a time."""
        overflow = self._overflow
        while True:
            with self._overflow_done:
                batch = [overflow.popleft() for _ in range(min(len(overflow), self.batch_size))]
                if not batch:
                    self._overflow_done.notify_all()
                    return
                self._spooling += 1
            try:
                spool.append(batch)
                journal.release(batch)  # (spooled, or dropped and logged past SPOOL_MAX_BYTES)
            except Exception as exc:
                journal.abandon(batch)  # kept in the journal, recovered after this process
                logger.exception("FluxGate could not spool %d events", len(batch))
                if fluxgate_settings.RAISE_ERRORS:
                    self._errors.append(exc)
            finally:
                with self._overflow_done:
                    self._spooling -= 1
                    self._overflow_done.notify_all()

    def _wait_overflow(self, timeout: float | None) -> bool:
        """Wait until the overflow buffer is spooled."""
        if not self._overflow and not self._spooling:
            return True
        spooler = self._spooler
        if spooler is None or not spooler.is_alive():
            self._start_spooler()
        self._overflow_wake.set()
        with self._overflow_done:
            return self._overflow_done.wait_for(
                lambda: not self._overflow and not self._spooling, timeout
            )

    # -- writer threads ----------------------------------------------------------------

    def _alive(self) -> bool:
        return any(t.is_alive() for t in self._threads) and self._pid == os.getpid()

    def _start(self) -> None:
        """Start the writers that are not running (all of them in a new process)."""
        with self._start_lock:
            if self._pid != os.getpid():
                self._threads = []
            running = [t for t in self._threads if t.is_alive()]
            if len(running) >= self.writer_count:
                return
            self._pid = os.getpid()
            self._closed = False
            new = [
                threading.Thread(target=self._run, name=f"fluxgate-recorder-{n}", daemon=True)
                for n in range(len(running), self.writer_count)
            ]
            self._threads = running + new
            for thread in new:
                thread.start()

    def _run(self) -> None:
        try:
            self._recover_journals()
            while not self._closed:
                self._wake.wait(self.interval)
                self._wake.clear()
                self._drain()
            self._drain()
        finally:
            connections.close_all()  # this thread's own (the events' database, and any other)

    def _drain(self) -> None:
        """Write batches until the queue is empty."""
        while True:
            taken = self._take()
            if taken is None:
                return
            number, batch, marker = taken
            if batch:
                journal.rotate()  # (fsyncs the segment it closes: once per batch)
            try:
                self._write(batch)
            finally:
                with self._taking:
                    self._in_flight.discard(number)
                    self._taking.notify_all()
            if marker is not None:
                # Everything taken before the marker is written once no earlier batch is
                # still being written by another writer.
                with self._taking:
                    self._taking.wait_for(functools.partial(self._written_up_to, number))
                # (and what dead processes journaled, which the first writer recovers)
                self._recovered.wait()
                self._replay_spool()
                marker.set()

    def _recover_journals(self) -> None:
        """Once per process (its first writer): write what dead processes journaled."""
        with self._start_lock:
            if self._recovered_pid == os.getpid():
                return
            self._recovered_pid = os.getpid()
        try:
            recovered = spool.recover_journals()
        except Exception:
            logger.exception("FluxGate could not recover the journals of dead processes")
            return
        else:
            if recovered:
                self._replay_spool()
        finally:
            self._recovered.set()

    def _replay_spool(self) -> None:
        """At a flush: write what the spool holds, if the database is back. (Each write
        replays the spool when it succeeds, but another writer may have spooled its
        failed batch after the last success.)"""
        if not spool.has_pending():
            return
        try:
            spool.replay(write_events)
        except Exception as exc:
            logger.exception("FluxGate could not replay the spool")
            if fluxgate_settings.RAISE_ERRORS:
                self._errors.append(exc)

    def _written_up_to(self, number: int) -> bool:
        """Whether every batch taken before batch ``number`` is written (call it holding
        ``_taking``)."""
        return all(taken > number for taken in self._in_flight)

    def _take(self) -> tuple[int, list[EventRecord], threading.Event | None] | None:
        """The next batch: up to ``BATCH_SIZE`` events, ending early at a flush marker."""
        queue = self._queue
        batch: list[EventRecord] = []
        marker = None
        with self._taking:
            while queue and len(batch) < self.batch_size:
                item = queue.popleft()
                if isinstance(item, threading.Event):
                    marker = item
                    break
                batch.append(item)
            if not batch and marker is None:
                return None
            self._taken += 1
            self._in_flight.add(self._taken)
            number = self._taken
        if len(queue) >= self.batch_size:
            self._wake.set()  # a full batch is waiting: another writer can take it meanwhile
        return number, batch, marker

    def _write(self, batch: list[EventRecord]) -> None:
        if not batch:
            return
        try:
            self.persist(batch)
        except Exception as exc:
            # Never let a writer thread die; under RAISE_ERRORS the next flush() raises
            # (otherwise the error is only logged: nothing piles up in a long-lived process).
            # The batch stays in the journal: recovered once this process is gone.
            journal.abandon(batch)
            logger.exception("FluxGate could not write %d events", len(batch))
            if fluxgate_settings.RAISE_ERRORS:
                self._errors.append(exc)
        else:
            journal.release(batch)

    def persist(self, batch: list[EventRecord]) -> None:
        """Store one batch (here: write it to the database; the Celery recorder sends it)."""
        write_events(batch)

    # -- process lifecycle -------------------------------------------------------------

    def _at_exit(self) -> None:
        # (Also waits for a batch a writer is still writing.) What is left in the journal
        # after it, the next process writes.
        if not self._closed and self.flush(timeout=10):
            journal.close(final=True)

    def _after_fork(self) -> None:
        # The parent's queued events are the parent's to write.
        self._queue = collections.deque()
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._threads = []
        self._recovered = threading.Event()
        self._init_batches()
        self._init_overflow()
