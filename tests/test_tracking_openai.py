"""Tracked OpenAI clients: real ``openai`` SDK clients over HTTP to the loopback fake."""

from __future__ import annotations

import asyncio
import gc
import logging
from decimal import Decimal

import openai
import pydantic
import pytest
from django.test import override_settings

from fluxgate_django import Status, flush, track_openai, tracking_context
from fluxgate_django.models import Event, Team
from fluxgate_django.records import Usage
from fluxgate_django.testing import FakeReply

pytestmark = pytest.mark.django_db

MSGS = [{"role": "user", "content": "Summarise the plot of Hamlet in one line."}]
# gpt-4o: $2.50 / MTok input, $1.25 / MTok cached input, $10 / MTok output.
GPT4O_IN, GPT4O_CACHED, GPT4O_OUT = Decimal("2.5e-6"), Decimal("1.25e-6"), Decimal("10e-6")


def event_for(result) -> Event:
    return Event.objects.get(tracking_id=result.fluxgate.tracking_id)


@pytest.fixture
def client(openai_client):
    return track_openai(openai_client)


@pytest.fixture
def aclient(async_openai_client):
    return track_openai(async_openai_client)


def test_tracked_client_is_the_same_drop_in_client(openai_client, fake):
    tracked = track_openai(openai_client)
    assert tracked is openai_client
    assert isinstance(tracked, openai.OpenAI)
    assert tracked.base_url == openai_client.base_url
    # An untracked endpoint passes straight through, and records nothing.
    fake.enqueue(FakeReply(status=404, error_message="no such file"))
    with pytest.raises(openai.NotFoundError):
        tracked.files.retrieve("file-123")
    assert Event.objects.count() == 0
    with pytest.raises(TypeError, match="openai SDK client"):
        track_openai(object())


def test_chat_completion_is_recorded_with_exact_cost(client, fake):
    fake.enqueue(
        FakeReply(
            input_tokens=1000,
            cached_tokens=200,
            output_tokens=500,
            served_model="gpt-4o-2024-08-06",
        )
    )
    with tracking_context(feature="summarize", user={"id": "u1", "email": "a@b.c"}):
        resp = client.chat.completions.create(model="gpt-4o", messages=MSGS)

    assert resp.choices[0].message.content  # the provider object, unchanged
    assert "fluxgate" not in resp.model_dump()  # our attribute never leaks into the payload
    result = resp.fluxgate
    assert result.status is Status.SUCCESS
    assert result.cost == Decimal("0.00725")
    assert result.cost == 800 * GPT4O_IN + 200 * GPT4O_CACHED + 500 * GPT4O_OUT
    assert result.error_message is None
    # What the call used and how it ended, as recorded (the LLM service reads these).
    assert result.usage == Usage(input_tokens=1000, output_tokens=500, cache_read_tokens=200)
    assert (result.model, result.finish_reason) == ("gpt-4o-2024-08-06", "stop")

    event = event_for(resp)
    assert event.created_at == result.created_at
    assert (event.provider, event.operation, event.source) == ("openai", "chat", "sdk")
    assert event.model == "gpt-4o-2024-08-06"
    assert event.requested_model == "gpt-4o"
    assert (event.input_tokens, event.cache_read_tokens, event.output_tokens) == (1000, 200, 500)
    assert event.cost_usd == Decimal("0.00725")
    assert event.cost_source == "genai-prices"
    assert (event.feature, event.end_user_id, event.end_user_email) == ("summarize", "u1", "a@b.c")
    assert event.finish_reason == "stop"
    assert event.latency_ms > 0 and not event.streamed
    assert event.content is None  # prompts are not stored unless STORE_CONTENT


