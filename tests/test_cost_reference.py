"""Reference suite: the cost of an event, through the real paths, equals a hand-computed
figure to 1e-9 USD.

Each case (``tests/cost_cases.py``, where each hand figure's source is given) is one
call, sent through every path that can carry it: the tracked OpenAI, Anthropic and Gemini
SDK clients over HTTP against the bundled fake provider (plain and streamed; OpenAI's
``embeddings.create``; an OpenAI client on OpenRouter's base URL), LangChain's
``ChatOpenAI`` (Chat Completions and Responses, and on OpenRouter), ``ChatAnthropic`` and
``OpenAIEmbeddings`` with FluxGate's callback handler or ``track_embeddings`` (``invoke``,
``stream``, ``ainvoke``, ``astream``, and a handler posting to a FluxGate site's ingest
API), and the ingest API (``POST /fluxgate/api/events/``). Events dated in the past can
only come in through the ingest API (or a spool replay, tested below). (No LangChain
Gemini integration is installed here, and FluxGate tracks no Gemini embeddings call:
Gemini cases have no LangChain path, Gemini embeddings come in by the ingest API.)

A case with a ``ModelPrice`` override saves the row first; one served by another model
than it asked for (a dated snapshot) has the provider report that model.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import http.server
import json
import socket
import threading
import uuid
from decimal import Decimal

import httpx2
import openai
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from fluxgate_django import flush, track_anthropic, track_gemini, track_openai, tracking_context
from fluxgate_django.context import TrackingContext
from fluxgate_django.models import Event, ModelPrice
from fluxgate_django.pipeline import finish_record, make_record
from fluxgate_django.pricing import calculate_cost, price_book
from fluxgate_django.recording import spool, write_events
from fluxgate_django.records import CallInfo, CostSource, Usage
from fluxgate_django.testing import FakeReply
from fluxgate_langchain import FluxGateHandler, track_embeddings
from fluxgate_langchain.remote import get_sender
from tests.api_helpers import API, event_payload, make_world, post_json
from tests.cost_cases import (
    ASYNC_PATHS,
    CASES,
    LANGCHAIN_STREAMS,
    REMOTE_PATHS,
    Case,
)
from tests.helpers import MSGS

pytestmark = pytest.mark.django_db

EVENTS = f"{API}events/"
TOLERANCE = Decimal("1e-9")
OPENROUTER_URL = "https://openrouter.ai/api/v1"


@pytest.fixture(autouse=True)
def fresh_price_book():
    price_book.reset()
    yield
    price_book.reset()


def test_the_suite_has_every_kind_of_case():
    """Issue 14's list: at least 60 cases, each kind there, on the paths that carry it."""
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
    kinds = {
        "every provider": {c.provider for c in CASES} >= {"openai", "anthropic", "gemini",
                                                          "openrouter"},
        "cached input": any(c.cache_read and c.provider == p for c in CASES
                            for p in ("openai", "anthropic", "gemini")),
        "5m writes": any(c.cache_write_5m for c in CASES),
        "1h writes": any(c.cache_write_1h for c in CASES),
        "reasoning": any(c.reasoning for c in CASES),
        "long context": any(c.input > 200_000 for c in CASES),
        "tiers": {c.tier for c in CASES} >= {"batch", "flex", "priority"},
        "embeddings": any(c.operation == "embeddings" for c in CASES),
        "snapshots": any(c.served for c in CASES),
        "openrouter cost": any(c.provider == "openrouter" and c.reported_cost for c in CASES),
        "openrouter priced": any(c.provider == "openrouter" and c.known_cost is None
                                 and c.expected for c in CASES),
        "historical": any(c.created_at for c in CASES),
        "overrides": any(c.override for c in CASES),
        "unknown": any(c.expected is None for c in CASES),
    }  # fmt: skip
    assert all(kinds.values()), [k for k, ok in kinds.items() if not ok]
    for case in CASES:  # an unknown model is None with a cost_source, never 0
        assert (case.expected is None) == (case.source == "unknown"), case.id


# -- the paths ------------------------------------------------------------------------------


