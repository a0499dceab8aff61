"""The gateway's OpenAI API (``fluxgate/v1/``) through the stock ``openai`` SDK, served by
uvicorn (``tests/gateway_server.py``) in front of the bundled fake provider.

What a user relies on: ``OpenAI(base_url=".../fluxgate/v1", api_key="fg_live_...")``
just works — the request goes upstream as sent (but the resolved model, and the provider's
key instead of theirs), the answer comes back as the provider sent it, errors keep their
status and body — and every call is an event of the key's team with its exact cost,
refused with the SDK's usual errors when a budget, the key or its allowed models say no.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from fluxgate_django.models import Budget, Event, SpendCounter
from fluxgate_django.pricing import calculate_cost
from fluxgate_django.records import Usage
from fluxgate_django.testing import FakeReply
from fluxgate_django.testing import fake_provider as fake_module

from .helpers import fluxgate_overrides

# The gateway and gateway_server fixtures; a transactional test (the server's own
# connections must see what the test writes).
pytest_plugins = ["tests.gateway_server"]
pytestmark = pytest.mark.django_db(transaction=True)

MSGS = [{"role": "user", "content": "Summarise the minutes of the meeting."}]
#: SDK-FACTS' reference: gpt-4o, 1000 prompt (200 cached) + 500 output.
REFERENCE = {"input_tokens": 1000, "cached_tokens": 200, "output_tokens": 500}
REFERENCE_COST = Decimal("0.00725")
#: Fields the fake makes new for every answer (ids, clocks).
_FRESH = {"id", "created", "created_at", "completed_at", "item_id", "request_id"}


def fresh_less(value: Any) -> Any:
    """``value`` without the fields that differ between two answers to the same request."""
    if isinstance(value, dict):
        return {k: fresh_less(v) for k, v in value.items() if k not in _FRESH}
    if isinstance(value, list):
        return [fresh_less(v) for v in value]
    return value


def direct(fake) -> openai.OpenAI:
    """A client of the fake provider itself, to compare the gateway's answers with."""
    return openai.OpenAI(api_key="sk-direct", base_url=fake.openai_base_url, max_retries=0)


def price(model: str, **tokens: int) -> Decimal:
    cost = calculate_cost("openai", model, Usage(**tokens)).usd
    assert cost is not None
    return cost


# -- passthrough ----------------------------------------------------------------------------


def test_a_chat_call_passes_through_exactly_and_is_the_teams_event_at_its_exact_cost(gateway):
    fake = gateway.fake
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    image = (
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8Dw"
        "HwAFAAH/iZk9HQAAAABJRU5ErkJggg=="
    )
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is on this picture?"},
                {"type": "image_url", "image_url": {"url": image}},
            ],
        },
    ]
    arguments: dict[str, Any] = {
        "model": "gpt-4o",
        "messages": messages,
        "tools": tools,
        "response_format": {"type": "json_object"},
        "temperature": 0.25,
        "max_tokens": 600,
        # A field no SDK knows yet goes upstream as sent.
        "extra_body": {"x_future_option": {"depth": 2, "modes": ["a", "b"]}},
    }
    fake.enqueue(FakeReply(**REFERENCE), FakeReply(**REFERENCE))

    raw = gateway.openai().chat.completions.with_raw_response.create(**arguments)
    answer = raw.parse()
    expected = direct(fake).chat.completions.create(**arguments)

    through, straight = fake.requests
    assert through.body == straight.body  # every field, the unknown one included
    assert through.body["x_future_option"] == {"depth": 2, "modes": ["a", "b"]}
    assert fresh_less(answer.model_dump()) == fresh_less(expected.model_dump())
    assert answer.usage.prompt_tokens_details.cached_tokens == 200
    # The provider's key went upstream; the caller's FluxGate key went nowhere.
    assert through.headers["authorization"] == f"Bearer {gateway.upstream_openai_key}"
    assert gateway.secret not in json.dumps(through.headers)

    (event,) = gateway.events()
    assert raw.headers["X-FluxGate-Tracking-Id"] == str(event.tracking_id)
    assert (event.team_id, event.source, event.provider, event.model, event.operation) == (
        gateway.team.pk,
        "gateway",
        "openai",
        "gpt-4o",
        "chat",
    )
    assert (event.input_tokens, event.cache_read_tokens, event.output_tokens) == (1000, 200, 500)
    assert event.cost_usd == REFERENCE_COST
    assert event.cost_usd == price(
        "gpt-4o", input_tokens=1000, cache_read_tokens=200, output_tokens=500
    )
    assert event.metadata["api_key"] == gateway.key.prefix
    assert event.latency_ms > 0 and not event.streamed


