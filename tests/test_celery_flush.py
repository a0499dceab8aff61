"""``flush()`` with the Celery recorder means written: it returns True only once every batch
this process sent is in the database, and False at its timeout while no worker writes
them. Real Redis broker (with FluxGate's shipped worker settings, no result backend
needed), a real Celery worker and PostgreSQL shared with it, the real ``openai`` client
against the fake provider (skipped, with the reason, where those are missing)."""

from __future__ import annotations

import time
from typing import Any

import pytest

import fluxgate_django
from fluxgate_django.models import Event
from fluxgate_django.recording import get_recorder
from tests import services
from tests.helpers import MSGS, fluxgate_overrides
from tests.services import Worker, make_app, new_queue

pytestmark = [pytest.mark.usefixtures("spool_dir"), pytest.mark.django_db(transaction=True)]

#: Batches of 7 sent as soon as they fill (the interval alone would never send them here).
RECORDING = {"RECORDER": "celery", "BATCH_SIZE": 7, "FLUSH_INTERVAL": 60, "RAISE_ERRORS": True}


@pytest.fixture
def queue() -> Any:
    services.require_services()
    name = new_queue()
    app = make_app(name)
    app.conf.result_backend = None  # the recorder must not need one
    try:
        yield name, app
    finally:
        services.purge(name)
        services.close_app(app)


def start_worker(queue: str, app: Any, fake_provider: Any, tmp_path: Any) -> Worker:
    worker = Worker(
        queue,
        {
            "FLUXGATE_TEST_DATABASE_URL": services.database_url(),
            "FLUXGATE_TEST_BROKER_URL": services.REDIS_URL,
            "FAKE_OPENAI_URL": fake_provider.openai_base_url,
            "FLUXGATE_TEST_SPOOL_DIR": str(tmp_path / "worker-spool"),
            "FLUXGATE_TEST_SHIPPED_SETTINGS": "1",  # configure_celery(app), as a site does
        },
        tmp_path,
    )
    worker.wait_ready(app)
    return worker


def tracked_calls(openai_client: Any, n: int) -> set[Any]:
    client = fluxgate_django.track_openai(openai_client)
    return {
        client.chat.completions.create(model="gpt-4o-mini", messages=MSGS).fluxgate.tracking_id
        for _ in range(n)
    }


@pytest.mark.parametrize("calls", [1, 30])
def test_flush_returns_once_every_sent_batch_is_written(
    queue, openai_client, fake_provider, tmp_path, calls
):
    name, app = queue
    worker = start_worker(name, app, fake_provider, tmp_path)
    try:
        with fluxgate_overrides(**RECORDING, CELERY_APP=app):
            ids = tracked_calls(openai_client, calls)
            assert fluxgate_django.flush(timeout=30), worker.log()
            # At the moment flush returns, not eventually: exactly the N events.
            assert set(Event.objects.values_list("tracking_id", flat=True)) == ids
            assert Event.objects.count() == calls
            # Nothing new: the next flush returns at once.
            started = time.monotonic()
            assert fluxgate_django.flush(timeout=5)
            assert time.monotonic() - started < 0.5
    finally:
        worker.stop()


def test_flush_times_out_while_no_worker_writes_the_batches(
    queue, openai_client, fake_provider, tmp_path
):
    name, app = queue
    with fluxgate_overrides(**RECORDING, CELERY_APP=app):
        ids = tracked_calls(openai_client, 10)  # in the broker: no worker is running
        started = time.monotonic()
        assert not fluxgate_django.flush(timeout=1)
        waited = time.monotonic() - started
        assert 0.9 <= waited < 2.5, waited
        assert Event.objects.count() == 0
        # Sent all the same: the broker keeps them for the worker.
        assert get_recorder().send_pending(timeout=5)

        worker = start_worker(name, app, fake_provider, tmp_path)
        try:
            # The same batches, confirmed by the next flush once a worker writes them.
            assert fluxgate_django.flush(timeout=30), worker.log()
            assert set(Event.objects.values_list("tracking_id", flat=True)) == ids
        finally:
            worker.stop()


def test_flush_in_eager_mode_waits_for_the_write(queue, openai_client, caplog):
    """``task_always_eager`` (``CELERY_TASK_ALWAYS_EAGER``): ``send_task`` ignores it, so
    the recorder writes each batch itself, and ``flush()`` returns once it is written —
    with no worker and nothing sent to the broker."""
    name, app = queue
    app.conf.task_always_eager = True
    with fluxgate_overrides(**RECORDING, CELERY_APP=app):
        ids = tracked_calls(openai_client, 10)
        assert fluxgate_django.flush(timeout=10)
        assert set(Event.objects.values_list("tracking_id", flat=True)) == ids
    assert services.broker_idle(name)
    # Written as the eager task would, not as a failed publish falling back to the database.
    assert not [r for r in caplog.records if r.name.startswith("fluxgate")]


def test_shutting_down_waits_for_sending_only(queue, openai_client):
    """``close()`` (a settings change, interpreter exit) needs the batches in the broker,
    which keeps them, not written: it does not wait out a stopped worker."""
    name, app = queue
    with fluxgate_overrides(**RECORDING, CELERY_APP=app):
        tracked_calls(openai_client, 10)
        recorder = get_recorder()
        started = time.monotonic()
        recorder.close()
        assert time.monotonic() - started < 3  # (close() waited its 5 s before)
    waiting, _ = services.broker_counts(name)
    assert waiting >= 2  # the batches (7 + 3, or split finer by the writer's timing), sent
    assert Event.objects.count() == 0
