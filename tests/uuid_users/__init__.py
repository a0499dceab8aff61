"""A user model with a UUID primary key, for the Celery worker run of
tests/test_celery.py (``tests.settings_celery_uuid``; the rest of the suite keeps
Django's own user model)."""
