"""``RECORDER = "sync"``: write each event in the caller. For tests and small sites."""

from __future__ import annotations

import asyncio
import threading

from django.db import connection

from ..records import EventRecord
from .base import BaseRecorder, write_events


class SyncRecorder(BaseRecorder):
    """Writes every event as it happens, so it is in the database when the call returns."""

    def record(self, record: EventRecord) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            in_event_loop = False
        else:
            in_event_loop = True
        if not in_event_loop:
            write_events([record])
            return
        # Django forbids database I/O on an event loop: write from a helper thread.
        thread = threading.Thread(target=_write_and_close, args=([record],))
        thread.start()
        thread.join()


def _write_and_close(records: list[EventRecord]) -> None:
    try:
        write_events(records)
    finally:
        connection.close()
