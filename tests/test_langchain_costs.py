"""Exact costs through LangChain (issue 14): OpenRouter, streamed ChatAnthropic cache writes
by TTL, embeddings, and Anthropic's service tier — each the same event as the tracked SDK
path records for the same call. Real ChatOpenAI / ChatAnthropic / OpenAIEmbeddings over HTTP
against the loopback fake provider; every figure is hand-computed from published prices.

Prices used (USD per million tokens):
* gpt-4o via OpenRouter (``openai/gpt-4o``): $2.50 input, $1.25 cached input, $10 output —
  openrouter.ai/openai/gpt-4o (the genai-prices ``openrouter`` entry, the same figures).
* claude-sonnet-4-6: $3 input, $0.30 cache read, $3.75 5-minute cache write, $6 1-hour cache
  write, $15 output — docs.anthropic.com/en/docs/about-claude/pricing.
* text-embedding-3-small: $0.02 input — openai.com/api/pricing.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal

import httpx2
import openai
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.embeddings import Embeddings
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from fluxgate_django import flush, track_anthropic, track_openai
from fluxgate_django.models import Event
from fluxgate_django.outcomes import openai_compatible_provider, reported_cost
from fluxgate_django.testing import FakeReply
from fluxgate_langchain import FluxGateEmbeddings, FluxGateHandler, track_embeddings
from fluxgate_langchain import handler as handler_module
from fluxgate_langchain.readers import cache_write_ttls

pytestmark = pytest.mark.django_db

EXACT = Decimal("1e-9")
OPENROUTER_URL = "https://openrouter.ai/api/v1"

# claude-sonnet-4-6: 1000 uncached input + 1000 cache write + 2000 cache read + 500 output.
CACHED = dict(input_tokens=1000, cached_tokens=2000, output_tokens=500)
# 1000 x $3 + 1000 x $3.75 (5m write) + 2000 x $0.30 + 500 x $15, per MTok.
COST_5M = Decimal("0.01485")
# 1000 x $3 + 1000 x $6 (1h write) + 2000 x $0.30 + 500 x $15, per MTok.
COST_1H = Decimal("0.0171")

TTL_1H = {"type": "ephemeral", "ttl": "1h"}
TTL_5M = {"type": "ephemeral"}  # no ttl: Anthropic's default, 5 minutes


@pytest.fixture(autouse=True)
def _fresh_warnings():
    handler_module._warned.clear()
    yield
    handler_module._warned.clear()


def assert_cost(event: Event, expected: Decimal, source: str) -> None:
    assert event.cost_usd is not None, (event.cost_source, event.metadata)
    assert abs(event.cost_usd - expected) <= EXACT, (event.cost_usd, expected)
    assert event.cost_source == source


def lc_event() -> Event:
    events = list(Event.objects.filter(source="langchain"))
    assert len(events) == 1, events
    return events[0]


def sdk_event(result) -> Event:
    return Event.objects.get(tracking_id=result.fluxgate.tracking_id)


# -- OpenRouter ------------------------------------------------------------------------------


class _ToFake(httpx2.HTTPTransport):
    """Sends requests for ``https://openrouter.ai/api/v1/...`` to the fake's ``/v1/...``: the
    client keeps OpenRouter's real base URL, which is what FluxGate names the provider by."""

    def __init__(self, fake_base: str) -> None:
        super().__init__()
        self.target = httpx2.URL(fake_base)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path.removeprefix("/api")
        request.url = request.url.copy_with(
            scheme=self.target.scheme, host=self.target.host, port=self.target.port, path=path
        )
        return super().handle_request(request)


@pytest.fixture
def openrouter_http(fake):
    with httpx2.Client(transport=_ToFake(fake.openai_base_url)) as client:
        yield client


@pytest.fixture
def chat_openrouter(openrouter_http):
    return ChatOpenAI(
        model="openai/gpt-4o",
        api_key="sk-or-test",
        base_url=OPENROUTER_URL,
        http_client=openrouter_http,
        max_retries=0,
    )


@pytest.fixture
def openrouter_sdk(openrouter_http):
    client = openai.OpenAI(
        api_key="sk-or-test", base_url=OPENROUTER_URL, http_client=openrouter_http, max_retries=0
    )
    return track_openai(client)  # (named "openrouter" from its base URL)


