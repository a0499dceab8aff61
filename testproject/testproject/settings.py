"""Settings for the FluxGate test project, configured from the environment.

* Database: SQLite in ``var/testproject.sqlite3`` at the repository root, or PostgreSQL
  with ``DATABASE_URL=postgres://user:pass@host:5432/name`` (needs ``dj-database-url``).
* ``REDIS_URL=redis://host:6379/0``: Django's cache and the Celery broker; without it a
  local-memory cache and an in-memory broker.
* ``FLUXGATE_FAKE_URL=http://127.0.0.1:8765``: send every OpenAI and Anthropic call to a
  fake provider (``python -m fluxgate_django.testing.fake_provider``) with dummy keys.
  Otherwise the SDKs read ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY`` as usual.

Not a production configuration: the secret key has an insecure default and DEBUG is on
unless ``DJANGO_DEBUG=0``.
"""

import os
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = BASE_DIR.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-fluxgate-testproject-key")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") != "0"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # FluxGate's REST API (fluxgate/api/) and its OpenAPI docs page.
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "fluxgate_django",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # After AuthenticationMiddleware: it reads request.user for the tracking context.
    "fluxgate_django.middleware.FluxGateContextMiddleware",
]

ROOT_URLCONF = "testproject.urls"
WSGI_APPLICATION = "testproject.wsgi.application"
ASGI_APPLICATION = "testproject.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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
if DATABASE_URL:
    try:
        import dj_database_url
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImproperlyConfigured(
            "DATABASE_URL is set but dj-database-url is not installed: "
            "pip install dj-database-url 'psycopg[binary]'"
        ) from exc
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
else:
    SQLITE_DIR = REPO_ROOT / "var"
    SQLITE_DIR.mkdir(exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(SQLITE_DIR / "testproject.sqlite3"),
        }
    }

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL or "memory://")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
LOGIN_URL = "admin:login"

_FAKE_URL = os.environ.get("FLUXGATE_FAKE_URL", "").rstrip("/")
_PROVIDERS: dict[str, dict[str, Any]]
if _FAKE_URL:
    _PROVIDERS = {
        "openai": {"api_key": "sk-fake-testproject", "base_url": f"{_FAKE_URL}/v1"},
        "anthropic": {"api_key": "sk-ant-fake-testproject", "base_url": _FAKE_URL},
    }
else:
    # api_key None: the SDKs read OPENAI_API_KEY / ANTHROPIC_API_KEY themselves.
    _PROVIDERS = {"openai": {"timeout": 30}, "anthropic": {"timeout": 30}}

FLUXGATE = {
    "RECORDER": os.environ.get("FLUXGATE_RECORDER", "thread"),
    "PROVIDERS": _PROVIDERS,
}
