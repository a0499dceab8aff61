"""The Celery app of the test workers: ``celery -A tests.celery_app worker``.

Configured from Django settings (``tests.settings_celery``, namespace ``CELERY``) the
way a site's ``proj/celery.py`` is; ``autodiscover_tasks()`` finds ``fluxgate_django.tasks``
and ``CELERY_IMPORTS`` the test tasks (tests/celery_tasks.py).

``FLUXGATE_TEST_HOLD_BATCH=<marker file>:<point>`` (set by the fault tests for one worker)
makes the first ``fluxgate.record_events`` task to reach ``point`` write its pid and its
batch's tracking ids to the marker file (JSON) and sleep there, so that the test can kill
the worker at that exact point:

* ``mid-transaction``: the batch's rows are inserted, its transaction not committed;
* ``after-commit``: the batch is committed and the task has returned, but the message
  is not acknowledged yet (``acks_late``);
* ``in-copy``: the batch's ``COPY`` has sent some of its rows; the process waits there
  until ``<marker file>.go`` exists (the test cuts the connection meanwhile), then sends
  the rest.

``FLUXGATE_TEST_SHIPPED_SETTINGS=1``: the app applies FluxGate's shipped worker settings
(``configure_celery(app)``) over tests/settings_celery.py's, which then sets none of its
tuned ones.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

from celery import Celery
from celery.signals import task_postrun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings_celery")

app = Celery("fluxgate_tests")
app.config_from_object("django.conf:settings", namespace="CELERY")
if os.environ.get("FLUXGATE_TEST_SHIPPED_SETTINGS"):
    # The one line a site adds (README, "Running at scale", Celery): FluxGate's worker settings.
    from fluxgate_django.celery_support import configure_celery

    configure_celery(app)
app.autodiscover_tasks()

HOLD_SECONDS = 120


def _hold_once(marker: str, tracking_ids: list[str]) -> None:
    """The first process to get here (across the worker's processes) stops here."""
    try:
        os.close(os.open(marker + ".lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    with open(marker + ".tmp", "w") as fh:
        json.dump({"pid": os.getpid(), "tracking_ids": tracking_ids}, fh)
    os.rename(marker + ".tmp", marker)  # the test reads it whole
    time.sleep(HOLD_SECONDS)


def _install_hold(spec: str) -> None:
    marker, _, point = spec.rpartition(":")
    if point == "mid-transaction":
        from fluxgate_django.recording import rows as event_rows
        from fluxgate_django.recording import write as base

        insert = base.insert_new  # the workers write to PostgreSQL

        def insert_then_hold(rows: Any, *args: Any) -> Any:
            inserted = insert(rows, *args)  # inside write_events' transaction
            at = event_rows.event_rows_spec().columns.index("tracking_id")
            _hold_once(marker, [str(row[at]) for row in rows])
            return inserted

        base.insert_new = insert_then_hold
    elif point == "after-commit":

        @task_postrun.connect(weak=False)
        def hold_before_ack(sender: Any = None, args: Any = (), **kwargs: Any) -> None:
            if getattr(sender, "name", None) == "fluxgate.record_events":
                from fluxgate_django.recording.celery import payload_records

                _hold_once(marker, [str(r.tracking_id) for r in payload_records(args[0])])

    elif point == "in-copy":
        from fluxgate_django.recording import sql

        copy_row = sql._Inserter.copy_row
        rows_sent = [0]

        def copy_row_then_wait(self: Any, row: list[Any]) -> list[Any]:
            rows_sent[0] += 1
            if rows_sent[0] == 10:
                _wait_once(marker)
            return copy_row(self, row)

        sql._Inserter.copy_row = copy_row_then_wait  # type: ignore[method-assign]
    else:
        raise ValueError(f"FLUXGATE_TEST_HOLD_BATCH: unknown point {point!r}")


def _wait_once(marker: str) -> None:
    """The first process to get here writes the marker (its pid) and waits for
    ``<marker>.go``."""
    try:
        os.close(os.open(marker + ".lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    with open(marker + ".tmp", "w") as fh:
        json.dump({"pid": os.getpid()}, fh)
    os.rename(marker + ".tmp", marker)
    deadline = time.monotonic() + 30
    while not os.path.exists(marker + ".go") and time.monotonic() < deadline:
        time.sleep(0.02)


if os.environ.get("FLUXGATE_TEST_HOLD_BATCH"):
    _install_hold(os.environ["FLUXGATE_TEST_HOLD_BATCH"])


def _exit_with_parent(parent: int) -> None:
    """A worker started by a test dies with the test process, even one killed outright."""
    while os.getppid() == parent:
        time.sleep(1)
    os.killpg(os.getpgid(0), signal.SIGKILL)


if os.environ.get("FLUXGATE_TEST_PARENT_PID"):
    threading.Thread(
        target=_exit_with_parent,
        args=(int(os.environ["FLUXGATE_TEST_PARENT_PID"]),),
        name="exit-with-parent",
        daemon=True,
    ).start()