def test_the_shared_helpers():
    assert openai_compatible_provider(OPENROUTER_URL) == "openrouter"
    assert openai_compatible_provider("https://eu.openrouter.ai/api/v1") == "openrouter"
    assert openai_compatible_provider("https://api.openai.com/v1") == "openai"
    assert openai_compatible_provider("https://notopenrouter.ai/v1") == "openai"
    assert openai_compatible_provider(None, "vllm") == "vllm"
    assert reported_cost({"cost": 0.00812}) == Decimal("0.00812")
    assert reported_cost({"cost": True}) is None and reported_cost({"cost": "n/a"}) is None


def test_openrouter_invoke_uses_its_reported_cost_like_the_sdk(
    chat_openrouter, openrouter_sdk, fake
):
    # OpenRouter's usage.cost (what it bills, $0.00812 here) is used as is, on both paths.
    reply = dict(input_tokens=1000, output_tokens=500, usage_extra={"cost": 0.00812})
    fake.enqueue(FakeReply(**reply))
    chat_openrouter.invoke("Translate this.", config={"callbacks": [FluxGateHandler()]})
    lc = lc_event()
    assert (lc.provider, lc.model) == ("openrouter", "openai/gpt-4o")
    assert_cost(lc, Decimal("0.00812"), "provider-reported")

    fake.enqueue(FakeReply(**reply))
    sdk = openrouter_sdk.chat.completions.create(
        model="openai/gpt-4o", messages=[{"role": "user", "content": "Translate this."}]
    )
    event = sdk_event(sdk)
    assert (event.provider, event.model, event.cost_usd, event.cost_source) == (
        lc.provider,
        lc.model,
        lc.cost_usd,
        lc.cost_source,
    )


def test_openrouter_without_a_reported_cost_is_priced_from_openrouter_prices(
    chat_openrouter, openrouter_sdk, fake
):
    # 800 x $2.50 + 200 cached x $1.25 + 500 x $10, per MTok = $0.00725.
    reply = dict(input_tokens=1000, cached_tokens=200, output_tokens=500)
    fake.enqueue(FakeReply(**reply))
    chat_openrouter.invoke("Translate this.", config={"callbacks": [FluxGateHandler()]})
    lc = lc_event()
    assert lc.provider == "openrouter"
    assert_cost(lc, Decimal("0.00725"), "genai-prices")

    fake.enqueue(FakeReply(**reply))
    sdk = openrouter_sdk.chat.completions.create(
        model="openai/gpt-4o", messages=[{"role": "user", "content": "Translate this."}]
    )
    assert_cost(sdk_event(sdk), Decimal("0.00725"), "genai-prices")


def test_openrouter_stream_is_priced(openrouter_http, fake):
    # langchain-openai drops usage.cost from stream chunks: priced from OpenRouter's prices,
    # 1000 x $2.50 + 500 x $10, per MTok = $0.0075.
    model = ChatOpenAI(
        model="openai/gpt-4o",
        api_key="sk-or-test",
        base_url=OPENROUTER_URL,
        http_client=openrouter_http,
        stream_usage=True,
        max_retries=0,
    )
    fake.enqueue(FakeReply(input_tokens=1000, output_tokens=500))
    for _ in model.stream("Translate this.", config={"callbacks": [FluxGateHandler()]}):
        pass
    event = lc_event()
    assert (event.provider, event.streamed) == ("openrouter", True)
    assert_cost(event, Decimal("0.0075"), "genai-prices")


def test_a_plain_openai_base_url_stays_openai(fake):
    model = ChatOpenAI(model="gpt-4o", api_key="sk", base_url=fake.openai_base_url, max_retries=0)
    fake.enqueue(FakeReply(input_tokens=1000, cached_tokens=200, output_tokens=500))
    model.invoke("Hi", config={"callbacks": [FluxGateHandler()]})
    event = lc_event()
    assert event.provider == "openai"
    assert_cost(event, Decimal("0.00725"), "genai-prices")  # gpt-4o at OpenAI: same prices


# -- streamed ChatAnthropic: cache writes by TTL --------------------------------------------


@pytest.fixture
def chat_anthropic(fake):
    return ChatAnthropic(
        model="claude-sonnet-4-6",
        api_key="sk-ant-test",
        base_url=fake.anthropic_base_url,
        max_retries=0,
    )


def prompt(*controls: dict) -> list:
    """A system prompt with one cache breakpoint per control, then the question."""
    blocks = [
        {"type": "text", "text": f"Document {i}.", "cache_control": control}
        for i, control in enumerate(controls)
    ]
    return [SystemMessage(content=blocks), HumanMessage("Summarise.")]


def stream_event(chat_anthropic, messages, **kwargs) -> Event:
    for _ in chat_anthropic.stream(messages, config={"callbacks": [FluxGateHandler()]}, **kwargs):
        pass
    return lc_event()