def test_the_async_client_works_the_same(gateway):
    gateway.fake.enqueue(FakeReply(**REFERENCE))

    async def call() -> Any:
        async with gateway.openai(asynchronous=True) as client:
            return await client.chat.completions.create(model="gpt-4o", messages=MSGS)

    answer = asyncio.run(call())
    assert answer.choices[0].message.content == "Hello from the fake provider."
    (event,) = gateway.events()
    assert (event.source, event.cost_usd) == ("gateway", REFERENCE_COST)


def test_a_stream_is_priced_from_usage_asked_upstream_and_the_usage_chunk_is_not_shown(gateway):
    fake = gateway.fake
    reply = FakeReply(**REFERENCE, chunk_delay=0.01)
    fake.enqueue(reply, reply)

    chunks = list(
        gateway.openai().chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)
    )
    # What the fake sends a caller who asks for usage: the same chunks, and the usage one.
    expected = list(
        direct(fake).chat.completions.create(
            model="gpt-4o", messages=MSGS, stream=True, stream_options={"include_usage": True}
        )
    )

    through, _ = fake.requests
    assert through.body["stream_options"] == {"include_usage": True}  # asked for the caller
    assert all(chunk.choices for chunk in chunks)  # the usage chunk was not shown
    assert expected[-1].usage is not None and not expected[-1].choices
    assert [fresh_less(c.model_dump()) for c in chunks] == [
        fresh_less(c.model_dump()) for c in expected[:-1]
    ]
    (event,) = gateway.events()
    assert event.streamed and event.status == "SUCCESS" and event.finish_reason == "stop"
    assert event.cost_usd == REFERENCE_COST
    assert event.time_to_first_token_ms is not None and event.stream_duration_ms > 0
    assert event.metadata.get("stream_completed") is None  # read to its end


def test_a_stream_that_asks_for_usage_gets_its_usage_chunk(gateway):
    gateway.fake.enqueue(FakeReply(**REFERENCE))

    async def call() -> list[Any]:
        async with gateway.openai(asynchronous=True) as client:
            stream = await client.chat.completions.create(
                model="gpt-4o",
                messages=MSGS,
                stream=True,
                stream_options={"include_usage": True},
            )
            return [chunk async for chunk in stream]

    chunks = asyncio.run(call())
    assert chunks[-1].usage.prompt_tokens == 1000 and not chunks[-1].choices
    (event,) = gateway.events()
    assert event.streamed and event.cost_usd == REFERENCE_COST


def test_completions_responses_and_embeddings_pass_through_and_are_priced(gateway):
    fake, client = gateway.fake, gateway.openai()
    fake.default_reply = FakeReply(input_tokens=300, output_tokens=40)

    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="gpt-3.5-turbo-instruct", prompt="Say hi", stream=True
        )
        if c.choices
    )
    response = client.responses.create(model="gpt-4o-mini", input="Say hi")
    with client.responses.stream(model="gpt-4o-mini", input="Say hi") as stream:
        final = stream.get_final_response()
    vectors = client.embeddings.create(
        model="text-embedding-3-small", input=["one text", "and another"]
    )
    expected_vectors = direct(fake).embeddings.create(
        model="text-embedding-3-small", input=["one text", "and another"]
    )

    assert completion.choices[0].text == streamed == "Hello from the fake provider."
    assert response.output_text == final.output_text == "Hello from the fake provider."
    assert vectors.model_dump() == expected_vectors.model_dump()
    assert fake.requests[1].body["stream_options"] == {"include_usage": True}
    events = gateway.events()
    assert [(e.operation, e.streamed, e.model) for e in events] == [
        ("completion", False, "gpt-3.5-turbo-instruct"),
        ("completion", True, "gpt-3.5-turbo-instruct"),
        ("responses", False, "gpt-4o-mini"),
        ("responses", True, "gpt-4o-mini"),
        ("embeddings", False, "text-embedding-3-small"),
    ]
    assert {e.source for e in events} == {"gateway"}
    for event in events[:4]:
        assert event.cost_usd == price(event.model, input_tokens=300, output_tokens=40)
    assert events[4].input_tokens == vectors.usage.prompt_tokens
    assert events[4].cost_usd == price(
        "text-embedding-3-small", input_tokens=events[4].input_tokens
    )


