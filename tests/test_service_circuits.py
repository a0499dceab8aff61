"""LLMService: an open circuit is never called, and the response cache is kept per team.

Real SDK clients against the loopback fake provider, as in ``test_service.py``: a request
that reaches the fake is counted, so "no network call" is what the fake did not see.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal

import openai
import pytest
import redis
from django.core.checks import run_checks
from django.db import OperationalError
from django.test import override_settings

from fluxgate_django import BudgetExceeded, LLMService, flush, ledger, teams, tracking_context
from fluxgate_django.models import ApiKey, Budget, Event, Team
from fluxgate_django.service import AllProvidersFailed
from fluxgate_django.service import breaker as breaker_module
from fluxgate_django.testing import FakeReply
from tests import services
from tests.test_service import MSGS, service_settings

pytestmark = pytest.mark.django_db

GPT, CLAUDE = "openai/gpt-4o-mini", "anthropic/claude-sonnet-4-6"  # route "summarize"
OPEN = "skipped-open-circuit"


class Clock:
    """The breaker's clock, moved forward by hand (only the breaker module sees it)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(breaker_module, "time", clock)
    return clock


@pytest.fixture
def service(fake):
    with service_settings(fake):
        yield LLMService()


def open_circuits(service, *names):
    for name in names:
        for _ in range(service.breaker.failures):
            service.breaker.record_failure(name)
        assert service.breaker.state(name) == "open"


def call(service, how, **options):
    """One service call through ``complete``, ``acomplete``, ``stream`` or ``astream``."""
    if how == "complete":
        return service.complete(MSGS, **options)
    if how == "stream":
        return "".join(service.stream(MSGS, **options))

    async def run():
        if how == "acomplete":
            return await service.acomplete(MSGS, **options)
        return "".join([t async for t in service.astream(MSGS, **options)])

    try:
        return asyncio.run(run())
    finally:
        flush()  # async calls are recorded off the loop


def outcomes(attempts):
    return [(f"{a.provider}/{a.model}", a.outcome) for a in attempts]


# -- every circuit open: no network call ----------------------------------------------


