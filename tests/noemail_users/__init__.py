"""A user model without an e-mail field, logging in by ``handle`` and requiring a
``display_name``: the demo command must work with it (``tests.settings_noemail_user``,
run by tests/test_demo_first_day.py in a pytest process of its own)."""
