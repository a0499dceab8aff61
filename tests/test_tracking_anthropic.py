"""Tracked Anthropic clients: real ``anthropic`` SDK clients over HTTP to the loopback fake."""

from __future__ import annotations

import asyncio
import gc
from decimal import Decimal

import anthropic
import pytest

from fluxgate_django import Status, flush, track_anthropic, tracking_context
from fluxgate_django.models import Event
from fluxgate_django.testing import FakeReply

pytestmark = pytest.mark.django_db

MSGS = [{"role": "user", "content": "Review this pull request."}]
# claude-sonnet-4-6 per token: $3 / MTok input, $0.30 cache read, $3.75 5-minute cache
# write, $6 1-hour cache write, $15 output.
IN, READ, WRITE_5M, WRITE_1H, OUT = (
    Decimal("3e-6"),
    Decimal("0.3e-6"),
    Decimal("3.75e-6"),
    Decimal("6e-6"),
    Decimal("15e-6"),
)
CACHED_REPLY = dict(
    input_tokens=1000, cache_write_tokens=1000, cached_tokens=2000, output_tokens=500
)


def event_for(result) -> Event:
    return Event.objects.get(tracking_id=result.fluxgate.tracking_id)


@pytest.fixture
def client(anthropic_client):
    return track_anthropic(anthropic_client)


@pytest.fixture
def aclient(async_anthropic_client):
    return track_anthropic(async_anthropic_client)


def test_message_with_cache_tokens_is_priced_exactly(client, fake):
    fake.enqueue(FakeReply(**CACHED_REPLY))
    with tracking_context(feature="code-review", step="review"):
        msg = client.messages.create(model="claude-sonnet-4-6", max_tokens=600, messages=MSGS)
    assert msg.content[0].text
    assert isinstance(client, anthropic.Anthropic)
    assert msg.fluxgate.cost == Decimal("0.01485")
    assert msg.fluxgate.cost == 1000 * IN + 1000 * WRITE_5M + 2000 * READ + 500 * OUT
    event = event_for(msg)
    # FluxGate's input_tokens is the total input: Anthropic's uncached 1000 + cache tokens.
    assert (event.input_tokens, event.cache_write_tokens, event.cache_read_tokens) == (
        4000,
        1000,
        2000,
    )
    assert (event.provider, event.operation, event.model) == (
        "anthropic",
        "messages",
        "claude-sonnet-4-6",
    )
    assert (event.feature, event.step, event.finish_reason) == ("code-review", "review", "end_turn")


def test_one_hour_cache_writes_are_priced_at_their_own_rate(client, fake):
    # The fake reports 5-minute and 1-hour writes apart, as the API does.
    fake.enqueue(FakeReply(input_tokens=100, cache_write_tokens=200, cache_write_1h_tokens=1000))
    msg = client.messages.create(model="claude-sonnet-4-6", max_tokens=50, messages=MSGS)
    event = event_for(msg)
    assert event.cache_write_tokens == 1200
    assert event.cost_usd == 100 * IN + 200 * WRITE_5M + 1000 * WRITE_1H + event.output_tokens * OUT


@pytest.mark.parametrize(
    ("stop_reason", "status"),
    [
        ("max_tokens", Status.MAX_TOKENS),
        ("refusal", Status.CONTENT_FILTER),
        ("tool_use", Status.SUCCESS),
        ("stop_sequence", Status.SUCCESS),
    ],
)
def test_stop_reasons_map_to_statuses(client, fake, stop_reason, status):
    fake.enqueue(FakeReply(finish_reason=stop_reason))
    msg = client.messages.create(model="claude-sonnet-4-6", max_tokens=20, messages=MSGS)
    assert msg.fluxgate.status is status
    assert event_for(msg).finish_reason == stop_reason


def test_raw_event_stream(client, fake):
    fake.enqueue(FakeReply(**CACHED_REPLY, chunks=4))
    stream = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=600, messages=MSGS, stream=True
    )
    kinds = [event.type for event in stream]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    event = event_for(stream)
    assert event.streamed and event.cost_usd == Decimal("0.01485")
    assert (event.input_tokens, event.output_tokens) == (4000, 500)
    assert event.time_to_first_token_ms > 0