def fake_reply(case: Case) -> FakeReply:
    """The provider's own usage fields for ``case`` (and the model it says served it)."""
    served = {"served_model": case.served}
    if case.provider == "anthropic":
        return FakeReply(
            input_tokens=case.input - case.cache_read - case.cache_write,  # cache-exclusive
            cached_tokens=case.cache_read,
            cache_write_tokens=case.cache_write_5m,
            cache_write_1h_tokens=case.cache_write_1h,
            output_tokens=case.output,
            **served,
        )
    if case.provider == "gemini":
        return FakeReply(
            input_tokens=case.input,  # Gemini's prompt count includes the cached tokens
            cached_tokens=case.cache_read,
            output_tokens=case.output - case.reasoning,  # candidates exclude thoughts
            reasoning_tokens=case.reasoning,
            **served,
        )
    # OpenRouter's usage.cost, as it reports it (a JSON number).
    extra = {"cost": float(case.reported_cost)} if case.reported_cost is not None else {}
    return FakeReply(
        input_tokens=case.input,  # OpenAI's prompt_tokens include the cached tokens
        cached_tokens=case.cache_read,
        output_tokens=case.output,  # completion_tokens include reasoning
        reasoning_tokens=case.reasoning,
        usage_extra=extra,
        **served,
    )


class _ToOpenRouter(httpx2.HTTPTransport):
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


class _ServedTier(httpx2.HTTPTransport):
    """Answers a request naming a ``service_tier`` as OpenAI does: the response names the
    tier that served it (the fake always says ``default``)."""

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        tier = json.loads(request.content or b"{}").get("service_tier")
        if not tier:
            return response
        body = response.read().replace(
            b'"service_tier":"default"', f'"service_tier":"{tier}"'.encode()
        )
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        return httpx2.Response(response.status_code, headers=headers, content=body)


#: The tiers a request names to OpenAI, which says in its response which one served it
#: (batch is a separate API, not a chat call: declared with ``tracking_context``).
REQUESTED_TIERS = frozenset({"flex", "priority"})


@pytest.fixture(scope="module")
def clients(fake_provider):
    """The SDK clients and HTTP clients the paths use, made once for the module: making
    one loads its TLS certificates (~0.1 s), which would be most of a path's time.
    (Tracking a client twice is a no-op; the ``fake`` fixture resets the fake per test.)"""
    import anthropic
    from google import genai
    from google.genai import types

    with contextlib.ExitStack() as stack:
        openrouter = stack.enter_context(
            httpx2.Client(transport=_ToOpenRouter(fake_provider.openai_base_url))
        )
        made = {
            "openai": openai.OpenAI(
                api_key="sk-test-key", base_url=fake_provider.openai_base_url, max_retries=0
            ),
            # On OpenRouter's base URL (named "openrouter" from it), answered by the fake.
            "openrouter": openai.OpenAI(
                api_key="sk-or-test", base_url=OPENROUTER_URL, http_client=openrouter,
                max_retries=0,
            ),
            "anthropic": anthropic.Anthropic(
                api_key="sk-ant-test-key", base_url=fake_provider.anthropic_base_url,
                max_retries=0,
            ),
            "gemini": genai.Client(
                api_key="test-gemini-key",
                http_options=types.HttpOptions(
                    base_url=fake_provider.gemini_base_url,
                    retry_options=types.HttpRetryOptions(attempts=1),
                ),
            ),
        }  # fmt: skip
        for client in made.values():
            stack.callback(client.close)
        yield {
            **made,
            "openrouter-http": openrouter,
            "served-tier-http": stack.enter_context(httpx2.Client(transport=_ServedTier())),
        }


def langchain_model(case: Case, path: str, fake, clients: dict) -> BaseChatModel:
    # langchain-openai and langchain-anthropic share one cached async HTTP client per base
    # URL: a kept-alive connection would outlive this test's event loop and break the next
    # test's async call ("Event loop is closed"); an async path's connection is not kept.
    headers = {"Connection": "close"} if path in ASYNC_PATHS else None
    if case.provider == "anthropic":
        return ChatAnthropic(
            model=case.model,
            api_key="sk-ant-test-key",
            base_url=fake.anthropic_base_url,
            max_tokens=1024,
            max_retries=0,
            default_headers=headers,
        )
    options: dict = {}
    if case.provider == "openrouter":
        options["http_client"] = clients["openrouter-http"]
    if case.tier in REQUESTED_TIERS:
        options["service_tier"] = case.tier
        options["http_client"] = clients["served-tier-http"]
    # stream_usage: off by default with a base_url, and a stream then reports no usage
    return ChatOpenAI(
        model=case.model,
        api_key="sk-test-key",
        base_url=OPENROUTER_URL if case.provider == "openrouter" else fake.openai_base_url,
        stream_usage=True,
        use_responses_api=path.startswith("langchain-responses"),
        max_retries=0,
        default_headers=headers,
        **options,
    )


