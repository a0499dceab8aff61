"""The demo's teams, users in them and the ``admin`` superuser (password ``admin``).

Works with any user model (``get_user_model()``): its ``USERNAME_FIELD`` (an e-mail
address when that field is an e-mail field), its ``EMAIL_FIELD`` only if the model has
one, and a value for each of its other ``REQUIRED_FIELDS`` that a plain field can take.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import FieldDoesNotExist
from django.db import models

from ..models import Team, TeamMembership
from ..teams import email_field_name

TEAMS = {"search": "Search", "support": "Support", "growth": "Growth"}
#: demo name → (team slug, email)
DEMO_USERS = {
    "alice": ("search", "alice@example.com"),
    "bob": ("support", "bob@example.com"),
    "carol": ("growth", "carol@example.com"),
    "dave": ("growth", "dave@example.com"),
}
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin"
ADMIN_EMAIL = "admin@example.com"


class DemoUserError(Exception):
    """The site's user model needs a field the demo cannot fill in."""


def _field(model: Any, name: str) -> models.Field[Any, Any] | None:
    try:
        field = model._meta.get_field(name)
    except FieldDoesNotExist:
        return None
    return field if isinstance(field, models.Field) else None


def login_name(name: str, email: str) -> str:
    """The value of the user model's ``USERNAME_FIELD`` for a demo user: the e-mail
    address if that field is an e-mail field, else the name."""
    User = get_user_model()
    return email if isinstance(_field(User, User.USERNAME_FIELD), models.EmailField) else name


def admin_login() -> str:
    """What the admin logs in with."""
    return login_name(ADMIN_USERNAME, ADMIN_EMAIL)


def demo_user(name: str) -> Any:
    """The demo user ``name`` (``"alice"``...)."""
    User = get_user_model()
    _team, email = DEMO_USERS[name]
    return User._default_manager.get(**{User.USERNAME_FIELD: login_name(name, email)})


def team_of(user: Any) -> str:
    """The team slug of a demo user."""
    for name, (slug, email) in DEMO_USERS.items():
        if user.get_username() == login_name(name, email):
            return slug
    raise KeyError(user.get_username())


def _value_for(field: models.Field[Any, Any], name: str, email: str) -> Any:
    """A value for a required field of the user model (None: the field can do without)."""
    if field.has_default() or field.null:
        return None
    if isinstance(field, models.EmailField):
        return email
    if isinstance(field, (models.CharField, models.TextField)):
        value = name
        if field.max_length:
            value = value[: field.max_length]
        return value
    if isinstance(field, models.BooleanField):
        return False
    if isinstance(field, models.UUIDField):
        return uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.fluxgate-demo.example.com")
    if isinstance(field, models.DateTimeField):
        return dt.datetime.now(dt.timezone.utc)
    if isinstance(field, models.DateField):
        return dt.date(2000, 1, 1)
    if isinstance(field, (models.IntegerField, models.DecimalField, models.FloatField)):
        return 0
    raise DemoUserError(
        f"The user model {get_user_model()._meta.label} requires the field "
        f"{field.name!r} ({type(field).__name__}), which the demo cannot fill in: create "
        "the demo users yourself, or make the field optional."
    )


def _user_fields(name: str, email: str) -> dict[str, Any]:
    """The fields to create a demo user with, besides its login name and password."""
    User = get_user_model()
    fields: dict[str, Any] = {}
    email_name = email_field_name()
    if email_name is not None and email_name != User.USERNAME_FIELD:
        fields[email_name] = email
    for required in User.REQUIRED_FIELDS:
        if required in fields:
            continue
        field = _field(User, required)
        if field is None:
            continue
        value = _value_for(field, name, email)
        if value is not None:
            fields[required] = value
    return fields


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
    for name, (slug, email) in DEMO_USERS.items():
        user, created = User._default_manager.get_or_create(
            **{User.USERNAME_FIELD: login_name(name, email)}, defaults=_user_fields(name, email)
        )
        if created:
            user.set_unusable_password()
            user.save()
        TeamMembership.objects.get_or_create(user=user, team=teams[slug])
        users.append(user)

    admin_created = False
    login = admin_login()
    if not User._default_manager.filter(**{User.USERNAME_FIELD: login}).exists():
        # As ``createsuperuser`` calls it: the login field, the required ones, a password.
        User._default_manager.create_superuser(
            **{User.USERNAME_FIELD: login},
            **_user_fields(ADMIN_USERNAME, ADMIN_EMAIL),
            password=ADMIN_PASSWORD,
        )
        admin_created = True
    return users, admin_created