def test_upstream_errors_keep_their_status_and_body(gateway):
    fake, client = gateway.fake, gateway.openai()
    for status, error in [
        (400, openai.BadRequestError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
    ]:
        fake.enqueue(FakeReply(status=status, error_message=f"upstream said {status}"))
        fake.enqueue(FakeReply(status=status, error_message=f"upstream said {status}"))
        with pytest.raises(error) as through:
            client.chat.completions.create(model="gpt-4o", messages=MSGS)
        with pytest.raises(error) as straight:
            direct(fake).chat.completions.create(model="gpt-4o", messages=MSGS)
        assert through.value.status_code == status
        assert through.value.body == straight.value.body
    assert [(e.status, e.cost_source) for e in gateway.events()] == [
        ("MALFORMED_REQUEST", "not-billed"),
        ("ERROR", "not-billed"),
        ("ERROR", "not-billed"),
    ]


# -- who may call, who pays -----------------------------------------------------------------


def test_bad_revoked_and_provider_keys_are_refused_and_nothing_is_sent(gateway):
    revoked = gateway.new_key()
    from fluxgate_django.models import ApiKey

    ApiKey.objects.get(prefix=revoked[: revoked.index("_", 8)]).revoke()
    for secret in ["fg_live_0000_not-a-key", revoked, "sk-proj-an-openai-key", ""]:
        client = gateway.openai(api_key=secret or "x")
        if not secret:
            client = openai.OpenAI(
                base_url=gateway.openai_url,
                api_key="x",
                max_retries=0,
                default_headers={"Authorization": ""},
            )
        with pytest.raises(openai.AuthenticationError) as refused:
            client.chat.completions.create(model="gpt-4o", messages=MSGS)
        assert "FluxGate" in str(refused.value)
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
    assert gateway.fake.request_count == 0
    assert gateway.events() == []


def test_a_key_calls_only_its_allowed_models(gateway):
    secret = gateway.new_key(allowed_models=["fast", "route:summarize"])
    client = gateway.openai(api_key=secret)
    for refused in ["gpt-4o", "route:claude-first", "claude-sonnet"]:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            client.chat.completions.create(model=refused, messages=MSGS)
        assert refused in str(denied.value)
    assert gateway.fake.request_count == 0

    # The alias, and the model it names, are allowed.
    client.chat.completions.create(model="fast", messages=MSGS)
    client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    assert [r.body["model"] for r in gateway.fake.requests] == ["gpt-4o-mini", "gpt-4o-mini"]
    listed = [m.id for m in client.models.list()]
    assert listed == ["fast", "route:summarize"]


def test_models_lists_the_sites_aliases_routes_and_their_models(gateway):
    listed = {m.id: m.owned_by for m in gateway.openai().models.list()}
    assert listed == {
        "fast": "fluxgate",
        "claude-sonnet": "fluxgate",
        "route:summarize": "fluxgate",
        "route:claude-first": "fluxgate",
        "gpt-4o-mini": "openai",
        "claude-sonnet-4-6": "anthropic",
    }


def test_attribution_comes_from_headers_or_the_requests_own_user(gateway):
    headers = {
        "X-FluxGate-Feature": "support-bot",
        "X-FluxGate-User": "customer-42",
        "X-FluxGate-Session": "s-1",
        "X-FluxGate-Conversation": "c-9",
        "X-FluxGate-Step": "draft",
        "X-FluxGate-Metadata": json.dumps({"ticket": 1234, "tier": "gold"}),
    }
    gateway.openai(default_headers=headers).chat.completions.create(
        model="gpt-4o", messages=MSGS, user="ignored-for-the-header"
    )
    gateway.openai().chat.completions.create(model="gpt-4o", messages=MSGS, user="end-user-7")
    with pytest.raises(openai.BadRequestError) as bad:
        gateway.openai(default_headers={"X-FluxGate-Metadata": "[1, 2]"}).embeddings.create(
            model="text-embedding-3-small", input="x"
        )
    assert "X-FluxGate-Metadata" in str(bad.value)

    tagged, plain = gateway.events()
    assert (
        tagged.feature,
        tagged.end_user_id,
        tagged.session_id,
        tagged.conversation_id,
        tagged.step,
    ) == ("support-bot", "customer-42", "s-1", "c-9", "draft")
    assert tagged.metadata == {"ticket": 1234, "tier": "gold", "api_key": gateway.key.prefix}
    assert (plain.end_user_id, plain.feature) == ("end-user-7", "")
    assert gateway.fake.request_count == 2  # (the malformed header: nothing sent)


# -- budgets --------------------------------------------------------------------------------

ENDPOINT_CALLS = {
    "chat": lambda c: c.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=800),
    "chat-stream": lambda c: list(
        c.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=800, stream=True)
    ),
    "completions": lambda c: c.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Say hi", max_tokens=800
    ),
    "responses": lambda c: c.responses.create(
        model="gpt-4o", input="Say hi", max_output_tokens=800
    ),
    "embeddings": lambda c: c.embeddings.create(
        model="text-embedding-3-large", input="a long text " * 400
    ),
}