def langchain_messages(case: Case) -> list[BaseMessage]:
    """The request: for Anthropic, a system prompt with one ``cache_control`` breakpoint per
    cache TTL the case writes (Anthropic writes only at breakpoints, with their TTL)."""
    question = HumanMessage("hi")
    if case.provider != "anthropic":
        return [question]
    ttls = [ttl for ttl, n in (("5m", case.cache_write_5m), ("1h", case.cache_write_1h)) if n]
    if not ttls and case.cache_read:
        ttls = ["5m"]  # a read is at a breakpoint too
    blocks = [
        {"type": "text", "text": f"Document {i}.",
         "cache_control": {"type": "ephemeral", "ttl": ttl}}
        for i, ttl in enumerate(ttls)
    ]  # fmt: skip
    return [SystemMessage(content=blocks), question] if blocks else [question]


class SiteRelay:
    """A FluxGate site's address for a remote ``FluxGateHandler``: takes the batches its
    sender posts, for the test to hand to this site's own ingest API (in the test's
    transaction, which a live server could not see)."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        relay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                relay.events.extend(json.loads(body)["events"])
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                conn, addr = super().get_request()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return conn, addr

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


RELAY_KEY = "fg_live_reference"


@pytest.fixture(scope="module")
def site_relay():
    relay = SiteRelay()
    yield relay
    relay.close()


def relayed(relay: SiteRelay, case: Case) -> Event:
    """The one event the remote handler sent, ingested by this site's API."""
    assert get_sender(relay.url, RELAY_KEY).flush(timeout=10)  # (its sender only)
    (sent,) = relay.events
    relay.events.clear()
    if case.known_cost is None:
        assert sent["cost_usd"] is None  # the site prices it
    else:  # a cost the call came with is sent with it
        assert Decimal(sent["cost_usd"]) == case.known_cost
    response = post_json(make_world().client("key_a"), EVENTS, {"events": [sent]})
    assert response.status_code == 202, response.content
    return Event.objects.get(tracking_id=sent["tracking_id"])


def langchain_call(case: Case, path: str, request: pytest.FixtureRequest) -> Event:
    fake = request.getfixturevalue("fake")
    if path == "langchain-embeddings":
        return langchain_embedding(case, fake)
    messages = langchain_messages(case)
    if path in REMOTE_PATHS:
        relay = request.getfixturevalue("site_relay")
        handler = FluxGateHandler(api_key=RELAY_KEY, base_url=relay.url)
    else:
        handler = FluxGateHandler()
    config: RunnableConfig = {"callbacks": [handler]}
    # A tier the provider reports is read from the response; batch is declared.
    declared = None if case.tier in REQUESTED_TIERS else case.tier
    fake.enqueue(fake_reply(case))
    with tracking_context(service_tier=declared, openrouter_cost=case.context_cost):
        model = langchain_model(case, path, fake, request.getfixturevalue("clients"))
        if path in ASYNC_PATHS:

            async def run() -> None:
                if path == "langchain-ainvoke":
                    await model.ainvoke(messages, config=config)
                else:
                    async for _ in model.astream(messages, config=config):
                        pass

            asyncio.run(run())
            assert flush(timeout=10)  # (written off the event loop)
        elif path in LANGCHAIN_STREAMS:
            for _ in model.stream(messages, config=config):
                pass
        else:
            model.invoke(messages, config=config)
    if path in REMOTE_PATHS:
        assert not Event.objects.exists()  # sent to the site, not recorded here
        event = relayed(request.getfixturevalue("site_relay"), case)
    else:
        event = Event.objects.get()
    assert event.source == "langchain"
    assert event.streamed == (path in LANGCHAIN_STREAMS)
    assert event.operation == (
        "responses" if "responses" in path else {"anthropic": "messages"}.get(case.provider, "chat")
    )
    return event


