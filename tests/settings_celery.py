"""Settings for the Celery workers the tests start (tests/test_celery*.py, tests/test_faults.py).

A worker is another process, so it needs a database the test process shares: PostgreSQL
(``FLUXGATE_TEST_DATABASE_URL``, else ``DATABASE_URL``). The test fixtures set these
variables (see tests/celery_worker.py):

* ``FLUXGATE_TEST_DATABASE_URL``: the test database (possibly through a fault proxy);
* ``FLUXGATE_TEST_BROKER_URL``: Redis db 15 by default, or RabbitMQ (``amqp://``), possibly
  through a fault proxy;
* ``FLUXGATE_TEST_RESULT_BACKEND``: where test tasks put their results (Redis db 15);
* ``FLUXGATE_TEST_QUEUE``: a queue of this test run's own, so runs never share tasks;
* ``FLUXGATE_TEST_REDIS_URL``: the default for both (``redis://127.0.0.1:6379/15``);
* ``FLUXGATE_TEST_SPOOL_DIR``, ``FAKE_OPENAI_URL``;
* ``FLUXGATE_TEST_CONN_MAX_AGE``, ``FLUXGATE_TEST_SERVER_SIDE_BINDING`` (bench/ingest.py);
* ``FLUXGATE_TEST_SHIPPED_SETTINGS=1``: none of the tuned broker settings below; the
  worker app applies FluxGate's shipped ones instead (``configure_celery``, see
  tests/celery_app.py), as a site does.
"""

import os

from django.core.exceptions import ImproperlyConfigured

from tests.settings import *  # noqa: F403

_DATABASE_URL = os.environ.get("FLUXGATE_TEST_DATABASE_URL") or os.environ.get("DATABASE_URL", "")
if not _DATABASE_URL.startswith(("postgres://", "postgresql://")):
    raise ImproperlyConfigured(
        "tests.settings_celery needs PostgreSQL: set FLUXGATE_TEST_DATABASE_URL or "
        "DATABASE_URL=postgres://... (a worker is another process; SQLite in memory can't "
        "be shared)."
    )

import dj_database_url  # noqa: E402

DATABASES = {
    "default": dj_database_url.parse(
        _DATABASE_URL, conn_max_age=int(os.environ.get("FLUXGATE_TEST_CONN_MAX_AGE", "0"))
    )
}
if os.environ.get("FLUXGATE_TEST_SERVER_SIDE_BINDING"):  # bench/ingest.py --server-side-binding
    DATABASES["default"]["OPTIONS"] = {"server_side_binding": True, "prepare_threshold": 2}

REDIS_URL = os.environ.get("FLUXGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
CELERY_BROKER_URL = os.environ.get("FLUXGATE_TEST_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = os.environ.get("FLUXGATE_TEST_RESULT_BACKEND", REDIS_URL)
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("FLUXGATE_TEST_QUEUE", "fluxgate-tests")
CELERY_IMPORTS = ["tests.celery_tasks"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
SHIPPED_SETTINGS = bool(os.environ.get("FLUXGATE_TEST_SHIPPED_SETTINGS"))
if not SHIPPED_SETTINGS:
    # One message at a time per process: nothing waits unacknowledged in a worker's buffer.
    CELERY_WORKER_PREFETCH_MULTIPLIER = 1
    # Redis redelivers a message that was never acknowledged (its worker died) after the
    # visibility timeout; keep it short so the fault tests see redelivery within seconds.
    # (RabbitMQ requeues a dead consumer's messages at once and needs none of this.)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": 5,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 10,
    }
if CELERY_BROKER_URL.startswith("amqp") and not SHIPPED_SETTINGS:
    # RabbitMQ acknowledges deliveries itself; publisher confirms make a publish it never
    # got an error rather than a silent loss.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
CELERY_RESULT_EXPIRES = 600
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

FLUXGATE = {
    "RECORDER": "celery",
    "RAISE_ERRORS": True,
    "FLUSH_INTERVAL": 0.1,
    "BATCH_SIZE": 50,
    "SPOOL_DIR": os.environ.get("FLUXGATE_TEST_SPOOL_DIR") or None,
    "PROVIDERS": {
        "openai": {
            "api_key": "sk-test-worker-key",
            "base_url": os.environ.get("FAKE_OPENAI_URL") or None,
            "timeout": 10,
        }
    },
}
