"""Settings of the FluxGate gateway as ``bench/gateway.py`` serves it (under uvicorn).

The test project's settings (its middleware and URLs: ``fluxgate/`` mounted as a site
would mount it), with DEBUG off, a throwaway SQLite file (WAL, so that two worker
processes' recorders can write side by side), the thread recorder, and the OpenAI provider
pointed at the bench's fake provider. The bench passes everything through the environment:

* ``FLUXGATE_BENCH_DB``: the SQLite file (migrated by the bench before the server starts);
* ``FLUXGATE_BENCH_FAKE_URL``: the fake provider, ``http://127.0.0.1:PORT``;
* ``FLUXGATE_BENCH_SPOOL``: the recorder's spool directory;
* ``FLUXGATE_BENCH_MIDDLEWARE=none``: no middleware at all (a Django project that is only
  a gateway; the gateway authenticates by its key and needs none), instead of the test
  project's seven Django middlewares and FluxGate's context middleware.
"""

import os

from testproject.settings import *  # noqa: F403

DEBUG = False
if os.environ.get("FLUXGATE_BENCH_MIDDLEWARE") == "none":
    MIDDLEWARE = []
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["FLUXGATE_BENCH_DB"],
        "OPTIONS": {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        },
    }
}
_FAKE = os.environ["FLUXGATE_BENCH_FAKE_URL"].rstrip("/")
FLUXGATE = {
    "RECORDER": "thread",
    "SPOOL_DIR": os.environ["FLUXGATE_BENCH_SPOOL"],
    "PROVIDERS": {
        "openai": {"api_key": "sk-fake-bench", "base_url": f"{_FAKE}/v1", "timeout": 30},
    },
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # (Every bench team "runs away" from a zero baseline: keep those warnings out.)
    "loggers": {"fluxgate.runaway": {"level": "ERROR"}},
}
