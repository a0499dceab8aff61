"""A small Django site that uses FluxGate: admin, two demo views, SQLite by default."""

try:  # The Celery app, so that shared tasks use it (``celery -A testproject worker``).
    from .celery import app as celery_app
except ImportError:  # celery is an optional extra
    celery_app = None

__all__ = ("celery_app",)
