"""Celery recovers by itself, with the worker settings FluxGate ships
(``fluxgate_django.celery_support.configure_celery``), not test-tuned ones:

* a worker SIGKILLed mid-batch (Redis broker): its batch is written by another worker
  within seconds (the visibility timeout matched to the batch task's time limit), not
  after Redis' default hour;
* a batch stuck in its write (a stalled connection): killed at the task's hard time
  limit and handed back to the broker at once;
* a database connection cut in the middle of a worker's ``COPY`` (psycopg raises its own
  error there): the task is retried, never acknowledged unwritten.

Both end with exactly the N events sent, no duplicate, and budgets settled once. Real
PostgreSQL, Redis and Celery workers (skipped, with the reason, where they are missing).
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import pytest

import fluxgate_django
from fluxgate_django.celery_support import RECORD_EVENTS_TIME_LIMIT, visibility_timeout_for
from fluxgate_django.models import Budget, Event, SpendCounter, Team, to_units
from tests import services
from tests.helpers import fluxgate_overrides
from tests.services import TcpProxy, Worker, broker_idle, make_app, new_queue, wait_until
from tests.test_faults import FAST, Burst, report

pytestmark = [pytest.mark.usefixtures("spool_dir"), pytest.mark.django_db(transaction=True)]

SHIPPED = {"FLUXGATE_TEST_SHIPPED_SETTINGS": "1"}  # see tests/celery_app.py


def worker_env(fake_provider: Any, tmp_path: Any, **env: str) -> dict[str, str]:
    return {
        "FLUXGATE_TEST_DATABASE_URL": services.database_url(),
        "FLUXGATE_TEST_BROKER_URL": services.REDIS_URL,
        "FAKE_OPENAI_URL": fake_provider.openai_base_url,
        "FLUXGATE_TEST_SPOOL_DIR": str(tmp_path / "worker-spool"),
        **SHIPPED,
        **env,
    }


def budgeted_team(slug: str) -> Budget:
    team = Team.objects.create(name=slug, slug=slug)
    return Budget.objects.create(team=team, period="day", limit_usd=Decimal("1000"))


def assert_settled_once(budget: Budget) -> None:
    counter = SpendCounter.objects.get(budget=budget)
    costs = sum(to_units(c) for c in Event.objects.values_list("cost_usd", flat=True))
    assert (counter.spent_units, counter.reserved_units) == (costs, 0)


class Broker:
    """What the SIGKILL test needs of a broker: its URL, and whether the queue holds
    nothing but ``unacked`` unacknowledged messages."""

    def __init__(self, kind: str, queue: str) -> None:
        self.kind, self.queue = kind, queue
        if kind == "rabbitmq":
            services.require_rabbitmq()
        self.url = services.AMQP_URL if kind == "rabbitmq" else services.REDIS_URL

    def idle(self, unacked: int = 0) -> bool:
        if self.kind == "rabbitmq":  # (its unacknowledged deliveries are not counted here)
            return services.amqp_ready_messages(self.queue) == 0
        return services.broker_counts(self.queue) == (0, unacked)

    def clean(self) -> None:
        if self.kind == "rabbitmq":
            services.delete_amqp_queue(self.queue)
        else:
            services.purge(self.queue)


@pytest.mark.parametrize("broker_kind", ["redis", "rabbitmq"])
def test_a_worker_sigkilled_mid_batch_with_the_shipped_settings(
    fake, fake_provider, tmp_path, capsys, broker_kind
):
    """The whole worker (main process and pool) is SIGKILLed while one of its processes
    holds a batch inserted but not committed, so nothing of the worker can hand the
    message back: the broker must deliver it again to the next worker by itself —
    Redis once the (shipped, matched) visibility timeout has passed, RabbitMQ at once."""
    services.require_services()
    slug = f"sigkill-{broker_kind}"
    budget = budgeted_team(slug)
    queue = new_queue()
    broker = Broker(broker_kind, queue)
    app = make_app(queue, broker.url)
    marker = tmp_path / "held.json"
    env = worker_env(fake_provider, tmp_path, FLUXGATE_TEST_BROKER_URL=broker.url)
    workers = [Worker(queue, {**env, "FLUXGATE_TEST_HOLD_BATCH": f"{marker}:mid-transaction"},
                      tmp_path)]  # fmt: skip
    try:
        workers[0].wait_ready(app)
        with fluxgate_overrides(RECORDER="celery", CELERY_APP=app, BATCH_SIZE=20, **FAST):
            with Burst(fake.openai_base_url, team=slug) as burst:
                burst.run_for(60)
                assert wait_until(marker.exists, 20), workers[0].log()
                held_at = time.monotonic()
                burst.run_for(40)
                sent = burst.stop()
            # Sent (not written: the held batch is written only after the kill).
            assert fluxgate_django.recording.get_recorder().send_pending(timeout=30)
        held_ids = json.loads(marker.read_text())["tracking_ids"]
        # Every other batch written and acknowledged, the held one alone unacknowledged:
        # the kill tests its redelivery (a message Redis hands over at the very instant
        # its worker dies can be lost: README "Running at scale").
        others = len(sent) - len(held_ids)
        settled = wait_until(lambda: Event.objects.count() >= others and broker.idle(1), 30)
        assert settled, (Event.objects.count(), others)
        assert not Event.objects.filter(tracking_id__in=held_ids).exists()  # not committed
        workers[0].kill()  # SIGKILL, the whole worker at once
        killed_at = time.monotonic()
        # (Before the batch task's hard time limit, which would have requeued it itself.)
        assert killed_at - held_at < RECORD_EVENTS_TIME_LIMIT - 1, "machine too slow"

        workers.append(Worker(queue, env, tmp_path))
        workers[-1].wait_ready(app)
        within = visibility_timeout_for(RECORD_EVENTS_TIME_LIMIT) + 10  # (vs 3,600 s)
        ok = wait_until(lambda: Event.objects.count() >= len(sent) and broker.idle(), within, 0.2)
        recovered = time.monotonic() - killed_at
        assert ok, f"stored {Event.objects.count()} of {len(sent)}\n{workers[-1].log()}"
        with capsys.disabled():
            print(
                f"\n[worker SIGKILLed, shipped settings, {broker_kind}] killed "
                f"{killed_at - held_at:.1f} s after the batch was held; all stored "
                f"{recovered:.1f} s after the kill"
            )
        report(capsys, f"worker SIGKILLed mid-batch, shipped settings ({broker_kind})", sent)
        assert_settled_once(budget)
    finally:
        for worker in workers:
            worker.stop()
        broker.clean()
        services.close_app(app)


def test_a_stuck_batch_is_killed_at_its_time_limit_and_written_again(
    fake, fake_provider, tmp_path, capsys
):
    """A batch whose write never finishes (here: held inside its transaction, as by a
    stalled connection) is killed at the task's hard time limit, and its message goes
    back to the broker at once (``acks_on_timeout`` off): written by the next process."""
    services.require_services()
    budget = budgeted_team("stuck-batch")
    queue = new_queue()
    app = make_app(queue)
    marker = tmp_path / "held.json"
    env = worker_env(fake_provider, tmp_path, FLUXGATE_TEST_HOLD_BATCH=f"{marker}:mid-transaction")
    worker = Worker(queue, env, tmp_path)
    try:
        worker.wait_ready(app)
        with fluxgate_overrides(RECORDER="celery", CELERY_APP=app, BATCH_SIZE=20, **FAST):
            with Burst(fake.openai_base_url, team="stuck-batch") as burst:
                burst.run_for(60)
                assert wait_until(marker.exists, 20), worker.log()
                held_at = time.monotonic()
                burst.run_for(40)
                sent = burst.stop()
            assert fluxgate_django.flush(timeout=30)
        ok = wait_until(
            lambda: Event.objects.count() >= len(sent) and broker_idle(queue),
            RECORD_EVENTS_TIME_LIMIT + 20,
            0.2,
        )
        assert ok, f"stored {Event.objects.count()} of {len(sent)}\n{worker.log()}"
        with capsys.disabled():
            print(f"\n[stuck batch] all stored {time.monotonic() - held_at:.1f} s after it stuck")
        assert "Hard time limit" in worker.log()
        report(capsys, "a stuck batch, killed at its time limit", sent)
        assert_settled_once(budget)
    finally:
        worker.stop()
        services.purge(queue)
        services.close_app(app)


def test_a_connection_cut_during_a_workers_copy_is_retried(fake, fake_provider, tmp_path, capsys):
    """The worker's connection to PostgreSQL (through a proxy) is cut while a batch is
    half-way through its ``COPY``: the error (psycopg's own, which ``except
    DatabaseError`` never sees) makes the task retry; the batch is never acknowledged
    unwritten."""
    services.require_services()
    budget = budgeted_team("copy-cut")
    proxy = TcpProxy(services.host_port(services.database_url(), 5432))
    queue = new_queue()
    app = make_app(queue)
    marker = tmp_path / "copy.json"
    env = worker_env(
        fake_provider,
        tmp_path,
        FLUXGATE_TEST_DATABASE_URL=services.database_url(port=proxy.port),
        FLUXGATE_TEST_HOLD_BATCH=f"{marker}:in-copy",
    )
    worker = Worker(queue, env, tmp_path)
    try:
        worker.wait_ready(app)
        # Batches over 50 events go through COPY (recording.sql.SMALL_BATCH): full ones.
        celery = {"RECORDER": "celery", "CELERY_APP": app, "BATCH_SIZE": 60, "FLUSH_INTERVAL": 2}
        with fluxgate_overrides(**celery, RAISE_ERRORS=True):
            with Burst(fake.openai_base_url, team="copy-cut") as burst:
                burst.run_for(100)
                assert wait_until(marker.exists, 20), worker.log()
                # The connection is cut mid-COPY, and the server takes new ones at once
                # (a restart, a failover): the rollback's reconnection succeeds, so the
                # error that reaches the task is psycopg's own, from the COPY.
                proxy.stop()
                proxy.start()
                (tmp_path / "copy.json.go").touch()  # the COPY goes on, into a dead socket
                burst.run_for(100)
                sent = burst.stop()
            assert fluxgate_django.flush(timeout=30)

        ok = wait_until(lambda: Event.objects.count() >= len(sent) and broker_idle(queue), 60, 0.2)
        assert ok, f"stored {Event.objects.count()} of {len(sent)}\n{worker.log()}"
        report(capsys, "connection cut during a worker's COPY", sent)
        assert_settled_once(budget)
    finally:
        worker.stop()
        services.purge(queue)
        services.close_app(app)
        proxy.stop()
