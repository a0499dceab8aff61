"""Reference suite: the cost of an event, through the real paths, equals a hand-computed
figure to 1e-9 USD.

Each case is one call, sent through every path that can carry it: the tracked OpenAI,
Anthropic and Gemini SDK clients over HTTP against the bundled fake provider (plain
and streamed), LangChain's ``ChatOpenAI`` (Chat Completions and Responses) and
``ChatAnthropic`` with a ``FluxGateHandler`` (``invoke``, ``stream``, ``ainvoke``,
``astream``, and a handler posting to a FluxGate site's ingest API), and the ingest API
(``POST /fluxgate/api/events/``). Events dated in the past can only come in through the
ingest API (or a spool replay, tested below). (No LangChain Gemini integration is
installed here: Gemini cases have no LangChain path.)

Hand figures are computed from the providers' published prices, USD per million tokens
(MTok), as listed on these pages (the dates are when the figures were checked against the
page, as recorded in the genai-prices data's ``price_comments``, unless said otherwise):

* OpenAI, https://platform.openai.com/docs/pricing (checked 2026-10-12 standard, flex
  and priority; 2026-10-14 Batch):
  - gpt-4o: input $2.50, cached input $1.25, output $10. Priority: $4.25 / $2.125 / $17.
    Batch: input $1.25, output $5; the Batch table publishes no cached-input rate, so
    cached input keeps $1.25 (as genai-prices and LiteLLM both give).
  - gpt-4o-2024-05-13: input $5, output $15, no cached-input discount.
  - o3: input $2, cached input $0.50, output $8 since 2025-06-10; $10 / $40 before
    (OpenAI changelog, 2025-06-10: "o3 price reduced by 80%"). Flex: $1 / $0.25 / $4.
  - o4-mini: input $1.10, cached input $0.275, output $4.40.
  Reasoning tokens are output tokens, billed once at the output rate.
* Anthropic, https://docs.claude.com/en/docs/about-claude/pricing (model pricing, long
  context pricing, batch processing; checked 2026-10-14):
  - claude-sonnet-4-5: input $3, 5-minute cache write $3.75, 1-hour cache write $6,
    cache read $0.30, output $15; a request over 200k input tokens (cache included) pays
    on every token: $6, $7.50, $12, $0.60, $22.50.
  - claude-haiku-4-5: input $1, 5-minute write $1.25, 1-hour write $2, read $0.10,
    output $5.
  - Message Batches: 50 % of every rate above, cache writes and reads included
    (https://docs.claude.com/en/docs/build-with-claude/batch-processing#pricing; since
    the Batches API launched in 2024, so also for events dated before genai-prices'
    batch rows start, 2026-10-14).
  Anthropic reports ``input_tokens`` without the cache tokens; FluxGate's total input is
  ``input + cache_creation + cache_read``.
* Google, https://ai.google.dev/gemini-api/docs/pricing (checked 2026-10-12):
  - gemini-2.5-pro: prompts up to 200k tokens: input $1.25, cached $0.125, output $10;
    over 200k (the whole prompt): $2.50, $0.25, $15. Thinking tokens are output.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import http.server
import json
import socket
import threading
import uuid
from decimal import Decimal

import httpx2
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langchain_openai import ChatOpenAI

from fluxgate_django import flush, track_anthropic, track_gemini, track_openai, tracking_context
from fluxgate_django.context import TrackingContext
from fluxgate_django.models import Event
from fluxgate_django.pipeline import finish_record, make_record
from fluxgate_django.pricing import calculate_cost, price_book
from fluxgate_django.recording import spool, write_events
from fluxgate_django.records import CallInfo, CostSource, Usage
from fluxgate_django.testing import FakeReply
from fluxgate_langchain import FluxGateHandler
from fluxgate_langchain.remote import get_sender
from tests.api_helpers import API, event_payload, make_world, post_json
from tests.helpers import MSGS

pytestmark = pytest.mark.django_db

EVENTS = f"{API}events/"
TOLERANCE = Decimal("1e-9")


@pytest.fixture(autouse=True)
def fresh_price_book():
    price_book.reset()
    yield
    price_book.reset()


@dataclasses.dataclass(frozen=True)
class Case:
    """One call. Tokens in FluxGate's convention: ``input`` is the total input, cache
    reads and writes included; ``output`` the total output, reasoning included."""

    id: str
    provider: str
    model: str
    input: int
    output: int
    expected: Decimal | None
    source: str
    reasoning: int = 0
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    tier: str | None = None
    #: ISO 8601; None: the call happens now.
    created_at: str | None = None
    paths: tuple[str, ...] = ()
    #: Through a LangChain stream, a call writing the cache at both TTLs is charged this,
    #: the most it may have cost (every write at the 1h rate), as ``usage-incomplete``
    #: (metadata ``cost_is_upper_bound``): langchain-anthropic builds a stream's usage
    #: from ``message_delta``, which has no TTL split, and the request's mixed
    #: breakpoints don't tell it.
    stream_bound: Decimal | None = None

    @property
    def cache_write(self) -> int:
        return self.cache_write_5m + self.cache_write_1h

    def bounded_on(self, path: str) -> bool:
        """Is ``path``'s cost the upper bound (``stream_bound``) rather than ``expected``?"""
        bounded = path in LANGCHAIN_STREAMS and bool(self.cache_write_5m and self.cache_write_1h)
        assert not bounded or self.stream_bound is not None, f"{self.id}: no stream_bound"
        return bounded

    def all_paths(self) -> tuple[str, ...]:
        if self.paths:
            return self.paths
        if self.created_at is not None:
            return ("ingest",)
        langchain = (*LANGCHAIN, *(ASYNC_LANGCHAIN if self.id in ASYNC_CASES else ()))
        return {
            "openai": ("openai-chat", "openai-chat-stream", "openai-responses", *langchain,
                       "langchain-responses", "langchain-responses-stream", "ingest"),
            "anthropic": (
                "anthropic-create",
                "anthropic-raw-stream",
                "anthropic-stream-helper",
                *langchain,
                "ingest",
            ),
            "gemini": ("gemini", "ingest"),
        }[self.provider]  # fmt: skip