def langchain_embedding(case: Case, fake) -> Event:
    """``OpenAIEmbeddings.embed_query`` through ``track_embeddings``."""
    fake.enqueue(fake_reply(case))
    # check_embedding_ctx_length=False: no tiktoken download; the text goes as it is.
    model = OpenAIEmbeddings(
        model=case.model,
        api_key="sk-test-key",
        base_url=fake.openai_base_url,
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    with tracking_context(service_tier=case.tier):
        track_embeddings(model).embed_query("hi")
    event = Event.objects.get()
    assert (event.source, event.operation) == ("langchain", "embeddings")
    return event


def sdk_client(case: Case, path: str, clients: dict) -> object:
    if path.startswith("openai"):
        return track_openai(clients["openrouter" if case.provider == "openrouter" else "openai"])
    if path.startswith("anthropic"):
        return track_anthropic(clients["anthropic"])
    return track_gemini(clients["gemini"])


def tracked_call(case: Case, path: str, request: pytest.FixtureRequest) -> Event:
    if path.startswith("langchain"):
        return langchain_call(case, path, request)
    fake = request.getfixturevalue("fake")
    fake.enqueue(fake_reply(case))
    with tracking_context(service_tier=case.tier, openrouter_cost=case.context_cost):
        client = sdk_client(case, path, request.getfixturevalue("clients"))
        if path == "openai-chat":
            result = client.chat.completions.create(model=case.model, messages=MSGS)
        elif path == "openai-chat-stream":
            result = client.chat.completions.create(
                model=case.model,
                messages=MSGS,
                stream=True,
                stream_options={"include_usage": True},
            )
            for _ in result:
                pass
        elif path == "openai-responses":
            result = client.responses.create(model=case.model, input="hi")
        elif path == "openai-embeddings":
            result = client.embeddings.create(model=case.model, input="hi")
        elif path.startswith("anthropic"):
            kwargs = {"model": case.model, "max_tokens": 1024, "messages": MSGS}
            if path == "anthropic-create":
                result = client.messages.create(**kwargs)
            elif path == "anthropic-raw-stream":
                result = client.messages.create(**kwargs, stream=True)
                for _ in result:
                    pass
            else:
                with client.messages.stream(**kwargs) as result:
                    result.get_final_message()
        elif path == "gemini-stream":
            result = client.models.generate_content_stream(model=case.model, contents="hi")
            for _ in result:
                pass
        else:
            result = client.models.generate_content(model=case.model, contents="hi")
    event = Event.objects.get(tracking_id=result.fluxgate.tracking_id)
    assert event.source == "sdk"
    assert event.streamed == (path.endswith("stream") or path == "anthropic-stream-helper")
    return event


def ingest_payload(case: Case) -> dict:
    payload = event_payload(
        provider=case.provider,
        model=case.served_model,
        requested_model=case.model,
        operation=case.operation,
        input_tokens=case.input,
        output_tokens=case.output,
        reasoning_tokens=case.reasoning,
        cache_read_tokens=case.cache_read,
        cache_write_tokens=case.cache_write,
        cache_write_1h_tokens=case.cache_write_1h,
    )
    if case.tier:
        payload["service_tier"] = case.tier
    if case.created_at:
        payload["created_at"] = case.created_at
    if case.known_cost is not None:  # the client sends the cost it has, and where from
        payload["cost_usd"] = str(case.known_cost)
        payload["cost_source"] = case.source
    return payload


def ingested(case: Case) -> Event:
    api = make_world().client("key_a")
    payload = ingest_payload(case)
    response = post_json(api, EVENTS, payload)
    assert response.status_code == 202, response.content
    event = Event.objects.get(tracking_id=payload["tracking_id"])
    assert event.source == "api"
    return event


def assert_cost(event: Event, case: Case, path: str) -> None:
    expected, source = case.expected, case.source
    bounded = case.bounded_on(path)
    if bounded:
        # (A site prices the bound it is sent, every write as 1h: its price's own label.)
        expected = case.stream_bound
        source = case.source if path in REMOTE_PATHS else "usage-incomplete"
        assert event.metadata["usage_incomplete"] == "cache_write_ttl"
        assert event.metadata["cost_is_upper_bound"] is True
    assert event.cost_source == source
    if expected is None:
        assert event.cost_usd is None  # never a silent 0
    else:
        assert event.cost_usd is not None
        assert abs(event.cost_usd - expected) <= TOLERANCE, (event.cost_usd, expected)
    # The path carried the call whole: who served it, and the usage (FluxGate's convention).
    assert (event.provider, event.model, event.requested_model) == (
        case.provider,
        case.served_model,
        case.model,
    )
    assert (event.input_tokens, event.output_tokens, event.reasoning_tokens) == (
        case.input,
        case.output,
        case.reasoning,
    )
    assert (event.cache_read_tokens, event.cache_write_tokens) == (
        case.cache_read,
        case.cache_write,
    )
    if not bounded:
        assert event.cache_write_1h_tokens == case.cache_write_1h
    elif path in REMOTE_PATHS:
        assert event.cache_write_1h_tokens == case.cache_write


#: A deprecated model is billed until its end of life (claude-opus-4-5): the SDK warns.
_DEPRECATED = pytest.mark.filterwarnings("ignore:The model '.*' is deprecated:DeprecationWarning")


def _marks(path: str) -> tuple[pytest.MarkDecorator, ...]:
    # An async run's event is written by another thread: it must see committed rows.
    if path in ASYNC_PATHS:
        return (pytest.mark.django_db(transaction=True), _DEPRECATED)
    return (_DEPRECATED,)


@pytest.mark.parametrize(
    ("case", "path"),
    [pytest.param(c, p, id=f"{c.id}/{p}", marks=_marks(p)) for c in CASES for p in c.all_paths()],
)
def test_reference_cost(case, path, request):
    if case.override is not None:
        # The site's own price, saved as the admin saves it (this process sees it at once).
        ModelPrice.objects.create(
            provider=case.provider, model=case.override.model, **case.override.fields()
        )
    if path == "ingest":
        event = ingested(case)
        if case.created_at:
            assert event.created_at == dt.datetime.fromisoformat(case.created_at)
    else:
        event = tracked_call(case, path, request)
        assert event.service_tier == (case.tier or event.service_tier)
    if case.operation == "embeddings":
        assert event.operation == "embeddings"
    assert_cost(event, case, path)


# -- the resolved rates are genai-prices' own arithmetic, tiers and 1h writes included ------

GENAI_USAGES = [
    Usage(0, 0),
    Usage(1000, 500, cache_read_tokens=200),
    Usage(4000, 500, cache_read_tokens=2000, cache_write_tokens=1000, cache_write_1h_tokens=600),
    Usage(5000, 10, cache_write_tokens=4000, cache_write_1h_tokens=4000),
    Usage(200_000, 10, cache_write_tokens=1000, cache_write_1h_tokens=1000),
    Usage(200_001, 10, cache_write_tokens=1000, cache_write_1h_tokens=1000),
    Usage(210_000, 2000, cache_read_tokens=10_000, cache_write_tokens=50_000,
          cache_write_1h_tokens=30_000),
    Usage(123_457, 7_891, reasoning_tokens=1000, cache_read_tokens=33_333),
]  # fmt: skip


@pytest.mark.parametrize(
    ("provider", "genai_provider", "model", "tier", "at"),
    [
        ("anthropic", "anthropic", "claude-sonnet-4-5", None, None),
        ("anthropic", "anthropic", "claude-sonnet-4-5", "batch", None),
        ("anthropic", "anthropic", "claude-sonnet-4-6", None, None),
        ("anthropic", "anthropic", "claude-haiku-4-5", None, None),
        ("gemini", "google", "gemini-2.5-pro", None, None),
        ("openai", "openai", "gpt-4o", "batch", None),
        ("openai", "openai", "gpt-4o", "priority", None),
        # (before 2025-04-16: the supplement corrects o3's cached input from then to 06-10)
        ("openai", "openai", "o3", None, "2025-04-15T00:00:00+00:00"),
        ("openai", "openai", "o3", "flex", None),
    ],
)
def test_resolved_rates_equal_genai_prices_calc_price(provider, genai_provider, model, tier, at):
    from genai_prices import Usage as GenaiUsage
    from genai_prices import calc_price

    when = dt.datetime.fromisoformat(at) if at else dt.datetime.now(dt.timezone.utc)
    context = None
    if tier:
        context = {"processing": "batch"} if tier == "batch" else {"service_tier": tier}
    for usage in GENAI_USAGES:
        genai_usage = GenaiUsage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
        )
        expected = calc_price(
            genai_usage,
            model,
            provider_id=genai_provider,
            genai_request_timestamp=when,
            price_context=context,
        ).total_price

        cost = calculate_cost(provider, model, usage, service_tier=tier, at=when)

        assert cost.usd == expected, usage
        assert cost.source == ("genai-prices" + (f"+{tier}" if tier else ""))