@pytest.mark.parametrize("endpoint", list(ENDPOINT_CALLS))
def test_a_budget_stops_every_endpoint_before_anything_is_sent(gateway, endpoint):
    Budget.objects.create(team=gateway.team, period="day", limit_usd=Decimal("0.00001"))
    # Retries allowed: the refusal tells the SDK not to (one refusal, one event).
    client = gateway.openai(max_retries=2)
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as refused:
        ENDPOINT_CALLS[endpoint](client)
    assert time.monotonic() - started < 5
    assert "Budget exceeded" in str(refused.value) and "FluxGate" in str(refused.value)
    assert gateway.fake.request_count == 0
    (event,) = gateway.events()
    assert (event.status, event.source, event.cost_usd) == ("BUDGET_EXCEEDED", "gateway", 0)


def test_a_call_within_the_budget_is_settled_at_its_real_cost(gateway):
    budget = Budget.objects.create(team=gateway.team, period="day", limit_usd=Decimal("5"))
    gateway.fake.enqueue(FakeReply(**REFERENCE), FakeReply(**REFERENCE))
    client = gateway.openai()
    client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=600)
    list(client.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True))
    events = gateway.events()
    assert [e.cost_usd for e in events] == [REFERENCE_COST, REFERENCE_COST]
    counter = SpendCounter.objects.get(budget=budget)
    assert counter.spent == 2 * REFERENCE_COST and counter.reserved_units == 0


# -- aliases and routes ---------------------------------------------------------------------


def test_an_alias_resolves_and_the_event_says_what_was_asked(gateway):
    gateway.openai().chat.completions.create(model="fast", messages=MSGS)
    assert gateway.fake.last_request.body["model"] == "gpt-4o-mini"
    (event,) = gateway.events()
    assert (event.model, event.metadata["gateway_model"]) == ("gpt-4o-mini", "fast")


def test_a_route_falls_back_on_a_5xx_and_opens_the_failing_models_circuit(gateway):
    fake = gateway.fake
    routes = {"pair": {"strategy": "ordered", "models": ["gpt-4o-mini", "gpt-4o"]}}
    with fluxgate_overrides(ROUTES=routes, CIRCUIT_BREAKER={"failures": 1, "cooldown_seconds": 60}):
        fake.enqueue(FakeReply(status=503), FakeReply(**REFERENCE), FakeReply(**REFERENCE))
        client = gateway.openai()
        first = client.chat.completions.create(model="route:pair", messages=MSGS)
        second = client.chat.completions.create(model="route:pair", messages=MSGS)
    assert first.model == second.model == "gpt-4o"
    # The first call tried both; the second skipped gpt-4o-mini, its circuit open.
    assert [r.body["model"] for r in fake.requests] == ["gpt-4o-mini", "gpt-4o", "gpt-4o"]
    events = gateway.events()
    assert [(e.model, e.status, e.fallback_attempt) for e in events] == [
        ("gpt-4o-mini", "ERROR", 0),
        ("gpt-4o", "SUCCESS", 1),
        ("gpt-4o", "SUCCESS", 0),
    ]
    assert {e.metadata["gateway_model"] for e in events} == {"route:pair"}


def test_a_route_does_not_fall_back_on_the_callers_own_4xx(gateway):
    routes = {"pair": {"strategy": "ordered", "models": ["gpt-4o-mini", "gpt-4o"]}}
    with fluxgate_overrides(ROUTES=routes):
        gateway.fake.enqueue(FakeReply(status=400, error_message="bad tool schema"))
        with pytest.raises(openai.BadRequestError, match="bad tool schema"):
            gateway.openai().chat.completions.create(model="route:pair", messages=MSGS)
    assert gateway.fake.request_count == 1


