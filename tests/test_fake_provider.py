"""Tests for the loopback fake LLM provider, driven through the real SDK clients.

Needs no Django: run with ``python -m pytest tests/test_fake_provider.py -p no:django``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from pydantic import BaseModel

from fluxgate_django.testing import DEFAULT_TEXT, FakeProvider, FakeReply, FakeRequest

USER: Any = [{"role": "user", "content": "What is the capital of France?"}]  # 30 chars -> 8 tokens


class City(BaseModel):
    name: str
    country: str


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def fake(provider: FakeProvider) -> Iterator[FakeProvider]:
    provider.reset()
    yield provider
    provider.reset()


@pytest.fixture(scope="module")
def oai(provider: FakeProvider) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(api_key="sk-test", base_url=provider.openai_base_url, max_retries=0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def ant(provider: FakeProvider) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(
        api_key="sk-ant-test", base_url=provider.anthropic_base_url, max_retries=0
    )
    yield client
    client.close()


# -- basics -------------------------------------------------------------------------------


def test_import_is_pure_stdlib() -> None:
    code = (
        "import sys; import fluxgate_django.testing.fake_provider as m; "
        "bad = [n for n in ('django', 'openai', 'anthropic', 'httpx', 'httpx2', 'pydantic') "
        "if n in sys.modules]; print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "[]"


def test_urls_and_health(fake: FakeProvider) -> None:
    assert fake.url.startswith("http://127.0.0.1:")
    assert fake.openai_base_url == fake.url + "/v1"
    assert fake.anthropic_base_url == fake.url
    with urllib.request.urlopen(fake.url + "/health", timeout=5) as resp:
        assert resp.status == 200
        assert json.loads(resp.read()) == {"status": "ok"}
    head = urllib.request.Request(fake.url + "/health", method="HEAD")
    with urllib.request.urlopen(head, timeout=5) as resp:
        assert resp.status == 200
    assert fake.request_count == 0  # health checks are not recorded


def test_main_serves_until_terminated() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fluxgate_django.testing.fake_provider", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("Fake LLM provider listening on http://127.0.0.1:")
        url = first.rsplit(" ", 1)[-1].strip()
        with urllib.request.urlopen(url + "/health", timeout=5) as resp:
            assert resp.status == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "Warning" not in err


def test_not_started_url_raises() -> None:
    with pytest.raises(RuntimeError):
        _ = FakeProvider().url


def test_start_stop_context_manager() -> None:
    with FakeProvider() as fake:
        assert fake.running
        client = openai.OpenAI(api_key="sk-test", base_url=fake.openai_base_url, max_retries=0)
        with client:
            assert client.chat.completions.create(model="m", messages=USER).choices
    assert not fake.running
    fake.stop()  # idempotent


def test_unknown_path_404_in_provider_format(fake: FakeProvider) -> None:
    req = urllib.request.Request(
        fake.url + "/v1/nope", data=b"{}", headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=5)
    assert exc.value.code == 404
    body = json.loads(exc.value.read())
    assert body["error"]["type"] == "invalid_request_error"
    assert "/v1/nope" in body["error"]["message"]

    req = urllib.request.Request(
        fake.url + "/v1/nope",
        data=b"{}",
        headers={"Content-Type": "application/json", "anthropic-version": "2023-06-01"},
    )
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=5)
    assert exc.value.code == 404
    body = json.loads(exc.value.read())
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"


def test_unknown_path_through_sdk(oai: openai.OpenAI, fake: FakeProvider) -> None:
    with pytest.raises(openai.NotFoundError):
        oai.post("/does-not-exist", cast_to=object, body={})


# -- OpenAI chat --------------------------------------------------------------------------


def test_chat_create_usage_exact(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.enqueue(
        FakeReply(
            text="Paris.",
            input_tokens=1000,
            cached_tokens=200,
            output_tokens=500,
            reasoning_tokens=300,
        )
    )
    r = oai.chat.completions.create(model="gpt-4o", messages=USER)
    assert r.choices[0].message.content == "Paris."
    assert r.choices[0].finish_reason == "stop"
    assert r.model == "gpt-4o"
    u = r.usage
    assert u is not None
    assert u.prompt_tokens == 1000
    assert u.completion_tokens == 500
    assert u.total_tokens == 1500
    assert u.prompt_tokens_details is not None
    assert u.prompt_tokens_details.cached_tokens == 200
    assert u.completion_tokens_details is not None
    assert u.completion_tokens_details.reasoning_tokens == 300


def test_chat_derived_tokens_and_request_recording(fake: FakeProvider, oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert r.choices[0].message.content == DEFAULT_TEXT
    assert r.usage is not None
    assert r.usage.prompt_tokens == 8  # ceil(30 / 4)
    assert r.usage.completion_tokens == 8  # ceil(29 / 4)
    req = fake.last_request
    assert isinstance(req, FakeRequest)
    assert req.method == "POST"
    assert req.path == "/v1/chat/completions"
    assert req.model == "gpt-4o-mini"
    assert req.body["messages"] == USER
    assert req.headers["authorization"] == "Bearer sk-test"
    assert req.headers["content-type"] == "application/json"
    assert fake.request_count == 1
    assert fake.requests == [req]


def test_chat_derived_includes_cache_and_reasoning_and_cap(
    fake: FakeProvider, oai: openai.OpenAI
) -> None:
    fake.enqueue(FakeReply(cached_tokens=100, reasoning_tokens=50))
    r = oai.chat.completions.create(model="o3", messages=USER)
    assert r.usage is not None
    assert r.usage.prompt_tokens == 108
    assert r.usage.completion_tokens == 58
    fake.enqueue(FakeReply(reasoning_tokens=50))
    r = oai.chat.completions.create(model="o3", messages=USER, max_completion_tokens=20)
    assert r.usage is not None
    assert r.usage.completion_tokens == 20
    r = oai.chat.completions.create(model="gpt-4o", messages=USER, max_tokens=3)
    assert r.usage is not None
    assert r.usage.completion_tokens == 3


def test_chat_finish_reason_and_served_model(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.enqueue(
        FakeReply(finish_reason="length", served_model="gpt-4o-2024-08-06"),
        FakeReply(finish_reason="content_filter"),
        FakeReply(finish_reason="max_tokens"),
    )
    r = oai.chat.completions.create(model="gpt-4o", messages=USER)
    assert r.choices[0].finish_reason == "length"
    assert r.model == "gpt-4o-2024-08-06"
    r = oai.chat.completions.create(model="gpt-4o", messages=USER)
    assert r.choices[0].finish_reason == "content_filter"
    assert r.model == "gpt-4o"
    r = oai.chat.completions.create(model="gpt-4o", messages=USER)
    assert r.choices[0].finish_reason == "length"


def test_chat_stream_with_usage(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.enqueue(
        FakeReply(text="one two three", input_tokens=40, cached_tokens=10, output_tokens=3)
    )
    stream = oai.chat.completions.create(
        model="gpt-4o", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    deltas = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert deltas == ["one", " two", " three"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == 40
    assert last.usage.completion_tokens == 3
    assert last.usage.total_tokens == 43
    assert last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == 10
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_without_usage(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.enqueue(FakeReply(text="abcdefghij", chunks=3))
    chunks = list(oai.chat.completions.create(model="gpt-4o", messages=USER, stream=True))
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert deltas == ["abc", "def", "ghij"]


def test_chat_stream_chunk_delay(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.enqueue(FakeReply(text="a b c", chunk_delay=0.02))
    t0 = time.perf_counter()
    arrivals = []
    with oai.chat.completions.create(
        model="gpt-4o", messages=USER, stream=True, stream_options={"include_usage": True}
    ) as stream:
        for _chunk in stream:
            arrivals.append(time.perf_counter() - t0)
    assert len(arrivals) == 6  # role, 3 deltas, finish, usage
    assert arrivals[-1] - arrivals[0] >= 0.08
    # keep-alive still works after a chunked reply
    assert oai.chat.completions.create(model="gpt-4o", messages=USER).choices


def test_chat_parse_pydantic(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.enqueue(FakeReply(text='{"name": "Paris", "country": "France"}', input_tokens=50))
    r = oai.chat.completions.parse(model="gpt-4o", messages=USER, response_format=City)
    parsed = r.choices[0].message.parsed
    assert parsed == City(name="Paris", country="France")
    assert r.usage is not None
    assert r.usage.prompt_tokens == 50
    assert fake.last_request is not None
    assert fake.last_request.body["response_format"]["type"] == "json_schema"


def test_chat_parse_refusal(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.enqueue(FakeReply(text="I can't help with that.", finish_reason="refusal"))
    r = oai.chat.completions.parse(model="gpt-4o", messages=USER, response_format=City)
    msg = r.choices[0].message
    assert msg.parsed is None
    assert msg.refusal == "I can't help with that."


def test_chat_parse_length_raises(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.enqueue(FakeReply(text='{"name": "Pa', finish_reason="length"))
    with pytest.raises(openai.LengthFinishReasonError):
        oai.chat.completions.parse(model="gpt-4o", messages=USER, response_format=City)


def test_chat_completions_stream_helper(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.enqueue(
        FakeReply(text='{"name": "Paris", "country": "France"}', input_tokens=12, output_tokens=9)
    )
    with oai.chat.completions.stream(
        model="gpt-4o",
        messages=USER,
        response_format=City,
        stream_options={"include_usage": True},
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "content.delta" in kinds
    assert "content.done" in kinds
    assert final.choices[0].message.parsed == City(name="Paris", country="France")
    assert final.usage is not None
    assert final.usage.prompt_tokens == 12
    assert final.usage.completion_tokens == 9


def test_chat_n_choices(fake: FakeProvider, oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model="gpt-4o", messages=USER, n=2)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.usage is not None
    assert r.usage.completion_tokens == 16


def test_with_raw_response_headers(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.enqueue(FakeReply(headers={"x-custom": "yes"}))
    raw = oai.chat.completions.with_raw_response.create(model="gpt-4o", messages=USER)
    assert raw.headers["x-custom"] == "yes"
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.parse().choices[0].message.content == DEFAULT_TEXT


# -- OpenAI legacy completions ------------------------------------------------------------


def test_completions_create(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.enqueue(FakeReply(text=" world", input_tokens=5, output_tokens=2))
    r = oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="hello")
    assert r.choices[0].text == " world"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (5, 2, 7)
    assert fake.last_request is not None
    assert fake.last_request.path == "/v1/completions"


def test_completions_stream(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.enqueue(FakeReply(text="a b", output_tokens=2))
    chunks = list(
        oai.completions.create(
            model="gpt-3.5-turbo-instruct",
            prompt="hello",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "a b"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2


# -- OpenAI responses ---------------------------------------------------------------------


def test_responses_create_usage(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.enqueue(
        FakeReply(
            text="Paris.",
            input_tokens=900,
            cached_tokens=300,
            output_tokens=120,
            reasoning_tokens=100,
        )
    )
    r = oai.responses.create(model="gpt-5", input="Capital of France?")
    assert r.output_text == "Paris."
    assert r.status == "completed"
    assert r.incomplete_details is None
    assert r.model == "gpt-5"
    u = r.usage
    assert u is not None
    assert u.input_tokens == 900
    assert u.input_tokens_details.cached_tokens == 300
    assert u.output_tokens == 120
    assert u.output_tokens_details.reasoning_tokens == 100
    assert u.total_tokens == 1020


def test_responses_incomplete(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.enqueue(FakeReply(finish_reason="length"), FakeReply(finish_reason="content_filter"))
    r = oai.responses.create(model="gpt-5", input="x", max_output_tokens=4)
    assert r.status == "incomplete"
    assert r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None
    assert r.usage.output_tokens == 4
    r = oai.responses.create(model="gpt-5", input="x")
    assert r.status == "incomplete"
    assert r.incomplete_details is not None
    assert r.incomplete_details.reason == "content_filter"


def test_responses_stream(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.enqueue(FakeReply(text="Hi there you", input_tokens=20, cached_tokens=5, output_tokens=3))
    with oai.responses.stream(model="gpt-5", input="hello") as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    for expected in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert expected in types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == ["Hi", " there", " you"]
    assert final.output_text == "Hi there you"
    assert final.usage is not None
    assert final.usage.input_tokens == 20
    assert final.usage.input_tokens_details.cached_tokens == 5
    assert final.usage.output_tokens == 3


def test_responses_stream_raw_incomplete(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.enqueue(FakeReply(finish_reason="max_tokens", output_tokens=7))
    events = list(oai.responses.create(model="gpt-5", input="hello", stream=True))
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.status == "incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.usage is not None
    assert last.response.usage.output_tokens == 7


def test_responses_parse(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.enqueue(FakeReply(text='{"name": "Rome", "country": "Italy"}'))
    r = oai.responses.parse(model="gpt-5", input="Capital of Italy?", text_format=City)
    assert r.output_parsed == City(name="Rome", country="Italy")
    assert r.usage is not None
    assert fake.last_request is not None
    assert fake.last_request.body["text"]["format"]["type"] == "json_schema"


def test_responses_stream_with_text_format(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.enqueue(FakeReply(text='{"name": "Rome", "country": "Italy"}'))
    with oai.responses.stream(model="gpt-5", input="x", text_format=City) as stream:
        for _event in stream:
            pass
        final = stream.get_final_response()
    assert final.output_parsed == City(name="Rome", country="Italy")


# -- OpenAI embeddings --------------------------------------------------------------------


def test_embeddings_default_base64(fake: FakeProvider, oai: openai.OpenAI) -> None:
    r = oai.embeddings.create(model="text-embedding-3-small", input=["hello world", "bye"])
    assert fake.last_request is not None
    assert fake.last_request.body["encoding_format"] == "base64"
    assert len(r.data) == 2
    assert [d.index for d in r.data] == [0, 1]
    assert all(len(d.embedding) == 8 and isinstance(d.embedding[0], float) for d in r.data)
    assert r.usage.prompt_tokens == 3 + 1
    assert r.usage.total_tokens == r.usage.prompt_tokens

    floats = oai.embeddings.create(
        model="text-embedding-3-small", input=["hello world", "bye"], encoding_format="float"
    )
    assert [d.embedding for d in floats.data] == [d.embedding for d in r.data]


def test_embeddings_raw_base64_is_le_float32(fake: FakeProvider, oai: openai.OpenAI) -> None:
    r = oai.embeddings.create(
        model="text-embedding-3-small", input="abc", encoding_format="base64", dimensions=4
    )
    raw = r.data[0].embedding
    assert isinstance(raw, str)
    values = struct.unpack("<4f", base64.b64decode(raw))
    assert all(-1.0 <= v < 1.0 for v in values)


def test_embeddings_configured_usage(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.enqueue(FakeReply(input_tokens=77, served_model="text-embedding-3-small-v2"))
    r = oai.embeddings.create(model="text-embedding-3-small", input="abc")
    assert r.usage.prompt_tokens == 77
    assert r.model == "text-embedding-3-small-v2"


# -- Anthropic ----------------------------------------------------------------------------


def test_anthropic_create_usage(fake: FakeProvider, ant: anthropic.Anthropic) -> None:
    fake.enqueue(
        FakeReply(
            text="Paris.",
            input_tokens=1000,
            cache_write_tokens=1000,
            cached_tokens=2000,
            output_tokens=500,
        )
    )
    m = ant.messages.create(model="claude-sonnet-4-6", max_tokens=1024, messages=USER)
    assert m.content[0].type == "text"
    assert m.content[0].text == "Paris."
    assert m.stop_reason == "end_turn"
    assert m.model == "claude-sonnet-4-6"
    u = m.usage
    assert u.input_tokens == 1000
    assert u.cache_creation_input_tokens == 1000
    assert u.cache_read_input_tokens == 2000
    assert u.output_tokens == 500
    assert u.cache_creation is not None
    assert u.cache_creation.ephemeral_5m_input_tokens == 1000
    assert u.cache_creation.ephemeral_1h_input_tokens == 0
    req = fake.last_request
    assert req is not None
    assert req.path == "/v1/messages"
    # anthropic 2.x sends the key as a bearer token (older SDKs used x-api-key)
    auth = req.headers.get("x-api-key") or req.headers["authorization"].removeprefix("Bearer ")
    assert auth == "sk-ant-test"
    assert "anthropic-version" in req.headers


def test_anthropic_derived_tokens_exclude_cache(
    fake: FakeProvider, ant: anthropic.Anthropic
) -> None:
    fake.enqueue(FakeReply(cached_tokens=100, cache_write_1h_tokens=40))
    m = ant.messages.create(
        model="claude-sonnet-4-6", max_tokens=5, system="Be brief.", messages=USER
    )
    assert m.usage.input_tokens == 10  # ceil((30 + 8) / 4): cache not included
    assert m.usage.cache_read_input_tokens == 100
    assert m.usage.cache_creation_input_tokens == 40
    assert m.usage.cache_creation is not None
    assert m.usage.cache_creation.ephemeral_1h_input_tokens == 40
    assert m.usage.output_tokens == 5  # capped by max_tokens


def test_anthropic_stop_reason_mapping(fake: FakeProvider, ant: anthropic.Anthropic) -> None:
    fake.enqueue(FakeReply(finish_reason="length"), FakeReply(finish_reason="refusal"))
    m = ant.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=USER)
    assert m.stop_reason == "max_tokens"
    m = ant.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=USER)
    assert m.stop_reason == "refusal"


def test_anthropic_create_stream_raw_events(fake: FakeProvider, ant: anthropic.Anthropic) -> None:
    fake.enqueue(
        FakeReply(
            text="a b c", input_tokens=30, cached_tokens=20, cache_write_tokens=10, output_tokens=3
        )
    )
    events = list(
        ant.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=USER, stream=True)
    )
    types = [e.type for e in events]
    assert types[0] == "message_start"
    assert types[1] == "content_block_start"
    assert types.count("content_block_delta") == 3
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    start = events[0]
    assert start.type == "message_start"
    assert start.message.usage.input_tokens == 30
    assert start.message.usage.cache_read_input_tokens == 20
    assert start.message.usage.cache_creation_input_tokens == 10
    assert start.message.usage.output_tokens == 1
    delta = events[-2]
    assert delta.type == "message_delta"
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens == 3


def test_anthropic_stream_helper(fake: FakeProvider, ant: anthropic.Anthropic) -> None:
    fake.enqueue(
        FakeReply(
            text="Bonjour tout le monde",
            input_tokens=1000,
            cache_write_tokens=1000,
            cached_tokens=2000,
            output_tokens=500,
            served_model="claude-sonnet-4-6-20260101",
        )
    )
    with ant.messages.stream(model="claude-sonnet-4-6", max_tokens=1024, messages=USER) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == "Bonjour tout le monde"
    assert len(pieces) == 4
    assert final.model == "claude-sonnet-4-6-20260101"
    assert final.stop_reason == "end_turn"
    u = final.usage
    assert u.input_tokens == 1000
    assert u.cache_creation_input_tokens == 1000
    assert u.cache_read_input_tokens == 2000
    assert u.output_tokens == 500


def test_anthropic_count_tokens(fake: FakeProvider, ant: anthropic.Anthropic) -> None:
    r = ant.messages.count_tokens(model="claude-sonnet-4-6", messages=USER)
    assert r.input_tokens == 8


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exc"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_openai_errors(
    fake: FakeProvider, oai: openai.OpenAI, status: int, exc: type[Exception]
) -> None:
    fake.enqueue(FakeReply(status=status, error_message="boom"))
    with pytest.raises(exc) as info:
        oai.chat.completions.create(model="gpt-4o", messages=USER)
    err = info.value
    assert isinstance(err, openai.APIStatusError)
    assert err.status_code == status
    assert err.message.endswith("boom") or "boom" in err.message
    assert isinstance(err.body, dict)
    assert err.body["message"] == "boom"
    assert "type" in err.body and "code" in err.body and "param" in err.body


def test_openai_error_on_stream_request(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.enqueue(FakeReply(status=429))
    with pytest.raises(openai.RateLimitError) as info:
        oai.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("status", "exc", "err_type"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_anthropic_errors(
    fake: FakeProvider,
    ant: anthropic.Anthropic,
    status: int,
    exc: type[Exception],
    err_type: str,
) -> None:
    fake.enqueue(FakeReply(status=status))
    with pytest.raises(exc) as info:
        ant.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=USER)
    err = info.value
    assert isinstance(err, anthropic.APIStatusError)
    assert err.status_code == status
    assert isinstance(err.body, dict)
    assert err.body["type"] == "error"
    assert err.body["error"]["type"] == err_type


def test_529_is_internal_server_error_subclass(
    fake: FakeProvider, ant: anthropic.Anthropic
) -> None:
    fake.enqueue(FakeReply(status=529))
    with pytest.raises(anthropic.InternalServerError):
        ant.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=USER)


def test_drop_connection(fake: FakeProvider, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    fake.enqueue(FakeReply(drop_connection=True), FakeReply(drop_connection=True))
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model="gpt-4o", messages=USER)
    with pytest.raises(anthropic.APIConnectionError):
        ant.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=USER)
    assert fake.request_count == 2
    # the clients recover on a fresh connection
    assert oai.chat.completions.create(model="gpt-4o", messages=USER).choices
    assert ant.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=USER).content


def test_delay_timeout(fake: FakeProvider, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    fake.enqueue(FakeReply(delay=1.0), FakeReply(delay=1.0))
    t0 = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        oai.with_options(timeout=0.2).chat.completions.create(model="gpt-4o", messages=USER)
    with pytest.raises(anthropic.APITimeoutError):
        ant.with_options(timeout=0.2).messages.create(
            model="claude-sonnet-4-6", max_tokens=10, messages=USER
        )
    assert time.perf_counter() - t0 < 0.9


def test_delay_is_applied(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.enqueue(FakeReply(delay=0.15))
    t0 = time.perf_counter()
    oai.chat.completions.create(model="gpt-4o", messages=USER)
    assert time.perf_counter() - t0 >= 0.15


# -- control ------------------------------------------------------------------------------


def test_enqueue_order_across_paths_then_model_then_default(
    fake: FakeProvider, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    fake.on_model("gpt-4o", FakeReply(text="model-specific"))
    fake.enqueue(FakeReply(text="first"), FakeReply(text="second"), FakeReply(text="third"))
    assert fake.pending == 3
    r1 = oai.chat.completions.create(model="gpt-4o", messages=USER)
    m2 = ant.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=USER)
    r3 = oai.responses.create(model="gpt-4o", input="x")
    r4 = oai.chat.completions.create(model="gpt-4o", messages=USER)
    r5 = oai.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert r1.choices[0].message.content == "first"
    assert m2.content[0].type == "text"
    assert m2.content[0].text == "second"
    assert r3.output_text == "third"
    assert r4.choices[0].message.content == "model-specific"
    assert r5.choices[0].message.content == DEFAULT_TEXT
    assert [r.path for r in fake.requests] == [
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/responses",
        "/v1/chat/completions",
        "/v1/chat/completions",
    ]
    assert fake.pending == 0


def test_default_reply_and_reset(fake: FakeProvider, oai: openai.OpenAI) -> None:
    fake.default_reply = FakeReply(text="custom default")
    fake.on_model("gpt-4o", FakeReply(text="per model"))
    fake.enqueue(FakeReply(text="queued"))
    assert oai.chat.completions.create(model="x", messages=USER).choices[0].message.content == (
        "queued"
    )
    assert oai.chat.completions.create(model="x", messages=USER).choices[0].message.content == (
        "custom default"
    )
    fake.enqueue(FakeReply(text="left over"))
    fake.reset()
    assert fake.request_count == 0
    assert fake.pending == 0
    assert fake.default_reply.text == DEFAULT_TEXT
    r = oai.chat.completions.create(model="gpt-4o", messages=USER)
    assert r.choices[0].message.content == DEFAULT_TEXT


def test_concurrent_requests(fake: FakeProvider) -> None:
    from concurrent.futures import ThreadPoolExecutor

    fake.default_reply = FakeReply(delay=0.1)
    client = openai.OpenAI(api_key="sk-test", base_url=fake.openai_base_url, max_retries=0)
    with client, ThreadPoolExecutor(8) as pool:
        t0 = time.perf_counter()
        results = list(
            pool.map(
                lambda _: client.chat.completions.create(model="gpt-4o", messages=USER),
                range(8),
            )
        )
        elapsed = time.perf_counter() - t0
    assert len(results) == 8
    assert elapsed < 0.7  # served in parallel, not 8 x 0.1 s
    assert fake.request_count == 8


# -- async clients ------------------------------------------------------------------------


def test_async_openai(fake: FakeProvider) -> None:
    fake.enqueue(
        FakeReply(text="async hi", input_tokens=11, cached_tokens=4, output_tokens=2),
        FakeReply(text="x y", output_tokens=2),
        FakeReply(status=429),
    )

    async def run() -> None:
        async with openai.AsyncOpenAI(
            api_key="sk-test", base_url=fake.openai_base_url, max_retries=0
        ) as client:
            r = await client.chat.completions.create(model="gpt-4o", messages=USER)
            assert r.choices[0].message.content == "async hi"
            assert r.usage is not None
            assert r.usage.prompt_tokens == 11
            assert r.usage.prompt_tokens_details is not None
            assert r.usage.prompt_tokens_details.cached_tokens == 4
            stream = await client.chat.completions.create(
                model="gpt-4o",
                messages=USER,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [c async for c in stream]
            assert chunks[-1].usage is not None
            assert chunks[-1].usage.completion_tokens == 2
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(model="gpt-4o", messages=USER)
            async with client.responses.stream(model="gpt-5", input="hi") as rstream:
                async for _event in rstream:
                    pass
                final = await rstream.get_final_response()
            assert final.output_text == DEFAULT_TEXT
            emb = await client.embeddings.create(model="text-embedding-3-small", input="hi")
            assert len(emb.data[0].embedding) == 8

    asyncio.run(run())


def test_async_anthropic(fake: FakeProvider) -> None:
    fake.enqueue(
        FakeReply(text="async hi", input_tokens=7, cached_tokens=3, output_tokens=2),
        FakeReply(text="s t r", input_tokens=9, cache_write_tokens=6, output_tokens=3),
        FakeReply(status=529),
    )

    async def run() -> None:
        async with anthropic.AsyncAnthropic(
            api_key="sk-ant-test", base_url=fake.anthropic_base_url, max_retries=0
        ) as client:
            m = await client.messages.create(
                model="claude-sonnet-4-6", max_tokens=100, messages=USER
            )
            assert m.usage.input_tokens == 7
            assert m.usage.cache_read_input_tokens == 3
            async with client.messages.stream(
                model="claude-sonnet-4-6", max_tokens=100, messages=USER
            ) as stream:
                text = "".join([t async for t in stream.text_stream])
                final = await stream.get_final_message()
            assert text == "s t r"
            assert final.usage.input_tokens == 9
            assert final.usage.cache_creation_input_tokens == 6
            assert final.usage.output_tokens == 3
            with pytest.raises(anthropic.OverloadedError):
                await client.messages.create(
                    model="claude-sonnet-4-6", max_tokens=100, messages=USER
                )

    asyncio.run(run())


def test_async_concurrency(fake: FakeProvider) -> None:
    fake.default_reply = FakeReply(delay=0.1)

    async def run() -> float:
        async with openai.AsyncOpenAI(
            api_key="sk-test", base_url=fake.openai_base_url, max_retries=0
        ) as client:
            t0 = time.perf_counter()
            await asyncio.gather(
                *(client.chat.completions.create(model="gpt-4o", messages=USER) for _ in range(5))
            )
            return time.perf_counter() - t0

    assert asyncio.run(run()) < 0.45
