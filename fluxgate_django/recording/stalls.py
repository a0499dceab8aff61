"""A watchdog for database writes that stall: their socket is shut.

A server (or a network path) that stops answering without closing the connection leaves
psycopg waiting for a reply forever: no error reaches the writer, so nothing would retry,
and every later batch would queue behind it. One daemon thread per process keeps the
deadline of every write attempt in progress (:func:`watch`); past it, it shuts the
attempt's socket (``shutdown(2)`` on a duplicate of the descriptor: psycopg still owns
and closes it), the waiting call fails as a lost connection, and the writer retries the
batch on a new connection.

A deadline is :data:`STALL_SECONDS` plus :data:`SECONDS_PER_ROW` per record of the batch
(a large spool replay is slow, not stalled). A connection that is still being opened has
no socket to shut yet: set ``connect_timeout`` in the database ``OPTIONS`` for that.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from django.db import connections

logger = logging.getLogger("fluxgate.recording")

#: A write attempt still running after this many seconds (plus :data:`SECONDS_PER_ROW`
#: per record) is taken for a stalled connection. Above any real batch write, below a
#: Celery task's time limit.
STALL_SECONDS = 15.0
SECONDS_PER_ROW = 0.001


class _Watchdog:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """A new state (and, on first use, a new thread): at start and in a forked child,
        which has no watchdog thread and may have inherited a held lock."""
        self._cond = threading.Condition()
        self._active: dict[object, tuple[float, Any]] = {}
        self._thread: threading.Thread | None = None
        self._pid = 0

    @contextlib.contextmanager
    def watch(self, alias: str, rows: int) -> Iterator[None]:
        wrapper = connections[alias]
        if wrapper.vendor != "postgresql":
            yield
            return
        key = object()
        deadline = time.monotonic() + STALL_SECONDS + rows * SECONDS_PER_ROW
        with self._cond:
            self._active[key] = (deadline, wrapper)
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="fluxgate-stall-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._active.pop(key, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for key, (deadline, wrapper) in list(self._active.items()):
                    if deadline <= now:
                        logger.warning(
                            "FluxGate: a database write made no progress for %.0f s; "
                            "shutting its connection",
                            STALL_SECONDS,
                        )
                        shut_socket(wrapper)
                        # (Again in a while if the attempt is still stuck, reconnecting.)
                        self._active[key] = (now + 1.0, wrapper)
                if self._active:
                    soonest = min(deadline for deadline, _ in self._active.values())
                    self._cond.wait(max(0.05, soonest - now))
                else:
                    self._cond.wait(60)


_watchdog = _Watchdog()
os.register_at_fork(after_in_child=_watchdog.reset)


def watch(alias: str, rows: int = 0) -> contextlib.AbstractContextManager[None]:
    """Watch one write attempt of ``rows`` records on this thread's connection ``alias``."""
    return _watchdog.watch(alias, rows)


def shut_socket(wrapper: Any) -> None:
    """Shut (not close) the socket of ``wrapper``'s psycopg connection, if it has one."""
    try:
        fd = wrapper.connection.pgconn.socket
        sock = socket.socket(fileno=os.dup(fd))
    except Exception:  # no connection (yet), or already closed
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()
