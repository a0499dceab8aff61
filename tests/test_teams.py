"""Which team a call belongs to: the request's team rule and the one team cache.

The rule (fluxgate_django/teams.py, README "Context"): the ``X-FluxGate-Team`` header's
team if the user is a member of it; else the membership marked ``is_default``; else the
user's only team; else none. Every entry of the cache, "no such team" included, expires
after ``BUDGET_CACHE_SECONDS``: a team, membership or budget made by another process (or
by ``bulk_create``/``update``, which send no signals) applies within that time.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.http import HttpRequest, JsonResponse
from django.test import RequestFactory
from django.utils.functional import SimpleLazyObject

from fluxgate_django import BudgetExceeded, teams, track_openai, tracking_context
from fluxgate_django.context import current_context, resolved
from fluxgate_django.middleware import FluxGateContextMiddleware
from fluxgate_django.models import Budget, Event, Team, TeamMembership
from fluxgate_django.testing import FakeProvider

from .helpers import MSGS, fluxgate_overrides

pytestmark = pytest.mark.django_db

User = get_user_model()

#: Short enough to wait out in a test; every cache entry lives this long.
CACHE_SECONDS = 0.2


@pytest.fixture(autouse=True)
def _fresh_team_cache() -> Iterator[None]:
    # Rows are rolled back between tests (no signal), and SQLite reuses their ids.
    teams.forget()
    yield
    teams.forget()


@pytest.fixture
def short_cache() -> Iterator[None]:
    with fluxgate_overrides(BUDGET_CACHE_SECONDS=CACHE_SECONDS):
        yield


def new_team(name: str) -> Team:
    return Team.objects.create(name=name, slug=f"{name.lower()}-{uuid.uuid4().hex[:8]}")


def team_made_elsewhere(name: str) -> Team:
    """A team created as another process would: no signal clears this process's cache."""
    slug = f"{name.lower()}-{uuid.uuid4().hex[:8]}"
    Team.objects.bulk_create([Team(name=name, slug=slug)])
    return Team.objects.get(slug=slug)


def new_user(name: str = "alice", *teams_: Team, default: Team | None = None) -> Any:
    user = User.objects.create_user(name, email=f"{name}@example.com", password="pw")
    for team in teams_:
        TeamMembership.objects.create(user=user, team=team, is_default=team == default)
    return user


def team_of(user: Any, header: str | None = None) -> str | None:
    return teams.RequestTeam(user.pk, header).resolve()


# -- the rule ------------------------------------------------------------------------------


def test_header_team_when_the_user_is_a_member() -> None:
    alpha, beta = new_team("Alpha"), new_team("Beta")
    user = new_user("alice", alpha, beta, default=alpha)
    assert team_of(user, beta.slug) == beta.slug  # the header wins over the default


def test_header_of_a_team_the_user_is_not_in_is_ignored() -> None:
    alpha, beta, gamma = new_team("Alpha"), new_team("Beta"), new_team("Gamma")
    assert team_of(new_user("alice", alpha), gamma.slug) == alpha.slug  # their only team
    assert team_of(new_user("bob", alpha, beta, default=beta), gamma.slug) == beta.slug
    assert team_of(new_user("carol", alpha, beta), gamma.slug) is None
    assert team_of(new_user("dave"), gamma.slug) is None


@pytest.mark.parametrize("header", [None, "", "no-such-team", "not a slug!", "x" * 101])
def test_unusable_header_falls_back_to_the_default(header: str | None) -> None:
    alpha, beta = new_team("Alpha"), new_team("Beta")
    assert team_of(new_user("alice", alpha, beta, default=beta), header) == beta.slug


def test_default_membership() -> None:
    # "Zeta" sorts last: the default is chosen, not the first by name.
    alpha, zeta = new_team("Alpha"), new_team("Zeta")
    assert team_of(new_user("alice", alpha, zeta, default=zeta)) == zeta.slug


def test_only_team() -> None:
    alpha = new_team("Alpha")
    assert team_of(new_user("alice", alpha)) == alpha.slug


def test_several_teams_without_a_default_is_no_team() -> None:
    alpha, beta = new_team("Alpha"), new_team("Beta")
    assert team_of(new_user("alice", alpha, beta)) is None


def test_no_team() -> None:
    new_team("Alpha")
    assert team_of(new_user("alice")) is None


def test_choosing_a_default_through_the_orm_applies_at_once() -> None:
    alpha, beta = new_team("Alpha"), new_team("Beta")
    user = new_user("alice", alpha, beta)
    assert team_of(user) is None
    membership = TeamMembership.objects.get(user=user, team=beta)
    membership.is_default = True
    membership.save()  # a signal: the cache is cleared in this process
    assert team_of(user) == beta.slug


# -- the cache -----------------------------------------------------------------------------