def test_a_routes_answer_is_served_from_the_response_cache(gateway):
    with fluxgate_overrides(RESPONSE_CACHE={"alias": "default", "ttl": 60}):
        gateway.fake.enqueue(FakeReply(**REFERENCE))
        client = gateway.openai()
        first = client.chat.completions.with_raw_response.create(
            model="route:summarize", messages=MSGS
        )
        again = client.chat.completions.with_raw_response.create(
            model="route:summarize", messages=MSGS
        )
    assert again.headers["X-FluxGate-Cache"] == "hit"
    assert again.parse().model_dump() == first.parse().model_dump()
    assert gateway.fake.request_count == 1
    sent, hit = gateway.events()
    assert (sent.cost_usd, sent.cache_hit) == (price("gpt-4o-mini", **_ref_usage()), False)
    assert (hit.cache_hit, hit.cost_usd, hit.cost_saved_usd) == (True, 0, sent.cost_usd)
    assert (hit.source, hit.model, hit.team_id) == ("gateway", "gpt-4o-mini", gateway.team.pk)


def _ref_usage() -> dict[str, int]:
    return {"input_tokens": 1000, "cache_read_tokens": 200, "output_tokens": 500}


def test_a_route_falls_back_across_protocols_to_an_anthropic_model(gateway):
    fake = gateway.fake
    fake.enqueue(
        FakeReply(status=503),
        FakeReply(input_tokens=1000, output_tokens=500, cached_tokens=2000),
    )
    answer = gateway.openai().chat.completions.create(model="route:summarize", messages=MSGS)
    assert answer.choices[0].message.content == "Hello from the fake provider."
    assert answer.object == "chat.completion"
    assert fake.requests[1].path == "/v1/messages"
    assert fake.requests[1].body["model"] == "claude-sonnet-4-6"
    failed, served = gateway.events()
    assert (failed.provider, failed.status) == ("openai", "ERROR")
    assert (served.provider, served.operation, served.fallback_attempt) == (
        "anthropic",
        "messages",
        1,
    )
    assert (
        served.cost_usd
        == calculate_cost(
            "anthropic",
            "claude-sonnet-4-6",
            Usage(input_tokens=3000, cache_read_tokens=2000, output_tokens=500),
        ).usd
    )


def test_an_endpoint_without_a_counterpart_does_not_cross_protocols(gateway):
    # A route's model that can't take the call is passed over, before anything is sent...
    gateway.openai().embeddings.create(model="route:claude-first", input="x")
    assert [r.body["model"] for r in gateway.fake.requests] == ["gpt-4o-mini"]
    # ...and with no model left, the caller is told why.
    with (
        fluxgate_overrides(ROUTES={"claude": {"models": ["claude-sonnet"]}}),
        pytest.raises(openai.BadRequestError, match="can't fall back"),
    ):
        gateway.openai().embeddings.create(model="route:claude", input="x")
    assert gateway.fake.request_count == 1


# -- a caller that goes away ----------------------------------------------------------------


def test_a_caller_leaving_mid_stream_cancels_the_upstream_stream_and_is_recorded(
    gateway, monkeypatch
):
    produced: list[bytes] = []
    upstream_closed = threading.Event()
    original = fake_module._SSE_BUILDERS["chat"]

    def watched(turn: Any) -> Any:
        try:
            for event in original(turn):
                produced.append(event)
                yield event
        finally:
            upstream_closed.set()

    monkeypatch.setitem(fake_module._SSE_BUILDERS, "chat", watched)
    gateway.fake.enqueue(FakeReply(text=" ".join(["word"] * 60), chunk_delay=0.05))
    body = {"model": "gpt-4o", "messages": MSGS, "stream": True}
    headers = {"Authorization": f"Bearer {gateway.secret}"}
    with (
        httpx.Client(timeout=10) as http,
        http.stream(
            "POST", f"{gateway.openai_url}/chat/completions", json=body, headers=headers
        ) as stream,
    ):
        lines = stream.iter_lines()
        seen = [line for _, line in zip(range(6), lines, strict=False)]
    assert any(line.startswith("data: {") for line in seen)
    assert upstream_closed.wait(5)  # the fake's stream was cut off...
    assert len(produced) < 30  # ...long before its 60 words
    deadline = time.monotonic() + 5
    while not Event.objects.filter(team=gateway.team).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    (event,) = gateway.events()
    assert event.streamed and event.metadata["stream_completed"] is False
    # OpenAI reports a stream's usage at its end: cut short, its cost is unknown (and the
    # budget is charged the call's bound), never a silent 0.
    assert (event.cost_usd, event.cost_source) == (None, "stream-incomplete")
    assert event.time_to_first_token_ms is not None
