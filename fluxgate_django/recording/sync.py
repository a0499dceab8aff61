"""``RECORDER = "sync"``: write each event in the caller. For tests and small sites."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Sequence

from django.db import connections

from ..records import EventRecord
from . import journal, spool
from .base import BaseRecorder
from .write import write_events

#: Hand-offs journaled per journal segment (the segment is fsync'd when it is closed).
HAND_OFFS_PER_SEGMENT = 100


class SyncRecorder(BaseRecorder):
    """Writes every event as it happens, so it is in the database when the call returns.

    Called on a running event loop (an async view, an async LangChain run), it must not
    do database I/O there, nor wait for it: the write is handed to a helper thread and the
    loop goes on; :meth:`flush` waits for those writes. A record handed off is journaled
    first (:mod:`.journal`), so a process killed before the helper writes it loses nothing.
    """

    def __init__(self) -> None:
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: set[concurrent.futures.Future[None]] = set()
        self._lock = threading.Lock()

    def record(self, record: EventRecord) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            write_events([record])
            return
        journal.append([record])
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="fluxgate-sync-recorder"
                )
            future = self._executor.submit(_write_and_close, [record])
            self._pending.add(future)
        future.add_done_callback(self._done)

    def record_batch(self, records: Sequence[EventRecord]) -> None:
        """One transaction for the whole batch (in the caller, off any event loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            write_events(list(records))
            return
        for record in records:
            self.record(record)

    def _done(self, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)

    def flush(self, timeout: float | None = None) -> bool:
        with self._lock:
            pending = list(self._pending)
        if not pending:
            return True
        _done, not_done = concurrent.futures.wait(pending, timeout=timeout)
        return not not_done

    def close(self) -> None:
        self.flush(timeout=5)
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)


_recovered_pid = 0


def _write_and_close(records: list[EventRecord]) -> None:
    global _recovered_pid
    try:
        if _recovered_pid != os.getpid():
            # Once per process: the journals of dead processes go to the spool, which
            # the write below replays once it succeeds.
            _recovered_pid = os.getpid()
            spool.recover_journals()
        write_events(records)
    except BaseException:
        journal.abandon(records)  # (a bug: recovered from the journal after this process)
        raise
    else:
        journal.release(records)
        # (Its segment is deleted once sealed: now and then, not an fsync per event.)
        journal.rotate(min_lines=HAND_OFFS_PER_SEGMENT)
    finally:
        connections.close_all()  # this helper thread's own
