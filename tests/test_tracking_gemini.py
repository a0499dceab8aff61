"""Tracked Gemini clients: real ``google-genai`` clients over HTTP to the loopback fake."""

from __future__ import annotations

import asyncio
import gc
import http.server
import json
import threading
from decimal import Decimal

import pytest

genai = pytest.importorskip(
    "google.genai",
    reason="google-genai is not installed (pip install 'django-fluxgate[gemini]')",
)
from google.genai import errors, types  # noqa: E402

from fluxgate_django import (  # noqa: E402
    BudgetExceeded,
    Status,
    flush,
    ledger,
    teams,
    track_gemini,
    tracking_context,
)
from fluxgate_django.estimate import choices, input_tokens_bound, max_output_tokens  # noqa: E402
from fluxgate_django.models import Budget, Event, SpendCounter, Team  # noqa: E402
from fluxgate_django.testing import FakeReply  # noqa: E402
from fluxgate_django.tracking.gemini import (  # noqa: E402
    GeminiStream,
    normalise_gemini_usage,
    request_body,
)

from .helpers import fluxgate_overrides  # noqa: E402

pytestmark = pytest.mark.django_db

FLASH = "gemini-2.5-flash"
PROMPT = "Summarise the release notes."
# gemini-2.5-flash (genai-prices, provider "google"), per token: $0.30 / MTok input,
# $0.03 / MTok cached input, $2.50 / MTok output — thinking tokens are billed as output.
IN, CACHED, OUT = Decimal("0.30e-6"), Decimal("0.03e-6"), Decimal("2.50e-6")
# 1000 prompt tokens of which 200 cached, 300 candidate + 200 thought tokens:
#   800 x $0.30/M + 200 x $0.03/M + (300 + 200) x $2.50/M
#   = $0.000240 + $0.000006 + $0.001250 = $0.001496
REPLY = dict(input_tokens=1000, cached_tokens=200, output_tokens=300, reasoning_tokens=200)
COST = Decimal("0.001496")


def event_for(result) -> Event:
    return Event.objects.get(tracking_id=result.fluxgate.tracking_id)


@pytest.fixture
def client(gemini_client):
    return track_gemini(gemini_client)


def test_generate_content_is_priced_exactly_with_thoughts_and_cached_tokens(client, fake):
    fake.enqueue(FakeReply(**REPLY))
    with tracking_context(feature="release-notes", step="summarise"):
        response = client.models.generate_content(model=FLASH, contents=PROMPT)
    assert isinstance(client, genai.Client)
    assert isinstance(response, types.GenerateContentResponse)
    assert response.text == "Hello from the fake provider."
    assert COST == 800 * IN + 200 * CACHED + 500 * OUT
    assert response.fluxgate.cost == COST
    assert response.fluxgate.status is Status.SUCCESS
    event = event_for(response)
    assert event.cost_usd == COST and event.cost_source == "genai-prices"
    # Gemini's prompt count includes the cached tokens; thoughts are output, and reasoning.
    assert (event.input_tokens, event.cache_read_tokens) == (1000, 200)
    assert (event.output_tokens, event.reasoning_tokens) == (500, 200)
    assert (event.provider, event.operation, event.model, event.requested_model) == (
        "gemini",
        "generate_content",
        FLASH,
        FLASH,
    )
    assert (event.feature, event.step) == ("release-notes", "summarise")
    assert event.finish_reason == "STOP"
    assert event.latency_ms > 0 and not event.streamed
    request = fake.last_request
    assert request.path.endswith(f"/models/{FLASH}:generateContent") and not request.stream
    assert request.headers["x-goog-api-key"] == "test-gemini-key"


def test_tiered_price_of_a_long_prompt(client, fake):
    # gemini-2.5-pro: $1.25 / $10 per MTok up to 200k prompt tokens, $2.50 / $15 above,
    # for the whole prompt: 250_000 x $2.50/M + 1000 x $15/M = $0.625 + $0.015.
    fake.enqueue(FakeReply(input_tokens=250_000, output_tokens=1000))
    long_call = client.models.generate_content(model="models/gemini-2.5-pro", contents=PROMPT)
    assert long_call.fluxgate.cost == Decimal("0.640")
    fake.enqueue(FakeReply(input_tokens=1000, output_tokens=1000))
    short_call = client.models.generate_content(model="gemini-2.5-pro", contents=PROMPT)
    assert short_call.fluxgate.cost == Decimal("0.01125")  # 1000 x $1.25/M + 1000 x $10/M
    assert event_for(long_call).requested_model == "gemini-2.5-pro"  # "models/" dropped