#: A real ChatOpenAI / ChatAnthropic on the fake, with a ``FluxGateHandler`` callback that
#: records in-process, or (``-remote``) posts to a FluxGate site's ingest API.
LANGCHAIN = ("langchain-invoke", "langchain-stream", "langchain-remote", "langchain-remote-stream")
#: Run on an event loop: the event is written off the loop, from another thread, so the
#: test is a transactional one (about 0.5 s each on PostgreSQL, for the tables' flush).
#: The async hooks read usage with the sync ones' code: these cases cover what it
#: carries — cache reads, reasoning, 5m and 1h writes (exact, and a stream's bound).
ASYNC_LANGCHAIN = ("langchain-ainvoke", "langchain-astream")
ASYNC_PATHS = frozenset(ASYNC_LANGCHAIN)
ASYNC_CASES = frozenset({"gpt-4o-cached", "o4-mini-reasoning", "haiku-4-5-5m-and-1h-writes"})
LANGCHAIN_STREAMS = frozenset(
    {"langchain-stream", "langchain-astream", "langchain-remote-stream",
     "langchain-responses-stream"}
)  # fmt: skip
REMOTE_PATHS = frozenset({"langchain-remote", "langchain-remote-stream"})


CASES = [
    # -- OpenAI ---------------------------------------------------------------------------
    # 800 x $2.50 + 200 x $1.25 + 500 x $10 = (2000 + 250 + 5000) / 1M
    Case("gpt-4o-cached", "openai", "gpt-4o", 1000, 500, Decimal("0.00725"), "genai-prices",
         cache_read=200),
    # Batch: 800 x $1.25 + 200 cached x $1.25 (no batch cached rate) + 500 x $5
    #   = (1000 + 250 + 2500) / 1M   (a flat 0.5 multiplier would wrongly give 0.003625)
    Case("gpt-4o-batch-cached", "openai", "gpt-4o", 1000, 500, Decimal("0.00375"),
         "genai-prices+batch", cache_read=200, tier="batch",
         paths=("openai-chat", "openai-chat-stream", "langchain-invoke", "langchain-stream",
                "langchain-remote", "ingest")),
    # Priority: 800 x $4.25 + 200 x $2.125 + 500 x $17 = (3400 + 425 + 8500) / 1M
    Case("gpt-4o-priority-cached", "openai", "gpt-4o", 1000, 500, Decimal("0.012325"),
         "genai-prices+priority", cache_read=200, tier="priority",
         paths=("openai-chat", "langchain-invoke", "langchain-stream", "ingest")),
    # The dated snapshot keeps its launch price: 1000 x $5 + 500 x $15, cached input at
    # the input rate = (5000 + 7500) / 1M
    Case("gpt-4o-2024-05-13", "openai", "gpt-4o-2024-05-13", 1000, 500, Decimal("0.0125"),
         "genai-prices", cache_read=200),
    # 1000 x $1.10 + 1500 x $4.40 (1000 of them reasoning, billed once) = (1100 + 6600) / 1M
    Case("o4-mini-reasoning", "openai", "o4-mini", 1000, 1500, Decimal("0.0077"),
         "genai-prices", reasoning=1000),
    # o3 now: 1000 x $2 + 1000 x $8 = (2000 + 8000) / 1M
    Case("o3-now", "openai", "o3", 1000, 1000, Decimal("0.01"), "genai-prices"),
    # o3 flex now: 1000 x $1 + 1000 x $4 = (1000 + 4000) / 1M
    Case("o3-flex-now", "openai", "o3", 1000, 1000, Decimal("0.005"), "genai-prices+flex",
         tier="flex",
         paths=("openai-chat", "langchain-invoke", "langchain-stream", "langchain-remote",
                "ingest")),
    # o3 on 2025-05-01, before the 2025-06-10 price cut: 1000 x $10 + 1000 x $40
    #   = (10000 + 40000) / 1M
    Case("o3-2025-05-01", "openai", "o3", 1000, 1000, Decimal("0.05"), "genai-prices",
         created_at="2025-05-01T12:00:00Z"),
    # ... with reasoning: 1000 x $10 + 1500 x $40 = (10000 + 60000) / 1M
    Case("o3-2025-05-01-reasoning", "openai", "o3", 1000, 1500, Decimal("0.07"),
         "genai-prices", reasoning=1000, created_at="2025-05-01T12:00:00Z"),
    # The last minute of the old price (UTC), then the first of the new one.
    Case("o3-2025-06-09-last-minute", "openai", "o3", 1000, 1000, Decimal("0.05"),
         "genai-prices", created_at="2025-06-09T23:59:00Z"),
    Case("o3-2025-06-10-first-minute", "openai", "o3", 1000, 1000, Decimal("0.01"),
         "genai-prices", created_at="2025-06-10T00:00:00Z"),
    # 01:00 in UTC+2 on 2025-06-10 is 23:00 UTC on 2025-06-09: still the old price.
    Case("o3-2025-06-10-at-utc+2", "openai", "o3", 1000, 1000, Decimal("0.05"),
         "genai-prices", created_at="2025-06-10T01:00:00+02:00"),
    # -- Anthropic -------------------------------------------------------------------------
    # 1h writes on a tiered model (issue 14 item 1): 1000 x $3 + 4000 x $6 + 10 x $15
    #   = (3000 + 24000 + 150) / 1M   (at the 5-minute rate: wrongly 0.01815)
    Case("sonnet-4-5-1h-writes", "anthropic", "claude-sonnet-4-5", 5000, 10,
         Decimal("0.02715"), "genai-prices", cache_write_1h=4000),
    # 100 x $3 + 1000 x $3.75 + 2000 x $6 + 100 x $15 = (300 + 3750 + 12000 + 1500) / 1M
    # LangChain streams, every write at the 1h rate: 100 x $3 + 3000 x $6 + 100 x $15
    #   = (300 + 18000 + 1500) / 1M
    Case("sonnet-4-5-5m-and-1h-writes", "anthropic", "claude-sonnet-4-5", 3100, 100,
         Decimal("0.01755"), "genai-prices", cache_write_5m=1000, cache_write_1h=2000,
         stream_bound=Decimal("0.0198")),
    # Over 200k (210,000 input with the cache): 10,000 x $6 + 200,000 x $12 + 1000 x $22.50
    #   = (60000 + 2400000 + 22500) / 1M   (at the 5-minute rate: wrongly 1.5825)
    Case("sonnet-4-5-over-200k-1h-writes", "anthropic", "claude-sonnet-4-5", 210_000, 1000,
         Decimal("2.4825"), "genai-prices", cache_write_1h=200_000),
    # Over 200k, every kind: 150,000 x $6 + 20,000 x $7.50 + 30,000 x $12 + 10,000 x $0.60
    #   + 2000 x $22.50 = (900000 + 150000 + 360000 + 6000 + 45000) / 1M
    # LangChain streams: 150,000 x $6 + 50,000 x $12 + 10,000 x $0.60 + 2000 x $22.50
    #   = (900000 + 600000 + 6000 + 45000) / 1M
    Case("sonnet-4-5-over-200k-all-kinds", "anthropic", "claude-sonnet-4-5", 210_000, 2000,
         Decimal("1.461"), "genai-prices", cache_read=10_000, cache_write_5m=20_000,
         cache_write_1h=30_000, stream_bound=Decimal("1.551")),
    # Exactly 200,000 input is not over 200k: 199,000 x $3 + 1000 x $6 = (597000 + 6000) / 1M
    Case("sonnet-4-5-at-200k", "anthropic", "claude-sonnet-4-5", 200_000, 0,
         Decimal("0.603"), "genai-prices", cache_write_1h=1000),
    # Batch now (genai-prices' own batch rows): 1000 x $1.50 + 1000 x $1.875 + 2000 x $3
    #   + 2000 x $0.15 + 500 x $7.50 = (1500 + 1875 + 6000 + 300 + 3750) / 1M
    # LangChain streams: 1000 x $1.50 + 3000 x $3 + 2000 x $0.15 + 500 x $7.50
    #   = (1500 + 9000 + 300 + 3750) / 1M
    Case("sonnet-4-5-batch", "anthropic", "claude-sonnet-4-5", 6000, 500,
         Decimal("0.013425"), "genai-prices+batch", cache_read=2000, cache_write_5m=1000,
         cache_write_1h=2000, tier="batch", stream_bound=Decimal("0.01455"),
         paths=("anthropic-create", "langchain-invoke", "langchain-stream",
                "langchain-remote-stream", "ingest")),
    # The same batch call on 2026-09-01, before genai-prices' batch rows: Anthropic's 50 %
    # applies all the same, here through FluxGate's multiplier (and the label says so):
    # (1000 x $3 + 1000 x $3.75 + 2000 x $6 + 2000 x $0.30 + 500 x $15) / 2
    #   = (3000 + 3750 + 12000 + 600 + 7500) / 2 / 1M
    Case("sonnet-4-5-batch-2026-09-01", "anthropic", "claude-sonnet-4-5", 6000, 500,
         Decimal("0.013425"), "genai-prices+batch*0.5", cache_read=2000,
         cache_write_5m=1000, cache_write_1h=2000, tier="batch",
         created_at="2026-09-01T08:00:00Z"),
    # Batch over 200k with 1h writes: 10,000 x $3 + 200,000 x $6 + 1000 x $11.25
    #   = (30000 + 1200000 + 11250) / 1M
    Case("sonnet-4-5-batch-over-200k", "anthropic", "claude-sonnet-4-5", 210_000, 1000,
         Decimal("1.24125"), "genai-prices+batch", cache_write_1h=200_000, tier="batch",
         paths=("anthropic-create", "langchain-invoke", "langchain-stream", "ingest")),
    # A flat-priced model: 1000 x $1 + 1000 x $1.25 + 2000 x $2 + 2000 x $0.10 + 500 x $5
    #   = (1000 + 1250 + 4000 + 200 + 2500) / 1M
    # LangChain streams: 1000 x $1 + 3000 x $2 + 2000 x $0.10 + 500 x $5
    #   = (1000 + 6000 + 200 + 2500) / 1M
    Case("haiku-4-5-5m-and-1h-writes", "anthropic", "claude-haiku-4-5", 6000, 500,
         Decimal("0.00895"), "genai-prices", cache_read=2000, cache_write_5m=1000,
         cache_write_1h=2000, stream_bound=Decimal("0.0097")),
    # -- Gemini ----------------------------------------------------------------------------
    # Over 200k: 200,000 x $2.50 + 50,000 cached x $0.25 + 1000 x $15
    #   = (500000 + 12500 + 15000) / 1M
    Case("gemini-2.5-pro-over-200k", "gemini", "gemini-2.5-pro", 250_000, 1000,
         Decimal("0.5275"), "genai-prices", cache_read=50_000),
    # Up to 200k, thinking billed as output: 800 x $1.25 + 200 x $0.125 + 1500 x $10
    #   = (1000 + 25 + 15000) / 1M
    Case("gemini-2.5-pro-thinking", "gemini", "gemini-2.5-pro", 1000, 1500,
         Decimal("0.016025"), "genai-prices", cache_read=200, reasoning=1000),
    # -- unknown: never a silent 0 -----------------------------------------------------------
    Case("unknown-model", "openai", "acme-llm-9000", 1000, 500, None, "unknown",
         paths=("openai-chat", "langchain-invoke", "langchain-stream", "langchain-remote",
                "ingest")),
    Case("unknown-model-2025", "openai", "acme-llm-9000", 1000, 500, None, "unknown",
         created_at="2025-05-01T12:00:00Z"),
]  # fmt: skip


