"""The test settings (tests/settings.py) with a user model that has no e-mail field
(tests/noemail_users): used by the pytest process that tests/test_demo_first_day.py runs
on tests/noemail_users/check_demo.py."""

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.noemail_users"]
AUTH_USER_MODEL = "noemail_users.User"