def test_usage_normalisation_counts_tool_use_prompt_tokens_as_input():
    usage = types.GenerateContentResponseUsageMetadata(
        prompt_token_count=100,
        cached_content_token_count=40,
        tool_use_prompt_token_count=30,
        candidates_token_count=20,
        thoughts_token_count=10,
    )
    normalised = normalise_gemini_usage(usage)
    assert (normalised.input_tokens, normalised.cache_read_tokens) == (130, 40)
    assert (normalised.output_tokens, normalised.reasoning_tokens) == (30, 10)
    assert normalise_gemini_usage(types.GenerateContentResponseUsageMetadata()).total_tokens == 0
    assert normalise_gemini_usage(None) is None


@pytest.mark.parametrize(
    ("finish_reason", "status"),
    [
        ("STOP", Status.SUCCESS),
        ("MAX_TOKENS", Status.MAX_TOKENS),
        ("SAFETY", Status.CONTENT_FILTER),
        ("BLOCKLIST", Status.CONTENT_FILTER),
        ("PROHIBITED_CONTENT", Status.CONTENT_FILTER),
        ("SPII", Status.CONTENT_FILTER),
        ("RECITATION", Status.RECITATION),
        ("MALFORMED_FUNCTION_CALL", Status.ERROR),
        ("MISSING_THOUGHT_SIGNATURE", Status.MALFORMED_REQUEST),
    ],
)
def test_finish_reasons_map_to_statuses(client, fake, finish_reason, status):
    fake.enqueue(FakeReply(finish_reason=finish_reason, input_tokens=100, output_tokens=10))
    response = client.models.generate_content(model=FLASH, contents=PROMPT)
    assert response.candidates[0].finish_reason == finish_reason
    assert response.fluxgate.status is status
    event = event_for(response)
    assert (event.status, event.finish_reason) == (status.value, finish_reason)
    assert event.cost_usd == 100 * IN + 10 * OUT  # the call was billed all the same


@pytest.mark.parametrize(
    ("finish_reason", "block_reason"),
    [("BLOCKED", "SAFETY"), ("BLOCKED:PROHIBITED_CONTENT", "PROHIBITED_CONTENT")],
)
def test_blocked_prompt_is_blocked(client, fake, finish_reason, block_reason):
    fake.enqueue(FakeReply(finish_reason=finish_reason, input_tokens=100))
    response = client.models.generate_content(model=FLASH, contents=PROMPT)
    assert not response.candidates
    assert response.prompt_feedback.block_reason == block_reason
    assert response.fluxgate.status is Status.BLOCKED
    event = event_for(response)
    assert (event.status, event.finish_reason) == ("BLOCKED", f"BLOCKED:{block_reason}")
    # Priced as the provider reported it: the prompt tokens, nothing generated.
    assert (event.input_tokens, event.output_tokens, event.cost_usd) == (100, 0, 100 * IN)


def test_stream_is_recorded_once_from_its_final_usage(client, fake):
    fake.enqueue(FakeReply(**REPLY, chunks=4, chunk_delay=0.05))
    with tracking_context(feature="chat"):
        stream = client.models.generate_content_stream(model=FLASH, contents=PROMPT)
        chunks = list(stream)
    assert len(chunks) == 4
    assert "".join(chunk.text for chunk in chunks) == "Hello from the fake provider."
    # Every chunk carries the running usage; only the last one counts.
    assert [c.usage_metadata.candidates_token_count for c in chunks][-1] == 300
    assert stream.fluxgate.cost == COST
    event = Event.objects.get()
    assert event.tracking_id == stream.fluxgate.tracking_id
    assert (event.streamed, event.feature, event.finish_reason) == (True, "chat", "STOP")
    assert (event.input_tokens, event.output_tokens, event.cost_usd) == (1000, 500, COST)
    assert 0 < event.time_to_first_token_ms < event.latency_ms
    # Three gaps of 50 ms after the first chunk (room for a busy machine to read the first
    # one late, when the next ones are already there).
    assert event.stream_duration_ms >= 50
    assert fake.last_request.stream and fake.last_request.query == "alt=sse"