# -- the paths ------------------------------------------------------------------------------


def fake_reply(case: Case) -> FakeReply:
    """The provider's own usage fields for ``case``."""
    if case.provider == "anthropic":
        return FakeReply(
            input_tokens=case.input - case.cache_read - case.cache_write,  # cache-exclusive
            cached_tokens=case.cache_read,
            cache_write_tokens=case.cache_write_5m,
            cache_write_1h_tokens=case.cache_write_1h,
            output_tokens=case.output,
        )
    if case.provider == "gemini":
        return FakeReply(
            input_tokens=case.input,  # Gemini's prompt count includes the cached tokens
            cached_tokens=case.cache_read,
            output_tokens=case.output - case.reasoning,  # candidates exclude thoughts
            reasoning_tokens=case.reasoning,
        )
    return FakeReply(
        input_tokens=case.input,  # OpenAI's prompt_tokens include the cached tokens
        cached_tokens=case.cache_read,
        output_tokens=case.output,  # completion_tokens include reasoning
        reasoning_tokens=case.reasoning,
    )


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


def langchain_model(case: Case, path: str, fake, stack: contextlib.ExitStack) -> BaseChatModel:
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
    if case.tier in REQUESTED_TIERS:
        options["service_tier"] = case.tier
        options["http_client"] = stack.enter_context(httpx2.Client(transport=_ServedTier()))
    # stream_usage: off by default with a base_url, and a stream then reports no usage
    return ChatOpenAI(
        model=case.model,
        api_key="sk-test-key",
        base_url=fake.openai_base_url,
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


def relayed(relay: SiteRelay) -> Event:
    """The one event the remote handler sent, ingested by this site's API."""
    assert get_sender(relay.url, RELAY_KEY).flush(timeout=10)  # (its sender only)
    (sent,) = relay.events
    relay.events.clear()
    assert sent["cost_usd"] is None  # the site prices it
    response = post_json(make_world().client("key_a"), EVENTS, {"events": [sent]})
    assert response.status_code == 202, response.content
    return Event.objects.get(tracking_id=sent["tracking_id"])


def langchain_call(case: Case, path: str, request: pytest.FixtureRequest) -> Event:
    fake = request.getfixturevalue("fake")
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
    with contextlib.ExitStack() as stack, tracking_context(service_tier=declared):
        model = langchain_model(case, path, fake, stack)
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
        event = relayed(request.getfixturevalue("site_relay"))
    else:
        event = Event.objects.get()
    assert event.source == "langchain"
    assert event.streamed == (path in LANGCHAIN_STREAMS)
    assert event.operation == (
        "responses" if "responses" in path else {"anthropic": "messages"}.get(case.provider, "chat")
    )
    return event


def tracked_call(case: Case, path: str, request: pytest.FixtureRequest) -> Event:
    if path.startswith("langchain"):
        return langchain_call(case, path, request)
    fake = request.getfixturevalue("fake")
    fake.enqueue(fake_reply(case))
    with tracking_context(service_tier=case.tier):
        if path.startswith("openai"):
            client = track_openai(request.getfixturevalue("openai_client"))
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
            else:
                result = client.responses.create(model=case.model, input="hi")
        elif path.startswith("anthropic"):
            client = track_anthropic(request.getfixturevalue("anthropic_client"))
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
        else:
            client = track_gemini(request.getfixturevalue("gemini_client"))
            result = client.models.generate_content(model=case.model, contents="hi")
    return Event.objects.get(tracking_id=result.fluxgate.tracking_id)


def ingest_payload(case: Case) -> dict:
    payload = event_payload(
        provider=case.provider,
        model=case.model,
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
    return payload


def ingested(case: Case) -> Event:
    api = make_world().client("key_a")
    payload = ingest_payload(case)
    response = post_json(api, EVENTS, payload)
    assert response.status_code == 202, response.content
    return Event.objects.get(tracking_id=payload["tracking_id"])


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
    # The path carried the usage whole (FluxGate's convention).
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


def _marks(path: str) -> tuple[pytest.MarkDecorator, ...]:
    # An async run's event is written by another thread: it must see committed rows.
    return (pytest.mark.django_db(transaction=True),) if path in ASYNC_PATHS else ()


@pytest.mark.parametrize(
    ("case", "path"),
    [pytest.param(c, p, id=f"{c.id}/{p}", marks=_marks(p)) for c in CASES for p in c.all_paths()],
)
def test_reference_cost(case, path, request):
    if path == "ingest":
        event = ingested(case)
        if case.created_at:
            assert event.created_at == dt.datetime.fromisoformat(case.created_at)
    else:
        event = tracked_call(case, path, request)
        assert event.service_tier == (case.tier or event.service_tier)
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
