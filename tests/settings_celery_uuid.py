"""The Celery worker settings (tests/settings_celery.py) with a user model whose primary
key is a UUID (tests/uuid_users), on a database of its own (``FLUXGATE_TEST_DATABASE_URL``,
migrated by the test): used by one worker run in tests/test_celery.py and by the process
that makes the tracked calls there (tests/uuid_users/drive.py)."""

from tests.settings_celery import *  # noqa: F403
from tests.settings_celery import FLUXGATE, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.uuid_users"]
AUTH_USER_MODEL = "uuid_users.User"
FLUXGATE = {**FLUXGATE, "CELERY_APP": "tests.celery_app.app"}
