"""Real services for the Celery and fault tests: a Celery worker in its own process, the
loopback TCP proxy (:mod:`tests.tcp_proxy`) to cut a service off and bring it back, and
the checks that skip the tests (with the reason) where PostgreSQL or Redis is not there."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from tests.tcp_proxy import TcpProxy  # noqa: F401  (imported from here by the fault tests)

ROOT = Path(__file__).resolve().parent.parent

REDIS_URL = os.environ.get("FLUXGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("FLUXGATE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")

#: RabbitMQ: publisher confirms, so a publish the broker never got is an error (and the
#: recorder writes the batch itself) rather than a message silently lost.
AMQP_TRANSPORT_OPTIONS = {"confirm_publish": True}


def new_queue() -> str:
    """A queue of its own (per worker fixture): concurrent test runs on the same Redis, and
    the workers of one run, never take each other's tasks."""
    return f"fluxgate-tests-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def require_services() -> None:
    """Skip unless the suite runs on PostgreSQL and Redis answers (both are in CI)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip(
            "needs PostgreSQL: Celery workers are other processes and must share the test "
            "database (run with DATABASE_URL=postgres://...; CI does)"
        )
    host, port = host_port(REDIS_URL, 6379)
    if not reachable(host, port):
        pytest.skip(f"needs Redis at {host}:{port} (the Celery broker; CI has it)")


def database_url(host: str | None = None, port: int | None = None) -> str:
    """A URL of the test database (as the test process sees it), optionally at another
    address (a proxy)."""
    from django.db import connection

    s = connection.settings_dict
    auth = quote(s["USER"]) + (f":{quote(s['PASSWORD'])}" if s.get("PASSWORD") else "")
    host = host or s["HOST"] or "127.0.0.1"
    port = port or int(s["PORT"] or 5432)
    return f"postgres://{auth}@{host}:{port}/{s['NAME']}"


def redis_url_via(port: int) -> str:
    parts = urlsplit(REDIS_URL)
    return parts._replace(netloc=f"127.0.0.1:{port}").geturl()


def amqp_url_via(port: int) -> str:
    parts = urlsplit(AMQP_URL)
    auth = parts.netloc.rpartition("@")[0]
    return parts._replace(netloc=f"{auth}@127.0.0.1:{port}").geturl()


def require_rabbitmq() -> None:
    host, port = host_port(AMQP_URL, 5672)
    if not reachable(host, port):
        pytest.skip(f"needs RabbitMQ at {host}:{port} (CI has it)")


def delete_amqp_queue(queue: str) -> None:
    from kombu import Connection

    with Connection(AMQP_URL, connect_timeout=5) as conn:
        conn.default_channel.queue_delete(queue)


def amqp_ready_messages(queue: str) -> int:
    from kombu import Connection

    with Connection(AMQP_URL, connect_timeout=5) as conn:
        return conn.default_channel.queue_declare(queue, passive=True).message_count


def make_app(queue: str, broker_url: str = REDIS_URL) -> Any:
    """An app for the test process (publishing, results, control) on ``queue``."""
    from celery import Celery

    app = Celery("fluxgate_tests_client", set_as_current=False)
    app.conf.update(
        broker_url=broker_url,
        broker_transport_options=AMQP_TRANSPORT_OPTIONS if broker_url.startswith("amqp") else {},
        result_backend=REDIS_URL,
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
        result_expires=600,
    )
    return app


def close_app(app: Any) -> None:
    # Not app.pool.force_close_all(): kombu shares that pool with every later app of the
    # same broker URL in this process (pools are keyed by connection parameters).
    app.close()


def _redis() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL)


def _queue_keys(queue: str) -> list[str]:
    # kombu's Redis transport keeps a list per queue and priority step.
    return [queue, *(f"{queue}\x06\x16{p}" for p in range(1, 10))]


def purge(queue: str) -> None:
    """Empty ``queue``, including its unacknowledged messages (direct to Redis)."""
    client = _redis()
    try:
        client.delete(*_queue_keys(queue))
        for tag in _unacked_tags(client, queue):
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
    finally:
        client.close()


def _unacked_tags(client: Any, queue: str) -> list[bytes]:
    tags = []
    for tag, raw in client.hgetall("unacked").items():
        with contextlib.suppress(ValueError, TypeError, IndexError):
            if json.loads(raw)[2] == queue:
                tags.append(tag)
    return tags


def broker_counts(queue: str) -> tuple[int, int]:
    """Messages waiting in ``queue``, and taken from it but not acknowledged (running,
    waiting for a retry, or left by a dead worker for redelivery)."""
    client = _redis()
    try:
        waiting = sum(client.llen(key) for key in _queue_keys(queue))
        return waiting, len(_unacked_tags(client, queue))
    finally:
        client.close()


def broker_idle(queue: str) -> bool:
    """Nothing waiting in ``queue`` and nothing taken from it unacknowledged."""
    return broker_counts(queue) == (0, 0)


class Worker:
    """``celery -A tests.celery_app worker`` in its own process group."""

    def __init__(
        self,
        queue: str,
        env: dict[str, str],
        log_dir: Path,
        *,
        pool: str = "prefork",
        concurrency: int = 2,
    ) -> None:
        self.name = f"fluxgate-test-{uuid.uuid4().hex[:8]}@%h"
        self.log_path = log_dir / f"worker-{uuid.uuid4().hex[:6]}.log"
        full_env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings_celery",
            "FLUXGATE_TEST_QUEUE": queue,
            "FLUXGATE_TEST_RESULT_BACKEND": REDIS_URL,
            "FLUXGATE_TEST_PARENT_PID": str(os.getpid()),  # see tests/celery_app.py
            **env,
        }
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.celery_app",
                "worker",
                f"--pool={pool}",
                "-c",
                str(concurrency),
                "--loglevel=WARNING",
                "-Q",
                queue,
                "-n",
                self.name,
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed with its pool
        )

    def wait_ready(self, app: Any, timeout: float = 30) -> None:
        """Until the worker answers a ping."""
        deadline = time.monotonic() + timeout
        hostname = self.name.replace("%h", socket.gethostname())
        error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited ({self.proc.returncode}):\n{self.log()}")
            try:
                if app.control.ping(destination=[hostname], timeout=0.5):
                    return
            except Exception as exc:  # the broker not reachable yet, ...
                error = exc
        raise RuntimeError(
            f"the worker did not answer within {timeout} s (last error: {error!r}):\n{self.log()}"
        )

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once: no cleanup, no acks."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            # The main process only: a warm shutdown stops its pool processes itself.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # pool processes left behind
        self._log.close()


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def make_record(*, budget_reservation: Any = None, **context: Any) -> Any:
    """A priced gpt-4o ``EventRecord`` (1000 in, 500 out), as a tracked call makes."""
    from fluxgate_django.context import TrackingContext
    from fluxgate_django.pipeline import make_record, price_record
    from fluxgate_django.records import CallInfo, Usage

    info = CallInfo(provider="openai", operation="chat", requested_model="gpt-4o", model="gpt-4o")
    return price_record(
        make_record(
            info,
            Usage(1000, 500),
            TrackingContext(**context),
            latency_ms=12.5,
            budget_reservation=budget_reservation,
        )
    )


@contextlib.contextmanager
def database_refused(monkeypatch: Any) -> Iterator[None]:
    """Every new database connection fails, in every thread, as when the server refuses
    them (for tests that run on SQLite too; the fault tests use :class:`TcpProxy`)."""
    from django.db import OperationalError
    from django.db.backends.base.base import BaseDatabaseWrapper

    def refuse(wrapper: Any) -> None:
        raise OperationalError("could not connect to server: Connection refused")

    with monkeypatch.context() as m:
        m.setattr(BaseDatabaseWrapper, "ensure_connection", refuse)
        yield