# -- one process, many dates: the price cache keys on what makes the price differ ------------


def test_one_ingest_batch_mixing_dates_prices_each_event_at_its_own_date():
    # o3, 1000 input + 1000 output: $0.05 before 2025-06-10 ($10/$40), $0.01 from then
    # ($2/$8); the same model in one batch, dates interleaved so a cache keyed by model
    # alone would give one of them the other's price.
    dates_and_costs = [
        ("2025-05-01T12:00:00Z", Decimal("0.05")),
        (None, Decimal("0.01")),
        ("2025-06-10T00:00:00Z", Decimal("0.01")),
        ("2025-06-09T23:59:59Z", Decimal("0.05")),
        ("2025-05-02T00:00:00Z", Decimal("0.05")),
    ]
    payloads = []
    for created_at, _ in dates_and_costs:
        payload = event_payload(model="o3", input_tokens=1000, output_tokens=1000)
        if created_at:
            payload["created_at"] = created_at
        payloads.append(payload)
    api = make_world().client("key_a")

    response = post_json(api, EVENTS, {"events": payloads})

    assert response.status_code == 202
    for payload, (_, cost) in zip(payloads, dates_and_costs, strict=True):
        event = Event.objects.get(tracking_id=payload["tracking_id"])
        assert (event.cost_usd, event.cost_source) == (cost, "genai-prices")