def test_streamed_1h_writes_are_charged_at_the_1h_rate(chat_anthropic, anthropic_client, fake):
    fake.enqueue(FakeReply(**CACHED, cache_write_1h_tokens=1000))
    event = stream_event(chat_anthropic, prompt(TTL_1H))
    assert event.streamed and (event.cache_write_tokens, event.cache_write_1h_tokens) == (
        1000,
        1000,
    )
    assert_cost(event, COST_1H, "genai-prices")

    # The tracked SDK reads the split from message_start: the same cost.
    fake.enqueue(FakeReply(**CACHED, cache_write_1h_tokens=1000))
    with track_anthropic(anthropic_client).messages.stream(
        model="claude-sonnet-4-6", max_tokens=600, messages=[{"role": "user", "content": "x"}]
    ) as stream:
        stream.get_final_message()
    sdk = Event.objects.get(source="sdk")
    assert (sdk.cost_usd, sdk.cost_source, sdk.cache_write_1h_tokens) == (
        event.cost_usd,
        event.cost_source,
        1000,
    )


def test_invoke_with_1h_writes_is_the_same(chat_anthropic, fake):
    fake.enqueue(FakeReply(**CACHED, cache_write_1h_tokens=1000))
    chat_anthropic.invoke(prompt(TTL_1H), config={"callbacks": [FluxGateHandler()]})
    assert_cost(lc_event(), COST_1H, "genai-prices")


def test_streamed_5m_writes_are_charged_at_the_5m_rate(chat_anthropic, fake):
    fake.enqueue(FakeReply(**CACHED, cache_write_tokens=1000))
    event = stream_event(chat_anthropic, prompt(TTL_5M, {"type": "ephemeral", "ttl": "5m"}))
    assert event.cache_write_1h_tokens == 0
    assert_cost(event, COST_5M, "genai-prices")


def test_a_cache_control_kwarg_counts_as_a_breakpoint(chat_anthropic, fake):
    # The top-level cache_control kwarg (1h) and no other breakpoint: every write is 1h.
    fake.enqueue(FakeReply(**CACHED, cache_write_1h_tokens=1000))
    event = stream_event(chat_anthropic, [HumanMessage("Summarise.")], cache_control=TTL_1H)
    assert_cost(event, COST_1H, "genai-prices")


def test_mixed_ttls_are_usage_incomplete_at_the_upper_bound(chat_anthropic, fake, caplog):
    # 600 written for 1h and 400 for 5m; the stream says only "1000 written".
    fake.enqueue(FakeReply(**CACHED, cache_write_1h_tokens=600, cache_write_tokens=400))
    with caplog.at_level(logging.WARNING, logger="fluxgate.langchain"):
        event = stream_event(chat_anthropic, prompt(TTL_1H, TTL_5M))
    # The bound: all 1000 writes at the 1h rate = COST_1H (the real cost, $0.01644, is less;
    # the 5m rate, $0.01485, would under-charge).
    assert_cost(event, COST_1H, "usage-incomplete")
    assert event.metadata["usage_incomplete"] == "cache_write_ttl"
    assert event.metadata["cost_is_upper_bound"] is True
    assert event.cache_write_tokens == 1000 and event.input_tokens == 4000
    assert "usage-incomplete" in caplog.text


def test_writes_with_no_1h_breakpoint_are_charged_at_the_5m_rate(chat_anthropic, fake):
    # Breakpoints reach the API only from what the callback is shown (messages, kwargs,
    # model_kwargs, bound tools): with none naming 1h, every write is a 5m one.
    fake.enqueue(FakeReply(**CACHED, cache_write_tokens=1000))
    event = stream_event(chat_anthropic, [HumanMessage("Summarise.")])
    assert_cost(event, COST_5M, "genai-prices")


def test_cache_write_ttls_reads_messages_and_params():
    assert cache_write_ttls(prompt(TTL_1H), {}) == {"1h"}
    assert cache_write_ttls(prompt(TTL_5M), {"tools": [{"cache_control": TTL_1H}]}) == {
        "5m",
        "1h",
    }
    assert cache_write_ttls([HumanMessage("x")], {"model": "m"}) == frozenset()


# -- Anthropic's service tier ---------------------------------------------------------------


