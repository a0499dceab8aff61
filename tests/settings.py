"""Settings for the test suite: SQLite by default, PostgreSQL with DATABASE_URL."""

import copy
import os
import tempfile
from typing import Any

SECRET_KEY = "fluxgate-tests-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.urls"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "fluxgate_django",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "fluxgate_django.middleware.FluxGateContextMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASE_URL = os.environ.get("DATABASE_URL", "")
DATABASES: dict[str, dict[str, Any]]
if DATABASE_URL.startswith(("postgres://", "postgresql://")):
    import dj_database_url

    DATABASES = {"default": dict(dj_database_url.parse(DATABASE_URL, conn_max_age=0))}
    # One test database per run (named in the environment, so child processes use it
    # too), unless TEST_DATABASE_NAME names one: two suites can run side by side.
    DATABASES["default"]["TEST"] = {
        "NAME": os.environ.setdefault("TEST_DATABASE_NAME", f"test_fluxgate_{os.getpid()}")
    }
else:
    # A file (not ":memory:", whose shared cache makes a thread that meets another's lock
    # fail at once): the recorders' writers and the sync recorder's hand-off on an event
    # loop then wait for SQLite's lock, as on a site, and WAL lets readers overlap a
    # writer. One file per test run, named in the environment so child processes share it.
    _SQLITE = os.environ.setdefault(
        "FLUXGATE_TEST_SQLITE",
        os.path.join(tempfile.gettempdir(), f"fluxgate-tests-{os.getpid()}.sqlite3"),
    )
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _SQLITE,
            "TEST": {"NAME": _SQLITE},
            "OPTIONS": {
                "timeout": 30,
                # A write transaction takes its lock at BEGIN, so it waits for another
                # writer instead of failing when it first writes after a read.
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF",
            },
        }
    }

# A second database, used only by tests/test_routers.py (its router sends FluxGate's models
# there); no other test touches it, and pytest-django creates its test database only when a
# test asks for it. SQLite: a second file; PostgreSQL: the default test database's name plus
# "_fluxgate" on the same server.
DATABASES["fluxgate"] = copy.deepcopy(DATABASES["default"])
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    _SQLITE_FLUXGATE = _SQLITE.removesuffix(".sqlite3") + "-fluxgate.sqlite3"
    DATABASES["fluxgate"]["NAME"] = _SQLITE_FLUXGATE
    DATABASES["fluxgate"]["TEST"] = {"NAME": _SQLITE_FLUXGATE}
else:
    _TEST_NAME = DATABASES["default"].get("TEST", {}).get("NAME") or (
        "test_" + DATABASES["default"]["NAME"]
    )
    DATABASES["fluxgate"]["TEST"] = {"NAME": f"{_TEST_NAME}_fluxgate"}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

FLUXGATE = {
    # Writes happen in the caller, so an event is in the database when the call returns.
    "RECORDER": "sync",
    # FluxGate's own bugs fail the tests instead of being logged.
    "RAISE_ERRORS": True,
    # A spool of this test run's own (never the shared default), for child processes too.
    "SPOOL_DIR": os.environ.setdefault(
        "FLUXGATE_TEST_SPOOL", tempfile.mkdtemp(prefix="fluxgate-test-spool-")
    ),
}