def test_with_context_binds_attribution_and_wins_over_ambient(client, fake):
    team = Team.objects.create(name="Search", slug="search")
    bound = client.with_context(feature="chat", session_id="s1", metadata={"ab": "B"})
    assert isinstance(bound, openai.OpenAI) and bound is not client
    with tracking_context(feature="ambient", team="search", metadata={"page": "home"}):
        resp = bound.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
        plain = client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    event = event_for(resp)
    assert (event.feature, event.session_id) == ("chat", "s1")
    assert event.metadata == {"page": "home", "ab": "B"}
    assert event.team == team
    assert event_for(plain).feature == "ambient"
    # Copies of a tracked client stay tracked and keep their binding.
    again = bound.with_options(timeout=5).chat.completions.create(model="gpt-4o", messages=MSGS)
    assert event_for(again).feature == "chat"


def test_reasoning_tokens_are_inside_output(client, fake):
    fake.enqueue(FakeReply(input_tokens=100, output_tokens=1000, reasoning_tokens=800))
    resp = client.chat.completions.create(model="gpt-4o", messages=MSGS)
    event = event_for(resp)
    assert (event.output_tokens, event.reasoning_tokens) == (1000, 800)
    assert event.cost_usd == 100 * GPT4O_IN + 1000 * GPT4O_OUT


@pytest.mark.parametrize(
    ("finish_reason", "status"),
    [
        ("length", Status.MAX_TOKENS),
        ("content_filter", Status.CONTENT_FILTER),
        ("tool_calls", Status.SUCCESS),
        ("refusal", Status.CONTENT_FILTER),
    ],
)
def test_finish_reasons_map_to_statuses(client, fake, finish_reason, status):
    fake.enqueue(FakeReply(finish_reason=finish_reason))
    resp = client.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert resp.fluxgate.status is status
    assert event_for(resp).status == status.value


class Verdict(pydantic.BaseModel):
    sentiment: str
    score: float


def test_structured_output_parse_is_tracked(client, fake):
    fake.enqueue(FakeReply(text='{"sentiment": "positive", "score": 0.9}', output_tokens=12))
    resp = client.chat.completions.parse(model="gpt-4o", messages=MSGS, response_format=Verdict)
    assert resp.choices[0].message.parsed == Verdict(sentiment="positive", score=0.9)
    assert event_for(resp).output_tokens == 12


def test_legacy_completions_and_embeddings(client, fake):
    fake.enqueue(FakeReply(input_tokens=40, output_tokens=10))
    comp = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
    event = event_for(comp)
    assert (event.operation, event.input_tokens, event.output_tokens) == ("completion", 40, 10)
    # gpt-3.5-turbo-instruct: $1.50 / MTok in, $2 / MTok out.
    assert event.cost_usd == 40 * Decimal("1.5e-6") + 10 * Decimal("2e-6")

    fake.enqueue(FakeReply(input_tokens=1000))
    emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(emb.data) == 2
    event = event_for(emb)
    assert (event.operation, event.input_tokens, event.output_tokens) == ("embeddings", 1000, 0)
    assert event.cost_usd == 1000 * Decimal("0.02e-6")


def test_responses_create_and_parse(client, fake):
    fake.enqueue(FakeReply(input_tokens=2000, cached_tokens=1000, output_tokens=300))
    resp = client.responses.create(model="gpt-4o", input="Write a haiku")
    assert resp.output_text
    event = event_for(resp)
    assert (event.operation, event.finish_reason) == ("responses", "completed")
    assert event.cost_usd == 1000 * GPT4O_IN + 1000 * GPT4O_CACHED + 300 * GPT4O_OUT

    fake.enqueue(FakeReply(text='{"sentiment": "neutral", "score": 0.5}'))
    parsed = client.responses.parse(model="gpt-4o", input="Judge", text_format=Verdict)
    assert parsed.output_parsed == Verdict(sentiment="neutral", score=0.5)
    assert event_for(parsed).operation == "responses"

    fake.enqueue(FakeReply(finish_reason="max_output_tokens", output_tokens=5))
    truncated = client.responses.create(model="gpt-4o", input="Long essay", max_output_tokens=5)
    assert truncated.fluxgate.status is Status.MAX_TOKENS


def test_with_raw_response(client, fake):
    fake.enqueue(FakeReply(input_tokens=10, output_tokens=5))
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSGS)
    assert raw.http_response.status_code == 200
    completion = raw.parse()
    assert completion.fluxgate.tracking_id == raw.fluxgate.tracking_id
    assert event_for(completion).input_tokens == 10
    assert Event.objects.count() == 1