def test_stream_statuses(client, fake):
    fake.enqueue(FakeReply(finish_reason="SAFETY"), FakeReply(finish_reason="BLOCKED"))
    filtered = client.models.generate_content_stream(model=FLASH, contents=PROMPT)
    list(filtered)
    blocked = client.models.generate_content_stream(model=FLASH, contents=PROMPT)
    list(blocked)
    assert filtered.fluxgate.status is Status.CONTENT_FILTER
    assert blocked.fluxgate.status is Status.BLOCKED
    assert event_for(blocked).finish_reason == "BLOCKED:SAFETY"


def test_stream_left_early_is_recorded_once(client, fake):
    fake.enqueue(FakeReply(**REPLY, chunks=8))
    stream = client.models.generate_content_stream(model=FLASH, contents=PROMPT)
    for _ in stream:
        break
    assert stream.fluxgate is None and Event.objects.count() == 0  # not over yet
    stream.close()
    stream.close()
    event = Event.objects.get()
    assert stream.fluxgate.tracking_id == event.tracking_id
    assert event.metadata == {"stream_completed": False}
    # Closed before the final usage: the running counts are kept, but not priced.
    assert event.cost_usd is None and event.cost_source == "stream-incomplete"
    assert event.input_tokens == 1000


def test_abandoned_stream_is_recorded(client, fake):
    fake.enqueue(FakeReply(chunks=8))
    stream = client.models.generate_content_stream(model=FLASH, contents=PROMPT)
    next(stream)
    del stream
    gc.collect()
    assert Event.objects.get().metadata == {"stream_completed": False}


@pytest.mark.parametrize(
    ("reply", "exc_type", "status"),
    [
        (FakeReply(status=400), errors.ClientError, "MALFORMED_REQUEST"),
        (FakeReply(status=429), errors.ClientError, "ERROR"),
        (FakeReply(status=500), errors.ServerError, "ERROR"),
        (FakeReply(status=503), errors.ServerError, "ERROR"),
    ],
)
def test_errors_are_recorded_then_reraised_unchanged(client, fake, reply, exc_type, status):
    fake.enqueue(reply)
    with pytest.raises(exc_type) as info:
        client.models.generate_content(model=FLASH, contents=PROMPT)
    assert type(info.value) is exc_type and info.value.code == reply.status
    event = Event.objects.get()
    assert (event.status, event.error_type) == (status, exc_type.__name__)
    assert event.cost_usd is None and event.cost_source == "not-billed"
    assert "fake provider" in event.error_message


def test_connection_errors_and_stream_errors_are_recorded(client, fake):
    fake.enqueue(FakeReply(drop_connection=True))
    with pytest.raises(Exception) as dropped:
        client.models.generate_content(model=FLASH, contents=PROMPT)
    assert type(dropped.value).__module__.startswith("httpx")  # the SDK's own error
    fake.enqueue(FakeReply(status=429))
    with pytest.raises(errors.ClientError):
        list(client.models.generate_content_stream(model=FLASH, contents=PROMPT))
    events = list(Event.objects.order_by("created_at"))
    assert [(e.status, e.streamed) for e in events] == [("ERROR", False), ("ERROR", True)]
    assert events[0].error_type == type(dropped.value).__name__
    assert events[1].error_type == "ClientError"


@pytest.mark.django_db(transaction=True)
def test_async_client(client, fake):
    async def scenario():
        fake.enqueue(FakeReply(**REPLY))
        with tracking_context(feature="async"):
            response = await client.aio.models.generate_content(model=FLASH, contents=PROMPT)
        fake.enqueue(FakeReply(**REPLY, chunks=3))
        stream = await client.aio.models.generate_content_stream(model=FLASH, contents=PROMPT)
        text = "".join([chunk.text async for chunk in stream])
        fake.enqueue(FakeReply(**REPLY, chunks=8))
        early = await client.aio.models.generate_content_stream(model=FLASH, contents=PROMPT)
        async for _ in early:
            break
        await early.aclose()
        fake.enqueue(FakeReply(status=500))
        with pytest.raises(errors.ServerError):
            await client.aio.models.generate_content(model=FLASH, contents=PROMPT)
        await client.aio.aclose()
        return response, stream, text, early

    response, stream, text, early = asyncio.run(scenario())
    flush()  # async calls are written off the loop
    assert text == "Hello from the fake provider."
    assert response.fluxgate.cost == COST == stream.fluxgate.cost
    assert event_for(response).feature == "async"
    streamed = event_for(stream)
    assert streamed.streamed and streamed.time_to_first_token_ms > 0
    assert event_for(early).metadata == {"stream_completed": False}
    assert Event.objects.count() == 4
    assert Event.objects.get(status="ERROR").error_type == "ServerError"