def test_circuits_opened_by_failures_then_the_route_fails_fast(service, fake, client):
    for _ in range(3):  # both models fail three times: both circuits open
        fake.enqueue(FakeReply(status=500), FakeReply(status=503))
        with pytest.raises(AllProvidersFailed):
            service.complete(MSGS, route="summarize")
    assert [service.breaker.state(n) for n in (GPT, CLAUDE)] == ["open", "open"]
    sent, events = fake.request_count, Event.objects.count()

    with pytest.raises(AllProvidersFailed) as info:
        service.complete(MSGS, route="summarize", feature="faq")
    assert fake.request_count == sent  # the last model was not called either
    assert Event.objects.count() == events  # nothing was attempted, nothing recorded
    assert outcomes(info.value.attempts) == [(GPT, OPEN), (CLAUDE, OPEN)]
    assert info.value.last_error is None
    assert "none was called" in str(info.value) and f"{CLAUDE}: {OPEN}" in str(info.value)

    # Over HTTP: 503 with the skipped attempts.
    team = Team.objects.create(name="Search", slug="search")
    _, secret = ApiKey.objects.create_key(team=team, name="ci")
    response = client.post(
        "/fluxgate/api/complete/",
        {"messages": MSGS, "route": "summarize"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 503
    assert [a["outcome"] for a in response.json()["attempts"]] == [OPEN, OPEN]
    assert fake.request_count == sent


@pytest.mark.django_db(transaction=True)  # async calls record off the event loop
@pytest.mark.parametrize("how", ["complete", "acomplete", "stream", "astream"])
@pytest.mark.parametrize("target", [{"route": "summarize"}, {"model": "fast"}])
def test_every_entry_point_skips_an_open_last_circuit(service, fake, how, target):
    open_circuits(service, GPT, CLAUDE)
    with pytest.raises(AllProvidersFailed) as info:
        call(service, how, **target)
    assert fake.request_count == 0
    expected = [(GPT, OPEN), (CLAUDE, OPEN)] if "route" in target else [(GPT, OPEN)]
    assert outcomes(info.value.attempts) == expected


def test_an_open_circuit_is_skipped_for_the_next_model(service, fake):
    open_circuits(service, GPT)
    answer = service.complete(MSGS, route="summarize")
    assert (answer.provider, answer.fallback_used) == ("anthropic", False)
    assert outcomes(answer.attempts) == [(GPT, OPEN), (CLAUDE, "success")]
    assert fake.request_count == 1


# -- half-open: one probe after the cooldown ------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("how", ["complete", "acomplete"])
def test_after_the_cooldown_one_probe_goes_through_and_closes(service, fake, clock, how):
    open_circuits(service, GPT, CLAUDE)
    clock.offset = 301
    answer = call(service, how, route="summarize")
    assert fake.request_count == 1 and answer.provider == "openai"
    assert outcomes(answer.attempts) == [(GPT, "success")]
    assert service.breaker.state(GPT) == "closed"
    assert service.breaker.state(CLAUDE) == "half-open"  # not needed, so not probed


def test_a_probe_under_way_elsewhere_leaves_the_others_skipping(service, fake, clock):
    open_circuits(service, GPT, CLAUDE)
    clock.offset = 301
    assert service.breaker.allow(GPT) == service.breaker.allow(CLAUDE) == "probe"  # taken
    with pytest.raises(AllProvidersFailed) as info:
        service.complete(MSGS, route="summarize")
    assert fake.request_count == 0
    assert outcomes(info.value.attempts) == [(GPT, OPEN), (CLAUDE, OPEN)]


def test_a_failed_probe_reopens_the_circuit(service, fake, clock):
    open_circuits(service, GPT)
    clock.offset = 301
    fake.enqueue(FakeReply(status=500))
    with pytest.raises(AllProvidersFailed) as info:
        service.complete(MSGS, model="fast")
    assert outcomes(info.value.attempts) == [(GPT, "error")]
    assert service.breaker.state(GPT) == "open" and fake.request_count == 1
    with pytest.raises(AllProvidersFailed):
        service.complete(MSGS, model="fast")
    assert fake.request_count == 1


def test_a_probe_the_caller_got_wrong_frees_the_slot(service, fake, clock):
    """A 400 says nothing about the model's health: the next caller probes at once
    instead of waiting a whole cooldown for the slot."""
    open_circuits(service, GPT)
    clock.offset = 301
    fake.enqueue(FakeReply(status=400, error_message="invalid temperature"))
    with pytest.raises(openai.BadRequestError):
        service.complete(MSGS, model="fast")
    assert service.breaker.state(GPT) == "half-open"
    assert service.complete(MSGS, model="fast").provider == "openai"
    assert service.breaker.state(GPT) == "closed" and fake.request_count == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("how", ["complete", "acomplete"])
def test_a_probe_refused_by_a_budget_frees_the_slot(service, fake, clock, how):
    ledger.clear_cache()
    teams.forget()
    team = Team.objects.create(name="Agents", slug="agents")
    Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.000001"))
    open_circuits(service, GPT)
    clock.offset = 301
    with pytest.raises(BudgetExceeded):
        call(service, how, model="fast", team="agents", max_tokens=1000)
    assert fake.request_count == 0
    # The refused call sent nothing: another team's call is the probe.
    assert call(service, how, model="fast").provider == "openai"
    assert service.breaker.state(GPT) == "closed" and fake.request_count == 1


# -- the response cache is the team's -------------------------------------------------


@pytest.fixture
def two_teams(db):
    teams.forget()
    return (
        Team.objects.create(name="Alpha", slug="alpha"),
        Team.objects.create(name="Beta", slug="beta"),
    )


def cached_service(fake, **extra):
    return service_settings(fake, RESPONSE_CACHE={"alias": "default", "ttl": 60}, **extra)


def test_one_teams_cached_answer_is_not_served_to_another(fake, two_teams):
    alpha, beta = two_teams
    with cached_service(fake):
        service = LLMService()
        first = service.complete(MSGS, route="summarize", team="alpha", feature="faq")
        with tracking_context(team="beta"):  # the team of the current context
            other = service.complete(MSGS, route="summarize", feature="faq")
        assert fake.request_count == 2 and not other.cache_hit
        nobody = service.complete(MSGS, route="summarize", feature="faq")  # no team
        assert fake.request_count == 3 and not nobody.cache_hit
        again = service.complete(MSGS, route="summarize", team=alpha, feature="faq")
        assert again.cache_hit and again.content == first.content
        assert service.complete(MSGS, route="summarize").cache_hit  # "no team" has its own
        assert fake.request_count == 3
    events = {e.tracking_id: e for e in Event.objects.all()}
    assert events[first.tracking_id].team_id == alpha.id
    assert events[other.tracking_id].team_id == beta.id
    assert events[nobody.tracking_id].team_id is None
    hit = events[again.tracking_id]
    assert (hit.cache_hit, hit.team_id, hit.cost_saved_usd) == (True, alpha.id, first.cost)


def test_site_scope_shares_answers_across_teams_deliberately(fake, two_teams):
    _, beta = two_teams
    with cached_service(fake, SERVICE_CACHE_SCOPE="site"):
        service = LLMService()
        first = service.complete(MSGS, route="summarize", team="alpha", feature="faq")
        shared = service.complete(MSGS, route="summarize", team="beta", feature="faq")
    assert fake.request_count == 1
    assert shared.cache_hit and shared.content == first.content
    hit = Event.objects.get(tracking_id=shared.tracking_id)
    # Served from alpha's answer, counted for beta (the caller), saving what alpha paid.
    assert (hit.cache_hit, hit.team_id, hit.cost_usd, hit.cost_saved_usd) == (
        True,
        beta.id,
        0,
        first.cost,
    )


@pytest.mark.django_db(transaction=True)
def test_async_calls_key_the_cache_on_their_team(fake, two_teams):
    _, beta = two_teams
    with cached_service(fake):
        service = LLMService()
        service.complete(MSGS, route="summarize", team="alpha")

        async def as_beta_twice():
            with tracking_context(team="beta"):
                first = await service.acomplete(MSGS, route="summarize")
                return first, await service.acomplete(MSGS, route="summarize")

        first, second = asyncio.run(as_beta_twice())
        flush()
    assert (first.cache_hit, second.cache_hit, fake.request_count) == (False, True, 2)
    assert Event.objects.get(tracking_id=second.tracking_id).team_id == beta.id


def test_api_keys_of_two_teams_do_not_share_answers(fake, two_teams, client):
    secrets = [ApiKey.objects.create_key(team=t, name="ci")[1] for t in two_teams]
    with cached_service(fake):
        bodies = [
            client.post(
                "/fluxgate/api/complete/",
                {"messages": MSGS, "route": "summarize"},
                content_type="application/json",
                HTTP_AUTHORIZATION=f"Bearer {secret}",
            ).json()
            for secret in secrets
        ]
    assert [b["cache_hit"] for b in bodies] == [False, False]
    assert fake.request_count == 2


def test_a_team_that_cannot_be_told_skips_the_cache(fake, two_teams, monkeypatch):
    """The database is down: a team seen before keeps its own entries; one never seen
    is not guessed at (no entry read or written for it)."""
    with cached_service(fake, BUDGET_FAIL_OPEN=True):
        service = LLMService()
        service.complete(MSGS, route="summarize", team="alpha")  # alpha's id is now known

        def down(slugs):
            raise OperationalError("connection refused")

        monkeypatch.setattr(teams, "team_ids", down)
        assert service.complete(MSGS, route="summarize", team="alpha").cache_hit
        for _ in range(2):
            assert not service.complete(MSGS, route="summarize", team="gamma").cache_hit
    assert fake.request_count == 3


def test_cache_scope_setting_is_checked():
    def messages(scope):
        with override_settings(FLUXGATE={"RECORDER": "sync", "SERVICE_CACHE_SCOPE": scope}):
            return [m for m in run_checks() if (m.id or "").startswith("fluxgate.")]

    assert messages("team") == messages("site") == []
    [error] = messages("tenant")
    assert error.id == "fluxgate.E010" and "'tenant'" in error.msg


# -- with Redis as the shared cache ---------------------------------------------------


def test_circuits_open_in_redis_fail_fast_in_every_process(fake):
    host, port = services.host_port(services.REDIS_URL, 6379)
    if not services.reachable(host, port):
        pytest.skip(f"needs Redis at {host}:{port}")
    prefix = f"fluxgate-tests-{uuid.uuid4().hex[:8]}"
    caches = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": services.REDIS_URL,
            "KEY_PREFIX": prefix,
        }
    }
    try:
        with override_settings(CACHES=caches), service_settings(fake):
            open_circuits(LLMService(), GPT, CLAUDE)  # as another process would
            with pytest.raises(AllProvidersFailed) as info:
                LLMService().complete(MSGS, route="summarize")
    finally:
        client = redis.Redis.from_url(services.REDIS_URL)
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    assert fake.request_count == 0
    assert outcomes(info.value.attempts) == [(GPT, OPEN), (CLAUDE, OPEN)]