def test_streamed_chat_with_usage(client, fake):
    fake.enqueue(FakeReply(input_tokens=1000, cached_tokens=200, output_tokens=500, chunks=5))
    stream = client.chat.completions.create(
        model="gpt-4o", messages=MSGS, stream=True, stream_options={"include_usage": True}
    )
    assert isinstance(stream, openai.Stream)
    assert Event.objects.count() == 0  # not recorded until the stream ends
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text
    assert stream.fluxgate.cost == Decimal("0.00725")
    event = event_for(stream)
    assert event.streamed and event.finish_reason == "stop"
    assert event.time_to_first_token_ms > 0
    assert event.stream_duration_ms >= 0
    assert event.latency_ms >= event.time_to_first_token_ms
    assert Event.objects.count() == 1


def test_a_stream_without_include_usage_is_priced_and_shows_the_caller_no_extra_chunk(
    client, fake
):
    """``stream_options`` not set: FluxGate asks for usage (its only way to price a
    stream) and keeps the usage-only chunk it adds from the caller."""
    fake.enqueue(FakeReply(input_tokens=100, output_tokens=20, chunks=3))
    stream = client.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)
    chunks = list(stream)
    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}
    assert all(chunk.choices for chunk in chunks)  # (no usage-only chunk)
    assert all(chunk.usage is None for chunk in chunks)
    event = event_for(stream)
    # gpt-4o $2.50 / $10 per MTok: 100 * 2.5e-6 + 20 * 10e-6
    assert event.cost_usd == Decimal("0.00045") and event.cost_source == "genai-prices"
    # The same stream asked for with include_usage: the caller gets that chunk.
    fake.enqueue(FakeReply(input_tokens=100, output_tokens=20, chunks=3))
    asked = client.chat.completions.create(
        model="gpt-4o", messages=MSGS, stream=True, stream_options={"include_usage": True}
    )
    shown = list(asked)
    assert len(shown) == len(chunks) + 1 and shown[-1].usage.prompt_tokens == 100
    assert event_for(asked).cost_usd == event.cost_usd
    # include_usage=False is the caller's choice: sent as it is.
    fake.enqueue(FakeReply(chunks=3))
    refused = client.chat.completions.create(
        model="gpt-4o", messages=MSGS, stream=True, stream_options={"include_usage": False}
    )
    list(refused)
    assert fake.requests[-1].body["stream_options"] == {"include_usage": False}
    assert event_for(refused).cost_source == "usage-missing"


@pytest.mark.django_db(transaction=True)
def test_an_async_stream_without_include_usage_is_priced_too(aclient, fake):
    fake.enqueue(FakeReply(input_tokens=100, output_tokens=20, chunks=3))

    async def scenario():
        stream = await aclient.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)
        return stream, [chunk async for chunk in stream]

    stream, chunks = asyncio.run(scenario())
    flush()  # async calls are written off the loop
    assert chunks and all(chunk.choices for chunk in chunks)
    assert event_for(stream).cost_usd == Decimal("0.00045")  # as the sync stream above


def test_stream_usage_off_sends_the_request_as_it_is_and_records_it_unpriced(
    openai_client, fake, caplog
):
    client = track_openai(openai_client, stream_usage=False)
    fake.enqueue(FakeReply(chunks=3))
    with caplog.at_level(logging.WARNING, logger="fluxgate"):
        stream = client.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)
        list(stream)
    assert "stream_options" not in fake.requests[-1].body
    event = event_for(stream)
    assert event.cost_usd is None and event.cost_source == "usage-missing"
    assert stream.fluxgate.cost is None


def test_stream_time_to_first_token_and_duration(client, fake):
    fake.enqueue(FakeReply(delay=0.05, chunk_delay=0.02, chunks=4))
    stream = client.chat.completions.create(
        model="gpt-4o", messages=MSGS, stream=True, stream_options={"include_usage": True}
    )
    for _ in stream:
        pass
    event = event_for(stream)
    assert event.time_to_first_token_ms >= 45
    assert event.stream_duration_ms >= 50  # at least the gaps between the later chunks
    assert event.latency_ms >= event.time_to_first_token_ms + event.stream_duration_ms - 1