@pytest.mark.django_db(transaction=True)  # the sync recorder writes from a thread on a loop
def test_with_context_binds_attribution_to_a_tracked_copy(client, fake):
    support = client.with_context(feature="support", user={"id": "u1", "email": "a@b.c"})
    assert isinstance(support, genai.Client) and support is not client
    fake.default_reply = FakeReply(input_tokens=10, output_tokens=5)
    with tracking_context(session_id="s1", feature="ambient"):
        bound = support.models.generate_content(model=FLASH, contents=PROMPT)
        plain = client.models.generate_content(model=FLASH, contents=PROMPT)
    nested = support.with_context(step="triage").models.generate_content(
        model=FLASH, contents=PROMPT
    )

    async def via_aio():
        response = await support.aio.models.generate_content(model=FLASH, contents=PROMPT)
        await client.aio.aclose()
        return response

    async_bound = asyncio.run(via_aio())
    flush()  # async calls are written off the loop
    chat = support.chats.create(model=FLASH)
    chatted = chat.send_message("hello")
    events = {
        name: event_for(response)
        for name, response in [
            ("bound", bound),
            ("plain", plain),
            ("nested", nested),
            ("async", async_bound),
            ("chat", chatted),
        ]
    }
    assert (events["bound"].feature, events["bound"].session_id) == ("support", "s1")
    assert events["bound"].end_user_id == "u1" and events["bound"].end_user_email == "a@b.c"
    assert (events["plain"].feature, events["plain"].end_user_id) == ("ambient", "")
    assert (events["nested"].feature, events["nested"].step) == ("support", "triage")
    assert events["async"].feature == events["chat"].feature == "support"
    assert Event.objects.count() == 5

    # A copy shares the original's connections: dropping or closing it leaves them open.
    support.close()
    support = chat = None
    gc.collect()
    assert client.models.generate_content(model=FLASH, contents=PROMPT).fluxgate


def test_drop_in_untracked_methods_pass_through(client, fake):
    assert track_gemini(client) is client  # tracking twice is a no-op
    count = client.models.count_tokens(model=FLASH, contents=PROMPT)
    assert count.total_tokens == 7  # 28 characters, about 4 a token
    assert isinstance(client.models, genai.models.Models)
    assert isinstance(client.aio.models, genai.models.AsyncModels)
    assert client.files is not None and client.caches is not None and not client.vertexai
    assert Event.objects.count() == 0
    fake.enqueue(FakeReply(**REPLY))
    assert client.models.generate_content(model=FLASH, contents=PROMPT).fluxgate.cost == COST
    assert Event.objects.count() == 1  # one event per call, however often tracked
    stream = client.models.generate_content_stream(model=FLASH, contents=PROMPT)
    assert isinstance(stream, GeminiStream) and stream.gi_running is False  # generator attrs


