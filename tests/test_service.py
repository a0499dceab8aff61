"""LLMService over HTTP against the fake provider: routing, fallback, breaker, caching."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from django.test import override_settings

from fluxgate_django import BudgetExceeded, LLMService, flush, ledger, teams
from fluxgate_django.models import Budget, Event, Team
from fluxgate_django.records import CostSource
from fluxgate_django.service import AllProvidersFailed, classify, set_strategy
from fluxgate_django.service.breaker import CircuitBreaker
from fluxgate_django.testing import FakeReply

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
MSGS = [{"role": "user", "content": "Summarise: the quick brown fox jumps over the lazy dog."}]


def service_settings(fake, **extra):
    config = {
        "RECORDER": "sync",
        "RAISE_ERRORS": True,
        "PROVIDERS": {
            "openai": {"api_key": "sk-test", "base_url": fake.openai_base_url, "timeout": 5},
            "anthropic": {"api_key": "sk-ant-test", "base_url": fake.anthropic_base_url},
        },
        "MODELS": {"fast": "openai/gpt-4o-mini", "claude-sonnet": "anthropic/claude-sonnet-4-6"},
        "ROUTES": {
            "summarize": {"strategy": "ordered", "models": ["fast", "claude-sonnet"]},
            "review": {"strategy": "ordered", "models": ["claude-sonnet", "gpt-4o"]},
            "cheap": {"strategy": "cost", "models": ["gpt-4o", "fast", "claude-sonnet"]},
            "rr": {"strategy": "round_robin", "models": ["fast", "claude-sonnet", "gpt-4o"]},
            "pri": {"strategy": "priority", "models": ["fast", "gpt-4o", "claude-sonnet"]},
            "quick": {"strategy": "latency", "models": ["gpt-4o", "fast"]},
            "deadline": {"strategy": "ordered", "models": ["gpt-4o", "fast"], "timeout": 0.3},
        },
        "CIRCUIT_BREAKER": {"failures": 3, "cooldown_seconds": 300},
        "RESPONSE_CACHE": {"alias": "default", "ttl": 0},
    }
    config.update(extra)
    return override_settings(FLUXGATE=config)


@pytest.fixture
def service(fake):
    with service_settings(fake):
        yield LLMService()


def served_models(fake):
    return [r.model for r in fake.requests if r.model]


def test_route_serves_from_its_first_model_and_records_the_event(service, fake):
    fake.enqueue(FakeReply(input_tokens=1000, cached_tokens=200, output_tokens=500))
    answer = service.complete(MSGS, route="summarize", feature="summarize", user={"id": "u1"})
    assert answer.content == "Hello from the fake provider."
    assert (answer.provider, answer.model, answer.fallback_used) == ("openai", "gpt-4o-mini", False)
    assert answer.usage.input_tokens == 1000 and answer.cache_hit is False
    # gpt-4o-mini: $0.15 / MTok in, $0.075 cached, $0.60 out.
    assert answer.cost == 800 * Decimal("0.15e-6") + 200 * Decimal("0.075e-6") + 500 * Decimal(
        "0.6e-6"
    )
    event = Event.objects.get(tracking_id=answer.tracking_id)
    assert (event.source, event.fallback_attempt, event.feature) == ("service", 0, "summarize")
    assert event.end_user_id == "u1"


def test_fallback_on_5xx_records_every_attempt(service, fake):
    fake.enqueue(FakeReply(status=503), FakeReply(input_tokens=100, output_tokens=10))
    answer = service.complete(MSGS, route="summarize", feature="chat")
    assert (answer.provider, answer.fallback_used) == ("anthropic", True)
    assert [a.outcome for a in answer.attempts] == ["error", "success"]
    assert served_models(fake) == ["gpt-4o-mini", "claude-sonnet-4-6"]
    events = list(Event.objects.order_by("fallback_attempt"))
    assert [(e.provider, e.status, e.fallback_attempt) for e in events] == [
        ("openai", "ERROR", 0),
        ("anthropic", "SUCCESS", 1),
    ]
    # Each attempt points at its own event, the failed one included.
    assert [a.tracking_id for a in answer.attempts] == [e.tracking_id for e in events]
    # Usage and finish reason as the tracked client recorded them.
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (100, 10)
    assert answer.finish_reason == events[1].finish_reason == "end_turn"
    assert all(e.feature == "chat" and e.source == "service" for e in events)


@pytest.mark.parametrize("reply", [FakeReply(status=429), FakeReply(drop_connection=True)])
def test_fallback_on_rate_limit_and_connection_errors(service, fake, reply):
    fake.enqueue(reply)
    answer = service.complete(MSGS, route="summarize")
    assert answer.provider == "anthropic" and answer.fallback_used


def test_no_fallback_on_the_callers_own_mistake(service, fake):
    fake.enqueue(FakeReply(status=400, error_message="invalid temperature"))
    with pytest.raises(openai.BadRequestError):
        service.complete(MSGS, route="summarize")
    assert fake.request_count == 1
    assert Event.objects.get().status == "MALFORMED_REQUEST"


def test_context_length_error_falls_back_to_a_larger_window(service, fake):
    fake.enqueue(
        FakeReply(status=400, error_message="This model's maximum context length is 128000 tokens.")
    )
    answer = service.complete(MSGS, route="summarize")  # gpt-4o-mini 128k -> claude 200k+
    assert answer.provider == "anthropic"


def test_timeout_falls_back_within_the_attempt_timeout(service, fake):
    fake.enqueue(FakeReply(delay=2.0))
    answer = service.complete(MSGS, route="deadline")
    assert answer.model == "gpt-4o-mini"
    assert answer.attempts[0].outcome == "timeout"
    assert answer.attempts[0].latency_ms < 1500


def test_all_providers_failing_raises_with_the_attempts(service, fake):
    fake.enqueue(FakeReply(status=500), FakeReply(status=529))
    with pytest.raises(AllProvidersFailed) as info:
        service.complete(MSGS, route="summarize")
    assert [a.outcome for a in info.value.attempts] == ["error", "error"]
    assert isinstance(info.value.last_error, anthropic.InternalServerError)


def test_breaker_opens_after_failures_and_skips_without_a_call(service, fake, monkeypatch):
    for _ in range(3):
        fake.enqueue(FakeReply(status=500))
        service.complete(MSGS, route="summarize")  # falls back to anthropic each time
    assert service.breaker.state("openai/gpt-4o-mini") == "open"
    before = fake.request_count
    answer = service.complete(MSGS, route="summarize")
    assert answer.provider == "anthropic"
    assert fake.request_count == before + 1  # the open circuit cost no network call
    assert answer.attempts[0].outcome == "skipped-open-circuit"
    # After the cooldown one probe goes through; success closes the circuit.
    import fluxgate_django.service.breaker as breaker_module

    real_time = breaker_module.time.time
    monkeypatch.setattr(breaker_module.time, "time", lambda: real_time() + 301)
    assert service.breaker.state("openai/gpt-4o-mini") == "half-open"
    answer = service.complete(MSGS, route="summarize")
    assert answer.provider == "openai"
    assert service.breaker.state("openai/gpt-4o-mini") == "closed"


def test_half_open_probe_failure_reopens(service, fake, monkeypatch):
    breaker = service.breaker
    for _ in range(3):
        breaker.record_failure("openai/gpt-4o-mini")
    import fluxgate_django.service.breaker as breaker_module

    real_time = breaker_module.time.time
    monkeypatch.setattr(breaker_module.time, "time", lambda: real_time() + 301)
    assert breaker.allow("openai/gpt-4o-mini") == "probe"  # the one probe
    assert breaker.allow("openai/gpt-4o-mini") is None  # others wait for it
    breaker.record_failure("openai/gpt-4o-mini")
    assert breaker.state("openai/gpt-4o-mini") == "open"


def test_breaker_state_is_shared_across_processes(fake, tmp_path):
    caches = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(tmp_path / "cache"),
        }
    }
    failures = "for _ in range(3): b.record_failure('openai/gpt-4o-mini')\n"
    script = (
        "import django, os, sys\n"
        "os.environ['DJANGO_SETTINGS_MODULE'] = 'tests.settings'\n"
        "from django.conf import settings\n"
        f"settings.CACHES = {caches!r}\n"
        "django.setup()\n"
        "from fluxgate_django.service.breaker import CircuitBreaker\n"
        "b = CircuitBreaker()\n"
        f"{failures}"
        "print(b.state('openai/gpt-4o-mini'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DATABASE_URL": ""},
    )
    assert out.stdout.strip() == "open", out.stderr
    with override_settings(CACHES=caches):  # Django reloads its cache handlers
        breaker = CircuitBreaker()
        assert breaker.state("openai/gpt-4o-mini") == "open"  # seen by this process
        breaker.record_success("openai/gpt-4o-mini")
    check = subprocess.run(
        [sys.executable, "-c", script.replace(failures, "")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DATABASE_URL": ""},
    )
    assert check.stdout.strip() == "closed", check.stderr  # and closed for the other one


def test_response_cache_hit_costs_nothing_and_records_the_saving(fake):
    with service_settings(fake, RESPONSE_CACHE={"alias": "default", "ttl": 60}):
        service = LLMService()
        fake.enqueue(FakeReply(input_tokens=1000, output_tokens=100))
        first = service.complete(MSGS, route="summarize", feature="faq")
        calls = fake.request_count
        second = service.complete(MSGS, route="summarize", feature="faq")
        assert fake.request_count == calls  # served from the cache, no provider call
        assert (second.cache_hit, second.cost, second.content) == (True, 0, first.content)
        hit = Event.objects.get(tracking_id=second.tracking_id)
        assert (hit.cache_hit, hit.cost_usd, hit.cost_saved_usd) == (True, 0, first.cost)
        assert hit.feature == "faq" and hit.source == "service"
        # Another request, or cache_ttl=0, goes to the provider.
        service.complete(MSGS, route="summarize", cache_ttl=0)
        service.complete([{"role": "user", "content": "Something else"}], route="summarize")
        assert fake.request_count == calls + 2


def test_response_cache_keeps_only_complete_answers(fake):
    with service_settings(fake, RESPONSE_CACHE={"alias": "default", "ttl": 60}):
        service = LLMService()
        fake.enqueue(FakeReply(finish_reason="length", output_tokens=5))
        cut = service.complete(MSGS, model="gpt-4o-mini", max_tokens=5)
        assert cut.finish_reason == "length"
        again = service.complete(MSGS, model="gpt-4o-mini", max_tokens=5)
        assert not again.cache_hit and fake.request_count == 2
        # A complete answer is cached (whatever the provider calls a normal stop).
        assert service.complete(MSGS, model="gpt-4o-mini", max_tokens=5).cache_hit


def test_cost_strategy_tries_the_cheapest_model_first(service, fake):
    answer = service.complete(MSGS, route="cheap", max_tokens=100)
    assert answer.model == "gpt-4o-mini"


def test_round_robin_rotates_across_processes_state(service, fake):
    models = [service.complete(MSGS, route="rr").model for _ in range(3)]
    assert models == ["gpt-4o-mini", "claude-sonnet-4-6", "gpt-4o"]


def test_priority_strategy_follows_seed_004(service, fake):
    assert service.complete(MSGS, route="pri", priority="low").model == "gpt-4o-mini"
    assert service.complete(MSGS, route="pri", priority="high").model == "claude-sonnet-4-6"
    # medium: a small request goes cheap, a large one as listed.
    assert service.complete(MSGS, route="pri", max_tokens=100).model == "gpt-4o-mini"
    big = [{"role": "user", "content": "x" * 2000}]
    assert service.complete(big, route="pri", max_tokens=1000).model == "gpt-4o-mini"


def test_latency_strategy_prefers_the_lowest_recent_p95(service, fake):
    fake.on_model("gpt-4o", FakeReply(delay=0.08))
    for _ in range(3):
        service.complete(MSGS, model="gpt-4o")
        service.complete(MSGS, model="fast")
    assert service.complete(MSGS, route="quick").model == "gpt-4o-mini"


def test_strategy_can_be_changed_at_run_time(service, fake):
    assert service.complete(MSGS, route="summarize", max_tokens=50).model == "gpt-4o-mini"
    set_strategy("summarize", "priority")
    assert service.complete(MSGS, route="summarize", priority="high").provider == "anthropic"
    with pytest.raises(ValueError, match="Unknown strategy"):
        set_strategy("summarize", "fastest")


def test_conversation_sticks_to_the_provider_of_its_first_turn(service, fake):
    fake.enqueue(FakeReply(status=500))
    first = service.complete(MSGS, route="summarize", conversation_id="c1")
    assert first.provider == "anthropic"
    again = service.complete(MSGS, route="summarize", conversation_id="c1")
    assert again.provider == "anthropic" and not again.fallback_used
    other = service.complete(MSGS, route="summarize", conversation_id="c2")
    assert other.provider == "openai"


def test_direct_model_bypasses_routing_and_prompt_caching_blocks(service, fake):
    doc = "The handbook. " * 50
    service.complete(MSGS, model="claude-sonnet", system="You review code.", documents=[doc])
    body = fake.requests[-1].body
    assert body["system"][0]["text"] == "You review code."
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    service.complete(MSGS, model="gpt-4o", system="You review code.", documents=[doc])
    body = fake.requests[-1].body
    assert [m["role"] for m in body["messages"]] == ["system", "system", "user"]


def test_prompt_cache_tokens_and_savings_are_tracked(service, fake):
    fake.enqueue(FakeReply(input_tokens=100, cached_tokens=2000, output_tokens=10))
    answer = service.complete(MSGS, model="claude-sonnet", documents=["doc " * 2000])
    event = Event.objects.get(tracking_id=answer.tracking_id)
    assert event.cache_read_tokens == 2000
    # Saved: 2000 cache reads at $3.00 instead of $0.30 / MTok.
    assert event.cost_saved_usd == 2000 * (Decimal("3e-6") - Decimal("0.3e-6"))


@pytest.mark.django_db(transaction=True)  # the sync recorder writes from a thread on a loop
def test_async_complete_and_streams(service, fake):
    async def scenario():
        fake.enqueue(FakeReply(status=500))
        answer = await service.acomplete(MSGS, route="summarize", feature="async")
        text = "".join([t async for t in service.astream(MSGS, route="review")])
        return answer, text

    answer, text = asyncio.run(scenario())
    flush()  # async calls are written off the loop
    assert answer.provider == "anthropic" and answer.fallback_used
    assert text == "Hello from the fake provider."
    sync_text = "".join(service.stream(MSGS, route="summarize"))
    assert sync_text == "Hello from the fake provider."
    streamed = Event.objects.filter(streamed=True)
    assert streamed.count() == 2
    assert all(e.cost_usd is not None and e.source == "service" for e in streamed)


@pytest.mark.django_db(transaction=True)  # bookkeeping runs in a worker thread
def test_async_complete_does_its_cache_io_off_the_event_loop(fake):
    class Watched:
        """The response cache, noting every call made on a running event loop."""

        def __init__(self, cache):
            self.cache, self.on_loop = cache, []

        def __getattr__(self, name):
            def call(*args, **kwargs):
                try:
                    asyncio.get_running_loop()
                    self.on_loop.append(name)
                except RuntimeError:
                    pass
                return getattr(self.cache, name)(*args, **kwargs)

            return call

    with service_settings(fake, RESPONSE_CACHE={"alias": "default", "ttl": 60}):
        service = LLMService()
        service.response_cache = watched = Watched(service.response_cache)

        async def twice():
            first = await service.acomplete(MSGS, route="summarize", conversation_id="c1")
            return first, await service.acomplete(MSGS, route="summarize", conversation_id="c1")

        first, second = asyncio.run(twice())
        flush()
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert watched.on_loop == []


def test_stream_falls_back_before_the_first_token(service, fake):
    fake.enqueue(FakeReply(status=503))
    assert "".join(service.stream(MSGS, route="summarize")) == "Hello from the fake provider."
    assert served_models(fake) == ["gpt-4o-mini", "claude-sonnet-4-6"]
    # The streamed attempt's event is recorded when the stream ends, outside the attempt:
    # it still carries its attempt number.
    events = Event.objects.order_by("fallback_attempt")
    assert [(e.status, e.source, e.fallback_attempt, e.streamed) for e in events] == [
        ("ERROR", "service", 0, True),
        ("SUCCESS", "service", 1, True),
    ]


def test_runaway_loop_through_the_service_stops_at_the_budget(service, fake):
    ledger.clear_cache()
    teams.forget()
    team = Team.objects.create(name="Agents", slug="agents")
    budget = Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.01"))
    fake.default_reply = FakeReply(input_tokens=1000, output_tokens=1000)  # ~$0.00075
    sent = 0
    with pytest.raises(BudgetExceeded):
        for _ in range(100):
            service.complete(MSGS, route="summarize", team="agents", max_tokens=1000)
            sent += 1
    counter = budget.current_counter()
    per_call = 1000 * Decimal("0.15e-6") + 1000 * Decimal("0.6e-6")
    assert fake.request_count == sent
    assert counter.spent == sent * per_call <= budget.limit_usd + per_call
    assert Event.objects.filter(status="BUDGET_EXCEEDED", source="service").count() == 1


def test_bad_requests_are_rejected_clearly(service):
    with pytest.raises(ValueError, match="role"):
        service.complete([{"role": "robot", "content": "hi"}], route="summarize")
    with pytest.raises(ValueError, match="max_tokens"):
        service.complete(MSGS, route="summarize", max_tokens=0)
    with pytest.raises(KeyError, match="Unknown route"):
        service.complete(MSGS, route="nope")
    with pytest.raises(TypeError, match="Unknown argument"):
        service.complete(MSGS, route="summarize", colour="blue")


def test_error_classification():
    request = httpx.Request("POST", "https://api.openai.com/v1/chat/completions")
    assert classify(openai.APIConnectionError(request=request)) == "retry"
    assert classify(ValueError("x")) == "fatal"


def test_health_reports_circuit_state(service, fake):
    for _ in range(3):
        service.breaker.record_failure("anthropic/claude-sonnet-4-6")
    health = service.health()
    assert health["anthropic/claude-sonnet-4-6"]["state"] == "open"
    assert health["openai/gpt-4o-mini"]["state"] == "closed"
    json.dumps(health)


# -- over HTTP -------------------------------------------------------------------------


@pytest.fixture
def api_key(db):
    from fluxgate_django.models import ApiKey

    team = Team.objects.create(name="Search", slug="search")
    _, secret = ApiKey.objects.create_key(team=team, name="ci")
    return team, secret


def test_http_complete_with_an_api_key(service, fake, client, api_key):
    team, secret = api_key
    fake.enqueue(FakeReply(status=500))
    response = client.post(
        "/fluxgate/api/complete/",
        {"messages": MSGS, "route": "summarize", "feature": "summarize", "user": "u9"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["provider"], body["fallback_used"]) == ("anthropic", True)
    assert [a["outcome"] for a in body["attempts"]] == ["error", "success"]
    events = Event.objects.order_by("fallback_attempt")
    assert [(e.team_id, e.feature, e.end_user_id) for e in events] == [
        (team.id, "summarize", "u9"),
        (team.id, "summarize", "u9"),
    ]


def test_http_complete_validation_and_errors(service, fake, client, api_key):
    team, secret = api_key
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    post = lambda body: client.post(  # noqa: E731
        "/fluxgate/api/complete/", body, content_type="application/json", **auth
    )
    bad = post({"messages": [{"role": "robot", "content": "x"}], "route": "nope"})
    assert bad.status_code == 400
    assert "messages" in bad.json() or "route" in bad.json()
    assert post({"messages": MSGS}).json() == {"route": ["Give a route or a model."]}
    assert post({"messages": MSGS, "route": "summarize", "max_tokens": -1}).status_code == 400
    assert post({"messages": MSGS, "route": "summarize", "team": "other"}).status_code == 403
    fake.enqueue(FakeReply(status=500), FakeReply(status=500))
    down = post({"messages": MSGS, "route": "summarize"})
    assert down.status_code == 503 and len(down.json()["attempts"]) == 2
    fake.enqueue(FakeReply(status=400, error_message="bad tool schema"))
    assert post({"messages": MSGS, "route": "summarize"}).status_code == 400
    ledger.clear_cache()
    teams.forget()
    Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.000001"))
    blocked = post({"messages": MSGS, "route": "summarize", "max_tokens": 500})
    assert blocked.status_code == 402 and blocked.json()["code"] == "budget_exceeded"
    assert client.post(
        "/fluxgate/api/complete/", {}, content_type="application/json"
    ).status_code in (
        401,
        403,
    )


def test_http_metrics_health_and_strategy(service, fake, client, api_key, django_user_model):
    _, secret = api_key
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    fake.enqueue(FakeReply(status=500))
    for _ in range(3):
        client.post(
            "/fluxgate/api/complete/",
            {"messages": MSGS, "route": "summarize"},
            content_type="application/json",
            **auth,
        )
    metrics = client.get("/fluxgate/api/metrics/?minutes=30", **auth).json()
    rows = {(r["provider"], r["model"]): r for r in metrics["providers"]}
    openai_row = rows[("openai", "gpt-4o-mini")]
    assert (openai_row["requests"], openai_row["failures"]) == (3, 1)
    assert openai_row["error_rate"] == round(1 / 3, 4)
    assert rows[("anthropic", "claude-sonnet-4-6")]["requests"] == 1
    assert openai_row["p95_latency_ms"] >= openai_row["p50_latency_ms"] > 0
    assert client.get("/fluxgate/api/metrics/?minutes=0", **auth).status_code == 400

    health = client.get("/fluxgate/api/health/", **auth).json()
    assert health["circuits"]["openai/gpt-4o-mini"]["state"] == "closed"

    # Only staff change strategies; the value is validated.
    body = {"route": "summarize", "strategy": "cost"}
    assert (
        client.put("/fluxgate/api/config/strategy/", body, "application/json", **auth).status_code
        == 403
    )
    staff = django_user_model.objects.create_superuser("ops", "ops@example.com", "pw")
    client.force_login(staff)
    assert client.put("/fluxgate/api/config/strategy/", body, "application/json").status_code == 200
    wrong = client.put(
        "/fluxgate/api/config/strategy/",
        {"route": "summarize", "strategy": "fastest"},
        "application/json",
    )
    assert wrong.status_code == 400 and "strategy" in wrong.json()
    assert client.get("/fluxgate/api/config/strategy/").json()["summarize"] == "cost"


def test_openai_compatible_provider_with_its_reported_cost(fake):
    providers = {
        "openrouter": {"type": "openai", "api_key": "sk-or-test", "base_url": fake.openai_base_url}
    }
    with service_settings(fake, PROVIDERS=providers):
        fake.enqueue(FakeReply(input_tokens=500, output_tokens=50, usage_extra={"cost": 0.00042}))
        answer = LLMService().complete(MSGS, model="openrouter/meta-llama/llama-3.1-70b-instruct")
    assert (answer.provider, answer.cost) == ("openrouter", Decimal("0.00042"))
    event = Event.objects.get(tracking_id=answer.tracking_id)
    assert (event.provider, event.model, event.cost_source) == (
        "openrouter",
        "meta-llama/llama-3.1-70b-instruct",
        CostSource.PROVIDER_REPORTED.value,
    )


@pytest.mark.django_db(transaction=True)  # the sync recorder writes from a thread on a loop
def test_gemini_route_with_fallback(fake):
    pytest.importorskip("google.genai", reason="google-genai is not installed")
    providers = {
        "openai": {"api_key": "sk-test", "base_url": fake.openai_base_url},
        "gemini": {"api_key": "test-gemini-key", "base_url": fake.gemini_base_url},
    }
    routes = {"translate": {"strategy": "ordered", "models": ["gemini-2.5-flash", "gpt-4o-mini"]}}
    with service_settings(fake, PROVIDERS=providers, ROUTES=routes):
        service = LLMService()
        fake.enqueue(FakeReply(input_tokens=1000, output_tokens=200, reasoning_tokens=50))
        answer = service.complete(MSGS, route="translate", system="Translate to French.")
        assert (answer.provider, answer.content) == ("gemini", "Hello from the fake provider.")
        assert answer.usage.output_tokens == 250 and answer.cost > 0
        assert (answer.model, answer.finish_reason) == ("gemini-2.5-flash", "STOP")
        assert fake.requests[-1].body["systemInstruction"]["parts"][0]["text"] == (
            "Translate to French."
        )
        fake.enqueue(FakeReply(status=503))
        fallback = service.complete(MSGS, route="translate")
        assert fallback.provider == "openai" and fallback.fallback_used

        async def both():
            text = "".join([t async for t in service.astream(MSGS, route="translate")])
            return text, await service.acomplete(MSGS, route="translate")

        text, async_answer = asyncio.run(both())
        flush()  # async calls are written off the loop
    assert text == "Hello from the fake provider." and async_answer.provider == "gemini"
    assert set(Event.objects.values_list("provider", flat=True)) == {"gemini", "openai"}