def test_resolved_once_per_user_and_header(django_assert_num_queries: Any) -> None:
    alpha, beta = new_team("Alpha"), new_team("Beta")
    user = new_user("alice", alpha, beta, default=alpha)
    with django_assert_num_queries(1):
        team = teams.RequestTeam(user.pk, beta.slug)
        assert team.resolve() == beta.slug
        assert team.resolve() == beta.slug
    with django_assert_num_queries(0):  # another request of the same user, same header
        assert teams.RequestTeam(user.pk, beta.slug).resolve() == beta.slug
        assert teams.RequestTeam(user.pk, beta.slug).cached() == (True, beta.slug)
    with django_assert_num_queries(1):  # another header is another entry
        assert teams.RequestTeam(user.pk, None).resolve() == alpha.slug


def test_cached_team_id_makes_no_query(django_assert_num_queries: Any) -> None:
    user = new_user("alice", new_team("Alpha"))
    with django_assert_num_queries(0):
        assert teams.cached_team_id(teams.RequestTeam(user.pk)) == (False, None)
        assert teams.cached_team_id("never-seen") == (False, None)


def test_a_membership_made_without_signals_applies_within_the_cache_time(
    short_cache: None,
) -> None:
    user = new_user("alice")
    assert team_of(user) is None  # cached: "no team"
    team = team_made_elsewhere("Alpha")
    TeamMembership.objects.bulk_create([TeamMembership(user=user, team=team)])
    assert teams.RequestTeam(user.pk).cached() == (True, None)  # not seen yet...
    time.sleep(CACHE_SECONDS * 1.5)
    assert team_of(user) == team.slug  # ...but not forever


def test_a_default_changed_without_signals_applies_within_the_cache_time(
    short_cache: None,
) -> None:
    alpha, beta = new_team("Alpha"), new_team("Beta")
    user = new_user("alice", alpha, beta, default=alpha)
    assert team_of(user) == alpha.slug
    TeamMembership.objects.filter(user=user).update(is_default=False)
    TeamMembership.objects.filter(user=user, team=beta).update(is_default=True)
    time.sleep(CACHE_SECONDS * 1.5)
    assert team_of(user) == beta.slug


# -- no budget bypass ----------------------------------------------------------------------


def blocking_budget(team: Team) -> None:
    """A budget no call fits, made as another process would: no signals."""
    Budget.objects.bulk_create(
        [Budget(team=team, period="day", limit_usd=Decimal("0.000001"), action="block")]
    )


def test_a_team_slug_seen_before_the_team_existed_is_not_no_team_forever(
    short_cache: None, openai_client: Any, fake: FakeProvider
) -> None:
    client: Any = track_openai(openai_client)
    slug = f"late-{uuid.uuid4().hex[:8]}"

    with tracking_context(team=slug, feature="chat"):
        response = client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    first = Event.objects.get(tracking_id=response.fluxgate.tracking_id)
    assert first.team_id is None  # no such team (yet)
    assert teams.cached_team_id(slug) == (True, None)  # looked up, and cached as none

    # Another process creates the team and a blocking budget: no signal reaches us.
    Team.objects.bulk_create([Team(name="Late", slug=slug)])
    team = Team.objects.get(slug=slug)
    blocking_budget(team)

    time.sleep(CACHE_SECONDS * 1.5)
    with tracking_context(team=slug, feature="chat"), pytest.raises(BudgetExceeded):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)

    blocked = Event.objects.exclude(pk=first.pk).get()
    assert blocked.status == "BUDGET_EXCEEDED"
    assert blocked.team_id == team.pk
    assert len(fake.requests) == 1  # the blocked call was never sent


def test_a_request_team_made_after_the_users_first_call_is_not_no_team_forever(
    short_cache: None, openai_client: Any, fake: FakeProvider
) -> None:
    """The same through the middleware: the user had no team at their first call."""
    client: Any = track_openai(openai_client)
    user = new_user("alice")

    def view(request: HttpRequest) -> JsonResponse:
        response = client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
        ctx = current_context()
        return JsonResponse(
            {"tracking_id": str(response.fluxgate.tracking_id), "team": resolved(ctx.team)}
        )

    middleware = FluxGateContextMiddleware(view)

    def get() -> Any:
        request: Any = RequestFactory().get("/", headers={"X-FluxGate-Team": "anything"})
        request.user = SimpleLazyObject(lambda: User.objects.get(pk=user.pk))  # as Django's
        return middleware(request)

    first = get()
    assert first.status_code == 200
    assert Event.objects.get().team_id is None

    team = team_made_elsewhere("Late")
    TeamMembership.objects.bulk_create([TeamMembership(user=user, team=team)])
    blocking_budget(team)

    time.sleep(CACHE_SECONDS * 1.5)
    with pytest.raises(BudgetExceeded):
        get()
    blocked = Event.objects.get(status="BUDGET_EXCEEDED")
    assert (blocked.team_id, blocked.user_id) == (team.pk, user.pk)
    assert len(fake.requests) == 1


def test_signals_clear_the_cache_at_once(openai_client: Any, fake: FakeProvider) -> None:
    """In this process, a Team saved through the ORM applies to the very next call."""
    client: Any = track_openai(openai_client)
    slug = f"now-{uuid.uuid4().hex[:8]}"
    with tracking_context(team=slug):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    team = Team.objects.create(name="Now", slug=slug)  # post_save: forget()
    with tracking_context(team=slug):
        response = client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    assert Event.objects.get(tracking_id=response.fluxgate.tracking_id).team_id == team.pk
