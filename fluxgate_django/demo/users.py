"""The demo's teams, users in them and the ``admin`` superuser (password ``admin``)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model

from ..models import Team, TeamMembership

TEAMS = {"search": "Search", "support": "Support", "growth": "Growth"}
#: username → (team slug, email)
DEMO_USERS = {
    "alice": ("search", "alice@example.com"),
    "bob": ("support", "bob@example.com"),
    "carol": ("growth", "carol@example.com"),
    "dave": ("growth", "dave@example.com"),
}
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin"


def create_teams_and_users() -> tuple[list[Any], bool]:
    """Teams, demo users in them and the admin superuser if missing.

    Returns the demo users and whether the admin was created now.
    """
    User = get_user_model()
    teams = {
        slug: Team.objects.get_or_create(slug=slug, defaults={"name": name})[0]
        for slug, name in TEAMS.items()
    }
    users = []
    for username, (slug, email) in DEMO_USERS.items():
        user, created = User._default_manager.get_or_create(
            **{User.USERNAME_FIELD: username}, defaults={"email": email}
        )
        if created:
            user.set_unusable_password()
            user.save()
        TeamMembership.objects.get_or_create(user=user, team=teams[slug])
        users.append(user)

    admin_created = False
    if not User._default_manager.filter(**{User.USERNAME_FIELD: ADMIN_USERNAME}).exists():
        User._default_manager.create_superuser(ADMIN_USERNAME, "admin@example.com", ADMIN_PASSWORD)
        admin_created = True
    return users, admin_created