def test_stream_broken_off_early_is_recorded_once(client, fake):
    fake.enqueue(FakeReply(chunks=10))
    stream = client.chat.completions.create(
        model="gpt-4o", messages=MSGS, stream=True, stream_options={"include_usage": True}
    )
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    stream.close()
    event = event_for(stream)
    assert event.metadata == {"stream_completed": False}
    assert event.cost_usd is None and event.cost_source == "stream-incomplete"
    assert Event.objects.count() == 1


def test_abandoned_stream_is_recorded(client, fake):
    fake.enqueue(FakeReply(chunks=10))
    stream = client.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)
    next(iter(stream))
    del stream
    gc.collect()
    assert Event.objects.count() == 1
    # Even one never iterated at all.
    stream = client.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)
    del stream
    gc.collect()
    assert Event.objects.count() == 2


def test_stream_helpers_are_tracked(client, fake):
    fake.enqueue(FakeReply(input_tokens=30, output_tokens=7))
    with client.chat.completions.stream(model="gpt-4o", messages=MSGS) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content
    assert stream.fluxgate is not None
    fake.enqueue(FakeReply(input_tokens=50, output_tokens=9))
    with client.responses.stream(model="gpt-4o", input="hi") as rstream:
        response = rstream.get_final_response()
    assert response.output_text
    event = Event.objects.get(tracking_id=rstream.fluxgate.tracking_id)
    assert (event.operation, event.input_tokens, event.output_tokens) == ("responses", 50, 9)
    assert event.cost_usd == 50 * GPT4O_IN + 9 * GPT4O_OUT


@pytest.mark.parametrize(
    ("reply", "exc_type", "status"),
    [
        (
            FakeReply(status=400, error_message="bad param"),
            openai.BadRequestError,
            "MALFORMED_REQUEST",
        ),
        (FakeReply(status=429), openai.RateLimitError, "ERROR"),
        (FakeReply(status=500), openai.InternalServerError, "ERROR"),
        (FakeReply(drop_connection=True), openai.APIConnectionError, "ERROR"),
    ],
)
def test_provider_errors_are_recorded_then_reraised_unchanged(
    client, fake, reply, exc_type, status
):
    fake.enqueue(reply)
    with tracking_context(feature="chat"), pytest.raises(exc_type) as info:
        client.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert type(info.value) is exc_type
    event = Event.objects.get()
    assert (event.status, event.feature, event.error_type) == (status, "chat", exc_type.__name__)
    assert info.value.fluxgate.tracking_id == event.tracking_id  # the error carries its record
    assert event.cost_usd is None and event.cost_source == "not-billed"


def test_timeout_is_recorded(client, fake):
    fake.enqueue(FakeReply(delay=1.0))
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.1).chat.completions.create(model="gpt-4o", messages=MSGS)
    event = Event.objects.get()
    assert event.error_type == "APITimeoutError" and 80 <= event.latency_ms < 900


def test_api_keys_are_redacted_from_error_messages(client, fake):
    fake.enqueue(
        FakeReply(status=401, error_message="Incorrect API key provided: sk-proj-abcdef123456.")
    )
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o", messages=MSGS)
    event = Event.objects.get()
    assert "abcdef123456" not in event.error_message
    assert "sk-***" in event.error_message


def test_unknown_model_costs_none_not_zero(client, fake):
    fake.enqueue(FakeReply(input_tokens=10, output_tokens=10))
    resp = client.chat.completions.create(model="my-finetune-v3", messages=MSGS)
    assert resp.fluxgate.cost is None
    event = event_for(resp)
    assert event.cost_usd is None and event.cost_source == "unknown"


@override_settings(FLUXGATE={"RECORDER": "sync", "RAISE_ERRORS": True, "STORE_CONTENT": True})
def test_store_content_keeps_prompt_and_completion(client, fake):
    resp = client.chat.completions.create(model="gpt-4o", messages=MSGS)
    content = event_for(resp).content
    assert content["request"]["messages"] == MSGS
    assert content["response"]["choices"][0]["message"]["content"]