def test_time_of_day_prices_are_keyed_by_the_time_of_day():
    # DeepSeek's off-peak discount (https://api-docs.deepseek.com/quick_start/pricing, from
    # 2025-02-26): deepseek-chat $0.27 input / $1.10 output from 00:30 to 16:30 UTC, half
    # that ($0.135 / $0.55) off-peak. 1M input + 1M output: $1.37 at peak, $0.685 off-peak.
    times_and_costs = [
        ("2025-03-03T12:00:00Z", Decimal("1.37")),
        ("2025-03-03T20:00:00Z", Decimal("0.685")),
        ("2025-03-03T16:29:59Z", Decimal("1.37")),
        ("2025-03-03T16:30:00Z", Decimal("0.685")),
        ("2025-03-04T00:29:00Z", Decimal("0.685")),
    ]
    payloads = [
        event_payload(
            provider="deepseek",
            model="deepseek-chat",
            input_tokens=1_000_000,
            output_tokens=1_000_000,
            created_at=created_at,
        )
        for created_at, _ in times_and_costs
    ]
    api = make_world().client("key_a")

    assert post_json(api, EVENTS, {"events": payloads}).status_code == 202

    for payload, (_, cost) in zip(payloads, times_and_costs, strict=True):
        event = Event.objects.get(tracking_id=payload["tracking_id"])
        assert (event.cost_usd, event.cost_source) == (cost, "genai-prices"), payload


def test_a_tier_price_is_used_only_from_the_date_the_data_has_it():
    # genai-prices has o3's own batch prices from 2026-10-14: before, the multiplier.
    usage = Usage(1000, 500, cache_read_tokens=200)
    at = dt.datetime(2026, 10, 14, tzinfo=dt.timezone.utc)
    before = calculate_cost(
        "openai", "o3", usage, service_tier="batch", at=at - dt.timedelta(seconds=1)
    )
    on = calculate_cost("openai", "o3", usage, service_tier="batch", at=at)
    # before: o3 standard ($2 / $0.50 cached / $8) x 0.5: (800 x $1 + 200 x $0.25 + 500 x $4) / 1M
    # on: o3 Batch $1 / $4, no batch cached rate so cached at $0.50: (800 + 100 + 2000) / 1M
    assert (before.usd, before.source) == (Decimal("0.00285"), "genai-prices+batch*0.5")
    assert (on.usd, on.source) == (Decimal("0.0029"), "genai-prices+batch")
    assert CostSource.of(before.source) is CostSource.of(on.source) is CostSource.GENAI_PRICES


