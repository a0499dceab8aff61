"""Settings for subprocesses that run the thread recorder for real (exit flush, fork).

``FLUXGATE_TEST_SQLITE`` names a SQLite file to use; otherwise ``DATABASE_URL`` applies
as in ``tests.settings``. ``FLUXGATE_TEST_SPOOL_DIR`` keeps the spool out of /tmp.
"""

import os

from tests.settings import *  # noqa: F403

if os.environ.get("FLUXGATE_TEST_SQLITE"):
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ["FLUXGATE_TEST_SQLITE"],
        }
    }

FLUXGATE = {
    "RECORDER": "thread",
    "RAISE_ERRORS": True,
    # Nothing is written before exit unless the test asks for it.
    "FLUSH_INTERVAL": 60,
    "BATCH_SIZE": 1000,
    "SPOOL_DIR": os.environ.get("FLUXGATE_TEST_SPOOL_DIR") or None,
}
