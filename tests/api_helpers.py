"""Builders shared by the REST API tests (tests/test_api*.py): two teams with their keys,
members, admins, staff and an outsider, and clients for each of them."""

from __future__ import annotations

import dataclasses
import uuid
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from fluxgate_django.budgets import clear_cache
from fluxgate_django.models import ApiKey, Budget, Event, Team, TeamMembership

API = "/fluxgate/api/"


def key_client(secret: str, **options: Any) -> Client:
    """A test client sending ``Authorization: Bearer <secret>`` on every request."""
    return Client(headers={"Authorization": f"Bearer {secret}"}, **options)


def user_client(user: Any, **options: Any) -> Client:
    client = Client(**options)
    client.force_login(user)
    return client


def post_json(client: Client, path: str, data: Any = None, **extra: Any) -> Any:
    return client.post(path, {} if data is None else data, content_type="application/json", **extra)


def patch_json(client: Client, path: str, data: Any, **extra: Any) -> Any:
    return client.patch(path, data, content_type="application/json", **extra)


def event_payload(**fields: Any) -> dict[str, Any]:
    """A valid ingest event (a priced gpt-4o call unless told otherwise)."""
    return {
        "tracking_id": str(uuid.uuid4()),
        "provider": "openai",
        "model": "gpt-4o",
        "operation": "chat",
        "input_tokens": 1000,
        "output_tokens": 500,
        **fields,
    }


@dataclasses.dataclass
class World:
    """Teams ``a`` and ``b``, a key each, and one user of every kind."""

    team_a: Team
    team_b: Team
    key_a: ApiKey
    secret_a: str
    key_b: ApiKey
    secret_b: str
    admin_a: Any
    member_a: Any
    admin_b: Any
    staff: Any
    outsider: Any

    def client(self, who: str, **options: Any) -> Client:
        """``anon``, ``key_a``, ``key_b`` or a user attribute name."""
        if who == "anon":
            return Client(**options)
        if who in ("key_a", "key_b"):
            return key_client(getattr(self, f"secret_{who[-1]}"), **options)
        return user_client(getattr(self, who), **options)


def make_world() -> World:
    # Budget and counter ids cached by an earlier test may be reused after its rollback.
    clear_cache()
    users = get_user_model().objects
    team_a = Team.objects.create(name="Alpha", slug="a")
    team_b = Team.objects.create(name="Beta", slug="b")
    key_a, secret_a = ApiKey.objects.create_key(team=team_a, name="ci-a")
    key_b, secret_b = ApiKey.objects.create_key(team=team_b, name="ci-b")
    admin_a = users.create_user("admin_a", "admin_a@example.com", "pw")
    member_a = users.create_user("member_a", "member_a@example.com", "pw")
    admin_b = users.create_user("admin_b", "admin_b@example.com", "pw")
    # The site administrator: a superuser (staff with view_event are team members only).
    staff = users.create_user("staff", "staff@example.com", "pw", is_staff=True, is_superuser=True)
    outsider = users.create_user("outsider", "outsider@example.com", "pw")
    TeamMembership.objects.create(user=admin_a, team=team_a, role="admin")
    TeamMembership.objects.create(user=member_a, team=team_a, role="member")
    TeamMembership.objects.create(user=admin_b, team=team_b, role="admin")
    return World(
        team_a=team_a,
        team_b=team_b,
        key_a=key_a,
        secret_a=secret_a,
        key_b=key_b,
        secret_b=secret_b,
        admin_a=admin_a,
        member_a=member_a,
        admin_b=admin_b,
        staff=staff,
        outsider=outsider,
    )


def make_event(team: Team | None, **fields: Any) -> Event:
    values = {
        "provider": "openai",
        "model": "gpt-4o",
        "feature": "chat",
        "input_tokens": 100,
        "output_tokens": 10,
        "cost_usd": Decimal("0.001"),
        "created_at": timezone.now(),
        **fields,
    }
    return Event.objects.create(team=team, **values)


def make_budget(team: Team, **fields: Any) -> Budget:
    return Budget.objects.create(team=team, **{"limit_usd": Decimal("10"), **fields})