def test_a_call_happening_now_reuses_the_resolved_price(monkeypatch):
    """Once a model's price for a (tier, price period) is resolved, pricing does not call
    genai-prices again: not for a call now, nor for another day of the same period."""
    from genai_prices import types as genai_types

    usage = Usage(3100, 100, cache_write_tokens=3000, cache_write_1h_tokens=2000)
    old = dt.datetime(2025, 5, 1, tzinfo=dt.timezone.utc)
    first = [
        calculate_cost("openai", "o3", Usage(1000, 1000)),
        calculate_cost("openai", "o3", Usage(1000, 1000), at=old),
        calculate_cost("anthropic", "claude-sonnet-4-5", usage),
        calculate_cost("anthropic", "claude-sonnet-4-5", usage, service_tier="batch"),
    ]

    def no_lookups(*args, **kwargs):
        raise AssertionError("genai-prices was asked again")

    monkeypatch.setattr(genai_types.ModelInfo, "calc_price", no_lookups)
    monkeypatch.setattr(genai_types.ModelPrice, "calc_price", no_lookups)
    again = [
        calculate_cost("openai", "o3", Usage(1000, 1000)),
        calculate_cost("openai", "o3", Usage(1000, 1000), at=old + dt.timedelta(days=20)),
        calculate_cost("anthropic", "claude-sonnet-4-5", usage),
        calculate_cost("anthropic", "claude-sonnet-4-5", usage, service_tier="batch"),
    ]
    assert again == first
    # o3: $0.01 now, $0.05 in May 2025; sonnet 4.5: 100 x $3 + 1000 x $3.75 + 2000 x $6
    # + 100 x $15 = $0.01755, and in batch half of it, $0.008775
    assert [c.usd for c in again] == [
        Decimal("0.01"),
        Decimal("0.05"),
        Decimal("0.01755"),
        Decimal("0.008775"),
    ]


def test_a_naive_created_at_is_the_sites_local_time(settings):
    # With USE_TZ off Django stores naive local times: 2025-06-10 01:00 in Paris (UTC+2)
    # is 2025-06-09 23:00 UTC, still o3's old price: 1000 x $10 + 1000 x $40.
    settings.TIME_ZONE = "Europe/Paris"
    naive = dt.datetime(2025, 6, 10, 1, 0)
    cost = calculate_cost("openai", "o3", Usage(1000, 1000), at=naive)
    assert cost.usd == Decimal("0.05")


# -- spool replays keep the price of the event's own time -----------------------------------


def test_a_spooled_event_is_replayed_with_the_price_of_its_time(spool_dir):
    # o3 on 2025-05-01 (before the 2025-06-10 cut): 1000 x $10 + 1000 x $40 = $0.05
    info = CallInfo(provider="openai", operation="chat", requested_model="o3", model="o3")
    record = make_record(
        info,
        Usage(1000, 1000),
        TrackingContext(),
        latency_ms=5.0,
        tracking_id=uuid.uuid4(),
        created_at=dt.datetime(2025, 5, 1, 12, tzinfo=dt.timezone.utc),
    )
    finish_record(record)  # what every record goes through before a recorder gets it
    spool.append([record])  # the database was down

    assert spool.replay(write_events) == 1

    event = Event.objects.get(tracking_id=record.tracking_id)
    assert (event.cost_usd, event.cost_source) == (Decimal("0.05"), "genai-prices")
    assert event.created_at == record.created_at


# -- new price data (genai-prices' UpdatePrices, or a site's own snapshot) -------------------


def test_prices_follow_a_new_genai_prices_snapshot():
    import copy

    from genai_prices import data_snapshot
    from genai_prices.types import ModelPrice

    usage = Usage(1000, 1000)
    assert calculate_cost("openai", "o3", usage).usd == Decimal("0.01")  # $2 / $8, cached

    bundled = data_snapshot.get_snapshot()
    providers = copy.deepcopy(bundled.providers)
    openai = next(p for p in providers if p.id == "openai")
    o3 = next(m for m in openai.models if m.id == "o3")
    o3.prices = ModelPrice(input_mtok=Decimal("3"), output_mtok=Decimal("9"))
    data_snapshot.set_custom_snapshot(
        data_snapshot.DataSnapshot(providers=providers, from_auto_update=True)
    )
    try:
        # 1000 x $3 + 1000 x $9 = (3000 + 9000) / 1M
        assert calculate_cost("openai", "o3", usage).usd == Decimal("0.012")
    finally:
        data_snapshot.set_custom_snapshot(None)
    assert calculate_cost("openai", "o3", usage).usd == Decimal("0.01")