def test_messages_stream_helper(client, fake):
    fake.enqueue(FakeReply(**CACHED_REPLY, chunks=3))
    with (
        tracking_context(feature="chat"),
        client.messages.stream(model="claude-sonnet-4-6", max_tokens=600, messages=MSGS) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text
    assert stream.fluxgate.cost == Decimal("0.01485")
    event = Event.objects.get()
    assert (event.feature, event.streamed, event.finish_reason) == ("chat", True, "end_turn")


def test_messages_stream_left_early_is_recorded_once(client, fake):
    fake.enqueue(FakeReply(chunks=8))
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=600, messages=MSGS) as s:
        next(iter(s.text_stream))
    event = Event.objects.get()
    assert event.metadata == {"stream_completed": False}
    assert event.cost_usd is None and event.cost_source == "stream-incomplete"
    assert event.input_tokens > 0  # what message_start reported is kept
    assert s.fluxgate.tracking_id == event.tracking_id


def test_abandoned_raw_stream_is_recorded(client, fake):
    fake.enqueue(FakeReply(chunks=8))
    stream = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=600, messages=MSGS, stream=True
    )
    next(iter(stream))
    del stream
    gc.collect()
    assert Event.objects.count() == 1


@pytest.mark.parametrize(
    ("reply", "exc_type", "status"),
    [
        (FakeReply(status=400), anthropic.BadRequestError, "MALFORMED_REQUEST"),
        (FakeReply(status=429), anthropic.RateLimitError, "ERROR"),
        (FakeReply(status=500), anthropic.InternalServerError, "ERROR"),
        (FakeReply(status=529), anthropic.OverloadedError, "ERROR"),
        (FakeReply(drop_connection=True), anthropic.APIConnectionError, "ERROR"),
    ],
)
def test_errors_are_recorded_then_reraised_unchanged(client, fake, reply, exc_type, status):
    fake.enqueue(reply)
    with pytest.raises(exc_type) as info:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=MSGS)
    assert type(info.value) is exc_type
    event = Event.objects.get()
    assert (event.status, event.error_type) == (status, exc_type.__name__)


def test_untracked_endpoints_pass_through(client, fake):
    count = client.messages.count_tokens(model="claude-sonnet-4-6", messages=MSGS)
    assert count.input_tokens > 0
    assert Event.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_async_client(aclient, fake):
    async def scenario():
        fake.enqueue(FakeReply(**CACHED_REPLY))
        msg = await aclient.messages.create(
            model="claude-sonnet-4-6", max_tokens=600, messages=MSGS
        )
        fake.enqueue(FakeReply(**CACHED_REPLY, chunks=3))
        async with aclient.messages.stream(
            model="claude-sonnet-4-6", max_tokens=600, messages=MSGS
        ) as stream:
            await stream.get_final_message()
        fake.enqueue(FakeReply(status=529))
        with pytest.raises(anthropic.OverloadedError):
            await aclient.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MSGS)
        return msg, stream

    msg, stream = asyncio.run(scenario())
    flush()  # async calls are written off the loop
    assert msg.fluxgate.cost == Decimal("0.01485") == stream.fluxgate.cost
    assert Event.objects.count() == 3
    assert Event.objects.filter(status="ERROR", error_type="OverloadedError").count() == 1


def test_with_raw_response(client, fake):
    fake.enqueue(FakeReply(**CACHED_REPLY))
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=600, messages=MSGS
    )
    assert raw.http_response.status_code == 200
    message = raw.parse()
    assert message.fluxgate.cost == Decimal("0.01485")
    assert Event.objects.get().tracking_id == raw.fluxgate.tracking_id


@pytest.mark.django_db(transaction=True)
def test_async_with_raw_response(aclient, fake):
    async def scenario():
        fake.enqueue(FakeReply(**CACHED_REPLY))
        raw = await aclient.messages.with_raw_response.create(
            model="claude-sonnet-4-6", max_tokens=600, messages=MSGS
        )
        return await raw.parse()

    message = asyncio.run(scenario())
    flush()  # async calls are written off the loop
    assert message.fluxgate.cost == Decimal("0.01485")
    assert Event.objects.count() == 1


def test_with_streaming_response_is_counted_without_a_guessed_cost(client, fake):
    with client.messages.with_streaming_response.create(
        model="claude-sonnet-4-6", max_tokens=600, messages=MSGS
    ) as response:
        assert response.parse().content
    event = Event.objects.get()
    assert event.cost_usd is None and event.cost_source == "streaming-response"
