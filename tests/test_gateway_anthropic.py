"""The gateway's Anthropic API (``fluxgate/anthropic/``) through the stock ``anthropic``
SDK, served by uvicorn (``tests/gateway_server.py``) in front of the bundled fake provider.

``Anthropic(base_url=".../fluxgate/anthropic", api_key="fg_live_...")`` just works (the
SDK sends the key as ``x-api-key``): messages pass through, streams keep Anthropic's event
format, ``count_tokens`` is free, and every message is an event of the key's team at its
exact cost — cache reads and writes included — or refused with the SDK's usual errors.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import pytest

from fluxgate_django.models import Budget, Event
from fluxgate_django.pricing import calculate_cost
from fluxgate_django.records import Usage
from fluxgate_django.testing import FakeReply
from fluxgate_django.testing import fake_provider as fake_module

from .test_gateway_openai import fresh_less

# The gateway and gateway_server fixtures; a transactional test (the server's own
# connections must see what the test writes).
pytest_plugins = ["tests.gateway_server"]
pytestmark = pytest.mark.django_db(transaction=True)

MSGS = [{"role": "user", "content": "Review this diff, please."}]
MODEL = "claude-sonnet-4-6"
#: SDK-FACTS' reference: 1000 input + 1000 cache write + 2000 cache read + 500 output.
CACHED = {
    "input_tokens": 1000,
    "cache_write_tokens": 1000,
    "cached_tokens": 2000,
    "output_tokens": 500,
}
CACHED_COST = Decimal("0.01485")


def direct(fake) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="sk-ant-direct", base_url=fake.anthropic_base_url, max_retries=0
    )


def test_a_message_passes_through_exactly_and_is_priced_with_its_cache_tokens(gateway):
    fake = gateway.fake
    arguments: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 600,
        "system": [
            {"type": "text", "text": "You review code.", "cache_control": {"type": "ephemeral"}}
        ],
        "messages": MSGS,
        "tools": [
            {
                "name": "read_file",
                "description": "Read a file",
                "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
            }
        ],
        "metadata": {"user_id": "dev-17"},
        "extra_body": {"x_future_option": [1, 2, 3]},
        "extra_headers": {"anthropic-beta": "some-beta-2099-01-01"},
    }
    fake.enqueue(FakeReply(**CACHED), FakeReply(**CACHED))
    raw = gateway.anthropic().messages.with_raw_response.create(**arguments)
    message = raw.parse()
    expected = direct(fake).messages.create(**arguments)

    through, straight = fake.requests
    assert through.body == straight.body
    assert through.headers["anthropic-version"] == straight.headers["anthropic-version"]
    assert through.headers["anthropic-beta"] == "some-beta-2099-01-01"
    assert through.headers["x-api-key"] == gateway.upstream_anthropic_key
    assert gateway.secret not in json.dumps(through.headers)
    assert fresh_less(message.model_dump()) == fresh_less(expected.model_dump())

    (event,) = gateway.events()
    assert raw.headers["X-FluxGate-Tracking-Id"] == str(event.tracking_id)
    assert (event.source, event.provider, event.model, event.operation) == (
        "gateway",
        "anthropic",
        MODEL,
        "messages",
    )
    assert (event.input_tokens, event.cache_write_tokens, event.cache_read_tokens) == (
        4000,
        1000,
        2000,
    )
    assert event.cost_usd == CACHED_COST
    assert (
        event.cost_usd
        == calculate_cost(
            "anthropic",
            MODEL,
            Usage(
                input_tokens=4000,
                cache_write_tokens=1000,
                cache_read_tokens=2000,
                output_tokens=500,
            ),
        ).usd
    )
    assert (event.team_id, event.end_user_id) == (gateway.team.pk, "dev-17")


def test_a_stream_keeps_anthropics_event_format_and_is_priced(gateway):
    fake = gateway.fake
    fake.enqueue(FakeReply(**CACHED, chunk_delay=0.01), FakeReply(**CACHED))
    events = list(
        gateway.anthropic().messages.create(model=MODEL, max_tokens=600, messages=MSGS, stream=True)
    )
    expected = list(
        direct(fake).messages.create(model=MODEL, max_tokens=600, messages=MSGS, stream=True)
    )
    assert [e.type for e in events][:2] == ["message_start", "content_block_start"]
    assert [fresh_less(e.model_dump()) for e in events] == [
        fresh_less(e.model_dump()) for e in expected
    ]
    (event,) = gateway.events()
    assert event.streamed and event.finish_reason == "end_turn"
    assert event.cost_usd == CACHED_COST
    assert event.time_to_first_token_ms is not None


def test_the_async_client_and_the_stream_helper(gateway):
    gateway.fake.default_reply = FakeReply(input_tokens=800, output_tokens=40)

    async def calls() -> tuple[Any, Any]:
        async with gateway.anthropic(asynchronous=True) as client:
            message = await client.messages.create(model=MODEL, max_tokens=100, messages=MSGS)
            async with client.messages.stream(model=MODEL, max_tokens=100, messages=MSGS) as stream:
                final = await stream.get_final_message()
            return message, final

    message, final = asyncio.run(calls())
    assert message.content[0].text == final.content[0].text == "Hello from the fake provider."
    cost = calculate_cost("anthropic", MODEL, Usage(input_tokens=800, output_tokens=40)).usd
    assert [(e.streamed, e.cost_usd) for e in gateway.events()] == [(False, cost), (True, cost)]


def test_count_tokens_passes_through_free_even_over_budget(gateway):
    Budget.objects.create(team=gateway.team, period="day", limit_usd=Decimal("0.000001"))
    counted = gateway.anthropic().messages.count_tokens(model=MODEL, messages=MSGS)
    expected = direct(gateway.fake).messages.count_tokens(model=MODEL, messages=MSGS)
    assert counted.input_tokens == expected.input_tokens > 0
    assert gateway.fake.requests[0].path == "/v1/messages/count_tokens"
    assert gateway.events() == []  # not an LLM call: no event, nothing charged


def test_a_budget_stops_a_message_before_anything_is_sent(gateway):
    Budget.objects.create(team=gateway.team, period="day", limit_usd=Decimal("0.00001"))
    client = gateway.anthropic(max_retries=2)
    with pytest.raises(anthropic.RateLimitError, match="Budget exceeded"):
        client.messages.create(model=MODEL, max_tokens=800, messages=MSGS)
    with (
        pytest.raises(anthropic.RateLimitError, match="Budget exceeded"),
        client.messages.stream(model=MODEL, max_tokens=800, messages=MSGS) as stream,
    ):
        stream.get_final_message()
    assert gateway.fake.request_count == 0
    assert [(e.status, e.source) for e in gateway.events()] == [
        ("BUDGET_EXCEEDED", "gateway"),
        ("BUDGET_EXCEEDED", "gateway"),
    ]


def test_keys_and_allowed_models(gateway):
    for secret in ["fg_live_0000_not-a-key", "sk-ant-a-provider-key"]:
        with pytest.raises(anthropic.AuthenticationError, match="FluxGate"):
            gateway.anthropic(api_key=secret).messages.create(
                model=MODEL, max_tokens=10, messages=MSGS
            )
    limited = gateway.new_key(allowed_models=["claude-haiku-4-5"])
    with pytest.raises(anthropic.PermissionDeniedError, match=MODEL):
        gateway.anthropic(api_key=limited).messages.create(
            model=MODEL, max_tokens=10, messages=MSGS
        )
    assert gateway.fake.request_count == 0
    # An allowed model, with the key sent as a bearer token (the SDK's auth_token).
    import anthropic as sdk

    client = sdk.Anthropic(base_url=gateway.anthropic_url, auth_token=limited, max_retries=0)
    client.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=MSGS)
    assert gateway.fake.last_request.headers["x-api-key"] == gateway.upstream_anthropic_key
    assert "authorization" not in gateway.fake.last_request.headers


def test_upstream_errors_keep_their_status_and_body(gateway):
    fake = gateway.fake
    for status, error in [(400, anthropic.BadRequestError), (529, anthropic.OverloadedError)]:
        fake.enqueue(FakeReply(status=status), FakeReply(status=status))
        with pytest.raises(error) as through:
            gateway.anthropic().messages.create(model=MODEL, max_tokens=10, messages=MSGS)
        with pytest.raises(error) as straight:
            direct(fake).messages.create(model=MODEL, max_tokens=10, messages=MSGS)
        assert through.value.status_code == status
        assert fresh_less(through.value.body) == fresh_less(straight.value.body)
    assert [e.status for e in gateway.events()] == ["MALFORMED_REQUEST", "ERROR"]


def test_a_route_answers_an_anthropic_call_with_an_openai_model(gateway):
    fake = gateway.fake
    fake.default_reply = FakeReply(input_tokens=900, output_tokens=30)
    client = gateway.anthropic()
    message = client.messages.create(model="route:summarize", max_tokens=100, messages=MSGS)
    with client.messages.stream(model="route:summarize", max_tokens=100, messages=MSGS) as stream:
        text = "".join(stream.text_stream)
    assert message.type == "message" and message.content[0].text == text
    assert text == "Hello from the fake provider."
    assert [(r.path, r.body["model"]) for r in fake.requests] == [
        ("/v1/chat/completions", "gpt-4o-mini"),
        ("/v1/chat/completions", "gpt-4o-mini"),
    ]
    assert fake.requests[1].body["stream_options"] == {"include_usage": True}
    cost = calculate_cost("openai", "gpt-4o-mini", Usage(input_tokens=900, output_tokens=30)).usd
    events = gateway.events()
    assert [(e.provider, e.operation, e.streamed, e.cost_usd) for e in events] == [
        ("openai", "chat", False, cost),
        ("openai", "chat", True, cost),
    ]


def test_a_caller_leaving_mid_stream_cancels_upstream_and_the_event_keeps_what_was_used(
    gateway, monkeypatch
):
    produced: list[bytes] = []
    upstream_closed = threading.Event()
    original = fake_module._SSE_BUILDERS["messages"]

    def watched(turn: Any) -> Any:
        try:
            for event in original(turn):
                produced.append(event)
                yield event
        finally:
            upstream_closed.set()

    monkeypatch.setitem(fake_module._SSE_BUILDERS, "messages", watched)
    gateway.fake.enqueue(
        FakeReply(
            text=" ".join(["word"] * 60), input_tokens=1200, cached_tokens=300, chunk_delay=0.05
        )
    )
    body = {"model": MODEL, "max_tokens": 500, "messages": MSGS, "stream": True}
    headers = {"x-api-key": gateway.secret, "anthropic-version": "2023-06-01"}
    with httpx.Client(timeout=10) as http:
        url = f"{gateway.anthropic_url}/v1/messages"
        with http.stream("POST", url, json=body, headers=headers) as stream:
            seen = [line for _, line in zip(range(8), stream.iter_lines(), strict=False)]
    assert "event: message_start" in seen
    assert upstream_closed.wait(5) and len(produced) < 30
    deadline = time.monotonic() + 5
    while not Event.objects.filter(team=gateway.team).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    (event,) = gateway.events()
    assert event.metadata["stream_completed"] is False
    # What message_start said was used is kept; cut short, the call has no price.
    assert (event.input_tokens, event.cache_read_tokens) == (1500, 300)
    assert (event.cost_usd, event.cost_source) == (None, "stream-incomplete")