def test_broken_bookkeeping_never_breaks_the_call(client, fake, monkeypatch, caplog):
    from fluxgate_django.recording.sync import SyncRecorder

    def explode(self, record):
        raise RuntimeError("recorder bug")

    monkeypatch.setattr(SyncRecorder, "record", explode)
    lenient = override_settings(FLUXGATE={"RECORDER": "sync", "RAISE_ERRORS": False})
    with lenient, caplog.at_level(logging.ERROR, logger="fluxgate"):
        resp = client.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert resp.choices[0].message.content
    assert "recorder bug" in caplog.text
    # Under tests (RAISE_ERRORS) the same bug is loud.
    with pytest.raises(RuntimeError, match="recorder bug"):
        client.chat.completions.create(model="gpt-4o", messages=MSGS)


# -- async ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_async_client_create_stream_and_error(aclient, fake):
    async def scenario():
        fake.enqueue(FakeReply(input_tokens=1000, cached_tokens=200, output_tokens=500))
        with tracking_context(feature="async-chat"):
            resp = await aclient.chat.completions.create(model="gpt-4o", messages=MSGS)
        fake.enqueue(FakeReply(input_tokens=1000, cached_tokens=200, output_tokens=500, chunks=4))
        stream = await aclient.chat.completions.create(
            model="gpt-4o", messages=MSGS, stream=True, stream_options={"include_usage": True}
        )
        async for _ in stream:
            pass
        fake.enqueue(FakeReply(status=503))
        with pytest.raises(openai.InternalServerError):
            await aclient.chat.completions.create(model="gpt-4o", messages=MSGS)
        return resp, stream

    resp, stream = asyncio.run(scenario())
    flush()  # async calls are written off the loop
    assert isinstance(aclient, openai.AsyncOpenAI)
    assert resp.fluxgate.cost == Decimal("0.00725") == stream.fluxgate.cost
    events = {e.tracking_id: e for e in Event.objects.all()}
    assert len(events) == 3
    assert events[resp.fluxgate.tracking_id].feature == "async-chat"
    assert events[stream.fluxgate.tracking_id].streamed
    assert Event.objects.filter(status="ERROR").count() == 1


@pytest.mark.django_db(transaction=True)
def test_async_stream_closed_early(aclient, fake):
    async def scenario():
        fake.enqueue(FakeReply(chunks=10))
        stream = await aclient.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)
        async for _ in stream:
            break
        await stream.close()
        return stream

    stream = asyncio.run(scenario())
    flush()  # async calls are written off the loop
    assert stream.fluxgate.status is Status.SUCCESS
    assert Event.objects.get().metadata == {"stream_completed": False}


@pytest.mark.django_db(transaction=True)
def test_concurrent_async_calls_keep_their_own_context(aclient, fake):
    async def one(i):
        with tracking_context(feature=f"f{i}", user={"id": f"u{i}"}):
            await asyncio.sleep(0.001 * (i % 3))
            resp = await aclient.chat.completions.create(model="gpt-4o", messages=MSGS)
            return i, resp.fluxgate.tracking_id

    async def scenario():
        return await asyncio.gather(*(one(i) for i in range(12)))

    results = asyncio.run(scenario())
    flush()  # async calls are written off the loop
    for i, tracking_id in results:
        event = Event.objects.get(tracking_id=tracking_id)
        assert (event.feature, event.end_user_id) == (f"f{i}", f"u{i}")


def test_parse_of_a_truncated_reply_records_the_billed_call(client, fake):
    fake.enqueue(FakeReply(text='{"sentiment": "pos', finish_reason="length", output_tokens=6))
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(model="gpt-4o", messages=MSGS, response_format=Verdict)
    event = Event.objects.get()
    assert (event.status, event.output_tokens, event.error_type) == (
        "MAX_TOKENS",
        6,
        "LengthFinishReasonError",
    )
    assert event.cost_usd > 0