def test_anthropic_service_tier_is_the_same_for_streams(anthropic_client, fake):
    client = track_anthropic(anthropic_client)
    msgs = [{"role": "user", "content": "x"}]
    plain = client.messages.create(model="claude-sonnet-4-6", max_tokens=50, messages=msgs)
    stream = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=50, messages=msgs, stream=True
    )
    for _ in stream:
        pass
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=50, messages=msgs) as s:
        s.get_final_message()
    tiers = {e.streamed: e.service_tier for e in Event.objects.filter(source="sdk")}
    assert sdk_event(plain).service_tier == "standard"
    assert tiers == {False: "standard", True: "standard"}
    assert Event.objects.filter(source="sdk", service_tier="standard").count() == 3


@pytest.mark.django_db(transaction=True)
def test_an_async_anthropic_stream_has_the_tier(async_anthropic_client, fake):
    async def go():
        client = track_anthropic(async_anthropic_client)
        stream = await client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=50,
            messages=[{"role": "user", "content": "x"}],
            stream=True,
        )
        async for _ in stream:
            pass

    asyncio.run(go())
    flush()  # async calls are written off the loop
    assert Event.objects.get(source="sdk").service_tier == "standard"


# -- embeddings -----------------------------------------------------------------------------


@pytest.fixture
def embeddings(fake):
    # check_embedding_ctx_length=False: no tiktoken download; the text goes as it is.
    return OpenAIEmbeddings(
        model="text-embedding-3-small",
        api_key="sk-test",
        base_url=fake.openai_base_url,
        check_embedding_ctx_length=False,
        max_retries=0,
    )


def test_embed_documents_and_query_are_events(embeddings, openai_client, fake):
    tracked = track_embeddings(embeddings, feature="ingest")
    assert isinstance(tracked, Embeddings)
    fake.enqueue(FakeReply(input_tokens=1000), FakeReply(input_tokens=250))
    vectors = tracked.embed_documents(["first document", "second document"])
    assert len(vectors) == 2
    assert tracked.embed_query("a question")
    docs, query = Event.objects.order_by("created_at")
    for event in (docs, query):
        assert (event.source, event.provider, event.operation, event.feature) == (
            "langchain",
            "openai",
            "embeddings",
            "ingest",
        )
        assert event.model == "text-embedding-3-small"
    assert docs.input_tokens == 1000
    assert_cost(docs, Decimal("0.00002"), "genai-prices")  # 1000 x $0.02 / MTok
    assert_cost(query, Decimal("0.000005"), "genai-prices")  # 250 x $0.02 / MTok

    # The same request through the tracked SDK: the same cost.
    fake.enqueue(FakeReply(input_tokens=1000))
    sdk = track_openai(openai_client).embeddings.create(
        model="text-embedding-3-small", input=["first document", "second document"]
    )
    assert sdk_event(sdk).cost_usd == docs.cost_usd


@pytest.mark.django_db(transaction=True)
def test_async_embeddings_are_events(embeddings, fake):
    tracked = track_embeddings(embeddings, team=None, feature="search")

    async def go():
        fake.enqueue(FakeReply(input_tokens=400))
        await tracked.aembed_query("a question")
        fake.enqueue(FakeReply(input_tokens=600))
        await tracked.aembed_documents(["a", "b", "c"])

    asyncio.run(go())
    flush()
    costs = sorted(e.cost_usd for e in Event.objects.filter(source="langchain", feature="search"))
    # 400 and 600 x $0.02 / MTok.
    expected = [Decimal("0.000008"), Decimal("0.000012")]
    assert len(costs) == 2
    assert all(abs(c - e) <= EXACT for c, e in zip(costs, expected, strict=True))


def test_embeddings_through_openrouter_are_named_openrouter(openrouter_http, fake):
    model = OpenAIEmbeddings(
        model="openai/text-embedding-3-small",
        api_key="sk-or-test",
        base_url=OPENROUTER_URL,
        http_client=openrouter_http,
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    tracked = track_embeddings(model)
    fake.enqueue(FakeReply(input_tokens=1000))
    tracked.embed_query("a question")
    event = Event.objects.get()
    assert (event.provider, event.model) == ("openrouter", "openai/text-embedding-3-small")


def test_an_embeddings_model_without_an_openai_client_is_refused():
    class Local(Embeddings):
        def embed_documents(self, texts):
            return [[0.0] for _ in texts]

        def embed_query(self, text):
            return [0.0]

    with pytest.raises(TypeError, match="could not see its usage"):
        FluxGateEmbeddings(Local())


def test_a_failing_embeddings_call_is_an_error_event_and_raises(embeddings, fake):
    tracked = track_embeddings(embeddings)
    fake.enqueue(FakeReply(status=500))
    with pytest.raises(openai.InternalServerError):
        tracked.embed_query("a question")
    event = Event.objects.get()
    assert (event.source, event.status) == ("langchain", "ERROR")
