"""``manage.py fluxgate_demo`` on a site whose user model has no e-mail field (run by
tests/test_demo_first_day.py: ``pytest tests/noemail_users/check_demo.py
--ds tests.settings_noemail_user``; not collected by the suite itself)."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from fluxgate_django.alerts import wait_for_notifications
from fluxgate_django.models import BudgetAlert, Event, Team, TeamMembership


@pytest.mark.django_db(transaction=True)
def test_the_demo_works_with_a_user_model_without_email():
    User = get_user_model()
    assert User._meta.label == "noemail_users.User"
    assert "email" not in {f.name for f in User._meta.get_fields()}
    # A team admin (no e-mail address to send to): the budget alerts' notifications
    # look for the admins' addresses.
    growth = Team.objects.create(slug="growth", name="Growth")
    boss = User.objects.create_user("boss", "pw", display_name="The Boss")
    TeamMembership.objects.create(user=boss, team=growth, role=TeamMembership.Role.ADMIN)

    out = StringIO()
    call_command("fluxgate_demo", no_input=True, calls=8, days=2, stdout=out, stderr=StringIO())
    output = out.getvalue()

    assert "Admin login: admin / admin (just created)" in output
    admin = User.objects.get(handle="admin")
    assert admin.is_superuser and admin.is_staff and admin.check_password("admin")
    assert admin.display_name  # a REQUIRED_FIELD, filled in
    demo_users = set(
        User.objects.exclude(handle__in=["admin", "boss"]).values_list("handle", flat=True)
    )
    assert demo_users == {"alice", "bob", "carol", "dave"}
    assert TeamMembership.objects.filter(user__handle="alice", team__slug="search").exists()
    # The calls are attributed to the site's users; history was seeded for them too.
    assert Event.objects.filter(metadata__has_key="demo_run", user__handle="alice").exists()
    assert Event.objects.filter(metadata__has_key="demo_history", user__handle="bob").exists()

    # The over-budget team's alerts were raised and their notifications ran without a
    # FieldError (a failed notification releases its claim: notified_at back to None).
    wait_for_notifications()
    alerts = BudgetAlert.objects.filter(budget__team=growth)
    assert set(alerts.values_list("threshold_percent", flat=True)) == {80, 100}
    assert all(alert.notified_at is not None for alert in alerts)
    assert "refused before it was sent" in output