def test_each_automatic_function_calling_request_is_its_own_event():
    """The SDK calls the tool and asks again: two billed requests, two events."""
    prompts = []

    class Gemini(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompts.append(100 * (len(prompts) + 1))  # the history grows with each round
            call = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
            part = call if len(prompts) == 1 else {"text": "Sunny."}
            body = json.dumps(
                {
                    "candidates": [{"content": {"role": "model", "parts": [part]}}],
                    "usageMetadata": {"promptTokenCount": prompts[-1], "candidatesTokenCount": 10},
                    "modelVersion": FLASH,
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    server = http.server.HTTPServer(("127.0.0.1", 0), Gemini)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        client = track_gemini(genai.Client(api_key="k", http_options={"base_url": url}))
        config = types.GenerateContentConfig(tools=[get_weather])
        response = client.models.generate_content(model=FLASH, contents=PROMPT, config=config)
        client.close()
    finally:
        server.shutdown()
        server.server_close()
    assert response.text == "Sunny."
    events = list(Event.objects.order_by("created_at"))
    assert [e.input_tokens for e in events] == [100, 200]
    assert response.fluxgate.tracking_id == events[-1].tracking_id  # the answer's request
    assert sum(e.cost_usd for e in events) == 300 * IN + 20 * OUT


def test_track_gemini_rejects_other_clients(openai_client):
    with pytest.raises(TypeError, match="google-genai client"):
        track_gemini(openai_client)


def test_store_content_keeps_the_text_of_the_request(client, fake):
    image = types.Part.from_bytes(data=b"\x89PNG" + bytes(100), mime_type="image/png")
    config = types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=64)
    with fluxgate_overrides(STORE_CONTENT=True):
        response = client.models.generate_content(
            model=FLASH, contents=[PROMPT, image], config=config
        )
    content = event_for(response).content
    assert content["request"] == {
        "contents": [{"role": "user", "parts": [{"text": PROMPT}, {"type": "image/png"}]}],
        "system": [{"text": "Be brief."}],
    }
    assert content["response"]["candidates"][0]["content"]["parts"][0]["text"]


def test_request_body_for_budget_estimates():
    contents = [
        types.Content(role="user", parts=[types.Part.from_text(text="abcd")]),
        {"role": "model", "parts": [{"text": "efgh"}]},
        types.Content(
            role="user",
            parts=[types.Part.from_function_response(name="f", response={"result": "ijkl"})],
        ),
    ]
    tool = types.Tool(
        function_declarations=[
            types.FunctionDeclaration(name="lookup", description="Looks a word up. " * 20)
        ]
    )
    config = {"max_output_tokens": 50, "candidate_count": 2}
    body = request_body(FLASH, contents, config, full=True)
    bound = input_tokens_bound(body, "gemini", FLASH)
    assert bound >= len("abcd" "efgh" "f" "ijkl")  # texts, the function's name and result
    # The tools of the config are part of what the model reads.
    with_tool = request_body(FLASH, contents, {**config, "tools": [tool]}, full=True)
    assert input_tokens_bound(with_tool, "gemini", FLASH) - bound >= len("Looks a word up. " * 20)
    assert max_output_tokens(body, "generate_content") == 50
    assert choices(body) == 2
    assert request_body(FLASH, "abc", None, full=False) == {"model": FLASH}


class TestBudgets:
    @pytest.fixture(autouse=True)
    def _fresh_budget_cache(self):
        ledger.clear_cache()
        teams.forget()
        yield
        ledger.clear_cache()
        teams.forget()

    @pytest.fixture
    def team(self):
        team = Team.objects.create(name="Docs", slug="docs")
        Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.002"))
        return team

    @pytest.mark.django_db(transaction=True)  # the async call reserves from a worker thread
    def test_budget_blocks_before_the_request_is_sent(self, client, fake, team):
        fake.default_reply = FakeReply(**REPLY)  # $0.001496 a call
        # Reserved per call: about 500 x $2.50/M = $0.00125, so the second call can't fit.
        config = {"max_output_tokens": 500}
        with tracking_context(team="docs", feature="summaries"), pytest.raises(BudgetExceeded):
            for _ in range(10):
                client.models.generate_content(model=FLASH, contents=PROMPT, config=config)
        sent = fake.request_count
        assert sent == Event.objects.filter(status="SUCCESS").count() == 1
        blocked = Event.objects.get(status="BUDGET_EXCEEDED")
        assert (blocked.provider, blocked.cost_usd, blocked.feature) == ("gemini", 0, "summaries")
        counter = SpendCounter.objects.get(budget__team=team)
        assert counter.spent == COST and counter.reserved_units == 0

        # Streams (when first iterated, as the SDK sends them) and async calls too.
        stream = client.models.generate_content_stream(model=FLASH, contents=PROMPT, config=config)
        with tracking_context(team="docs"), pytest.raises(BudgetExceeded):
            next(stream)

        async def async_call():
            with tracking_context(team=team):
                await client.aio.models.generate_content(
                    model=FLASH, contents=PROMPT, config=config
                )

        with pytest.raises(BudgetExceeded):
            asyncio.run(async_call())
        flush()
        assert fake.request_count == sent
        assert Event.objects.filter(status="BUDGET_EXCEEDED").count() == 3

    def test_the_estimate_uses_the_output_cap(self, client, fake, team):
        # 64 output tokens x $2.50/M fit the $0.002 budget; the default 1024 ($0.00256) not.
        fake.default_reply = FakeReply(input_tokens=10, output_tokens=10)
        config = {"max_output_tokens": 64}
        with tracking_context(team="docs"):
            client.models.generate_content(model=FLASH, contents=PROMPT, config=config)
            with pytest.raises(BudgetExceeded):
                client.models.generate_content(model=FLASH, contents=PROMPT)
        assert fake.request_count == 1
