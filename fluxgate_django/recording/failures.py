"""Why a write failed, and what to do about it: the writer's retry policy.

Every exception a database write can raise — Django's, and psycopg's own (``COPY`` raises
them as they are) — is sorted by :func:`failure_kind`:

* ``connection``: the server went away, a cut or stalled connection, a deadlock, a
  cancelled statement, a full disk. Transient: the broken connection is discarded and
  the batch retried on a new one, after a short backoff (:class:`RetryPolicy`);
* ``data``: a value the database (or the driver, encoding it) refuses — ``DataError``,
  an ``IntegrityError`` that is not a duplicate key, a value that can't be encoded at
  all. Retrying can't help: the writer bisects the batch and quarantines the bad record;
* ``duplicate``: a unique key inserted at the same moment elsewhere (retried; if it
  persists, it is a data failure);
* ``other``: any other database error (a table missing during a deploy...): not the
  records' fault, so nothing is quarantined; the batch is spooled (or the error raised).

None: not a failure of the database or the data — a bug, raised as it is.
"""

from __future__ import annotations

import dataclasses
import threading
import time

from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connections,
)

try:
    import psycopg
except ImportError:  # pragma: no cover - sites without PostgreSQL
    psycopg = None  # type: ignore[assignment]

CONNECTION, DATA, DUPLICATE, OTHER = "connection", "data", "duplicate", "other"

#: Every exception a database write can raise: Django's (``InterfaceError`` is not a
#: ``DatabaseError``), and psycopg's own.
DATABASE_ERRORS: tuple[type[Exception], ...] = (DatabaseError, InterfaceError) + (
    (psycopg.Error,) if psycopg is not None else ()
)

#: SQLSTATE classes of errors a value causes: 22 data exception, 23 integrity constraint
#: violation, 54 program limit exceeded (a value too large to index...).
_DATA_CLASSES = ("22", "23", "54")
#: Transient ones whatever their class: 40 transaction rollback (serialization failure,
#: deadlock), 53 insufficient resources, 57 operator intervention (statement timeout,
#: shutdown), 08 connection exception, 58 system error.
_TRANSIENT_CLASSES = ("08", "40", "53", "57", "58")


def failure_kind(exc: BaseException) -> str | None:
    """Why a write failed: ``connection``, ``data``, ``duplicate`` or ``other``; None
    when ``exc`` is not a failure of the data or the database (see the module)."""
    cause: BaseException = exc
    if isinstance(exc, DatabaseError | InterfaceError) and exc.__cause__ is not None:
        cause = exc.__cause__
    if psycopg is not None and isinstance(cause, psycopg.Error):
        return _psycopg_kind(cause)
    if isinstance(exc, IntegrityError):
        return DUPLICATE if "UNIQUE constraint failed" in str(exc) else DATA
    if isinstance(exc, DataError):
        return DATA
    if isinstance(exc, (OperationalError, InterfaceError)):
        return CONNECTION
    if isinstance(exc, DatabaseError):
        return OTHER
    if isinstance(exc, (ValueError, TypeError, ArithmeticError)):
        return DATA  # a value that can't be encoded (JSON, a Decimal, a surrogate in text)
    return None


def _psycopg_kind(error: psycopg.Error) -> str:
    state = error.sqlstate or ""
    if state == "23505":  # unique_violation
        return DUPLICATE
    if state[:2] in _TRANSIENT_CLASSES:
        return CONNECTION
    if state[:2] in _DATA_CLASSES or isinstance(error, psycopg.DataError | psycopg.IntegrityError):
        return DATA
    if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        return CONNECTION
    if not state:
        # Raised by the driver itself, before the server saw anything: a value it could
        # not encode ("cannot adapt type", NUL in text...).
        return DATA
    return OTHER


def as_django_error(exc: Exception) -> DatabaseError:
    """``exc`` as one of Django's ``DatabaseError`` (what callers catch)."""
    if isinstance(exc, DatabaseError):
        return exc
    kind = failure_kind(exc)
    cls = {CONNECTION: OperationalError, DATA: DataError}.get(kind or "", DatabaseError)
    error = cls(*exc.args)
    error.__cause__ = exc
    error.__traceback__ = exc.__traceback__
    return error


def discard_connection(alias: str) -> None:
    """Close this thread's connection ``alias`` unless a caller's transaction holds it:
    the next statement opens a new one. (Django's own check,
    ``close_if_unusable_or_obsolete``, runs only around requests, and misses the errors
    psycopg raises unwrapped.)"""
    conn = connections[alias]
    try:
        if conn.in_atomic_block:
            return
        conn.close()
    except Exception:  # closing a broken connection can fail too: it is gone either way
        conn.connection = None


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff between attempts after a connection failure, and the time all attempts of
    one batch may take."""

    delays: tuple[float, ...]
    seconds: float


#: In FluxGate's own threads (the thread recorder's writers): the caller never waits.
BACKGROUND = RetryPolicy((0.1, 0.3, 0.6, 1.0), 2.0)
#: In the caller's thread (the sync recorder, the ingest API, a Celery task, which the
#: broker retries itself): one quick retry.
CALLER = RetryPolicy((0.1,), 0.5)

#: After a batch used up its retries, later batches get one attempt each for this long
#: (or until a write succeeds): an outage is not waited out batch after batch.
OUTAGE_SECONDS = 2.0


def policy_for_this_thread() -> RetryPolicy:
    """:data:`BACKGROUND` in FluxGate's own threads (named ``fluxgate-…``), else
    :data:`CALLER`."""
    if threading.current_thread().name.startswith("fluxgate-"):
        return BACKGROUND
    return CALLER


class Outage:
    """Whether the database is known to be unreachable (a batch used up its retries)."""

    def __init__(self) -> None:
        self._until = 0.0

    def known(self) -> bool:
        return time.monotonic() < self._until

    def started(self) -> None:
        self._until = time.monotonic() + OUTAGE_SECONDS

    def ended(self) -> None:
        self._until = 0.0


outage = Outage()
