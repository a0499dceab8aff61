"""The cases of the cost reference suite (``tests/test_cost_reference.py``): one call each,
its usage in FluxGate's convention, and its cost computed by hand from the provider's
published prices, the figures' source in a comment beside each case.

Prices are USD per million tokens (MTok), from these pages (the dates are when the
figures were checked against the page, as recorded in the genai-prices data's
``price_comments``, unless said otherwise):

* OpenAI, https://platform.openai.com/docs/pricing (checked 2026-10-12 standard, flex
  and priority; 2026-10-14 Batch and embeddings). Input / cached input / output:
  - gpt-4o (and its snapshots gpt-4o-2024-08-06, gpt-4o-2024-11-20): $2.50 / $1.25 / $10.
    Priority: $4.25 / $2.125 / $17. Batch: $1.25 / (none) / $5.
  - gpt-4o-2024-05-13: $5 / (no cached-input discount) / $15.
  - gpt-4o-mini: $0.15 / $0.075 / $0.60. Batch: $0.075 / (none) / $0.30.
  - gpt-4.1 (gpt-4.1-2025-04-14): $2 / $0.50 / $8. Priority: $3.50 / $0.875 / $14.
    Batch: $1 / (none) / $4.
  - gpt-4.1-mini: $0.40 / $0.10 / $1.60. gpt-4.1-nano: $0.10 / $0.025 / $0.40.
  - o3: $2 / $0.50 / $8 since 2025-06-10; $10 / $2.50 / $40 from its launch (2025-04-16)
    until then (OpenAI changelog, 2025-06-10: "o3 price reduced by 80%"; the cached-input
    change recorded in langfuse/langfuse#7223). Flex: $1 / $0.25 / $4. Priority: $3.50 /
    $0.875 / $14. Batch: $1 / (none) / $4.
  - o4-mini (o4-mini-2025-04-16): $1.10 / $0.275 / $4.40. Flex: $0.55 / $0.138 (as
    published, not $0.1375) / $2.20. Priority: $2 / $0.50 / $8.
  - o3-mini: $1.10 / $0.55 / $4.40. o1: $15 / $7.50 / $60.
  - gpt-5 (gpt-5-2025-08-07): $1.25 / $0.125 / $10. Flex and Batch: $0.625 / $0.0625 /
    $5. Priority: $2.50 / $0.25 / $20.
  - gpt-5-mini (gpt-5-mini-2025-08-07): $0.25 / $0.025 / $2.
  - gpt-5-nano: $0.05 / $0.005 / $0.40. Flex: $0.025 / $0.0025 / $0.20.
  - Embeddings: text-embedding-3-small $0.02 (Batch $0.01), text-embedding-3-large $0.13,
    text-embedding-ada-002 $0.10.
  Where the Batch table publishes no cached-input rate, cached input keeps the standard
  rate (as genai-prices and LiteLLM both give). Reasoning tokens are output tokens,
  billed once at the output rate. OpenAI reports the dated snapshot that served a call
  (``gpt-4o`` → ``gpt-4o-2024-08-06``): the served model's price applies.
* Anthropic, https://docs.claude.com/en/docs/about-claude/pricing (model pricing, long
  context pricing, batch processing; checked 2026-10-14). Input / 5-minute cache write /
  1-hour cache write / cache read / output:
  - claude-sonnet-4-5, claude-sonnet-4 (claude-sonnet-4-20250514), claude-sonnet-4-6,
    claude-3-7-sonnet: $3 / $3.75 / $6 / $0.30 / $15. Sonnet 4.5, and Sonnet 4 from its
    1M-context beta (2025-08-12, https://www.anthropic.com/news/1m-context), over 200k
    input tokens (cache included) on every token: $6 / $7.50 / $12 / $0.60 / $22.50.
  - claude-opus-4-1 (claude-opus-4-1-20250805), claude-opus-4 (claude-opus-4-20250514):
    $15 / $18.75 / $30 / $1.50 / $75.
  - claude-opus-4-5: $5 / $6.25 / $10 / $0.50 / $25.
  - claude-haiku-4-5: $1 / $1.25 / $2 / $0.10 / $5.
  - claude-3-5-haiku (claude-3-5-haiku-20241022): $0.80 / $1 / $1.60 / $0.08 / $4.
  - Message Batches: 50 % of every rate above, cache writes and reads included
    (https://docs.claude.com/en/docs/build-with-claude/batch-processing#pricing; since
    the Batches API launched in 2024, so also for events dated before genai-prices'
    batch rows start, 2026-10-14, and for models it has no batch rows for).
  Anthropic reports ``input_tokens`` without the cache tokens; FluxGate's total input is
  ``input + cache_creation + cache_read``. Asked for an alias it reports the dated model.
* Google, https://ai.google.dev/gemini-api/docs/pricing (checked 2026-10-12; Batch tab
  2026-10-14). Input / cached input / output (thinking tokens are output):
  - gemini-2.5-pro: prompts up to 200k tokens $1.25 / $0.125 / $10; over 200k (the whole
    prompt) $2.50 / $0.25 / $15. Batch: half the input and output prices in both tiers
    ($0.625 / $5; $1.25 / $7.50), context caching at the standard rate.
  - gemini-2.5-flash: $0.30 / $0.03 / $2.50. Batch: $0.15 / $0.03 / $1.25.
  - gemini-2.5-flash-lite: $0.10 / $0.01 / $0.40. gemini-2.0-flash: $0.10 / $0.025 / $0.40.
  - gemini-1.5-pro: prompts up to 128k $1.25 / $0.3125 / $5, over 128k $2.50 / $0.625 /
    $10, from Google's 2024-10-01 price cut; before it $3.50 / $0.875 / $10.50 and $7 /
    $1.75 / $21 (https://developers.googleblog.com/en/updated-gemini-models-reduced-15-pro-pricing-increased-rate-limits-and-more/,
    2024-09-24: 64 % off input and cached input, 52 % off output, from 2024-10-01).
  - gemini-1.5-flash: up to 128k $0.075 / $0.01875 / $0.30, over 128k $0.15 / $0.0375 /
    $0.60.
  - gemini-embedding-001: $0.15 input.
* OpenRouter: the ``usage.cost`` it reports is what it bills, and is the cost
  (https://openrouter.ai/docs/use-cases/usage-accounting). Without one, its model pages'
  prices, which pass the provider's own through (https://openrouter.ai/openai/gpt-4o-mini:
  $0.15 / cached $0.075 / $0.60; https://openrouter.ai/anthropic/claude-sonnet-4.5: $3 /
  cache read $0.30 / $15; undated: the same figures as OpenAI's and Anthropic's above).
* ``ModelPrice`` overrides: the site's own prices, written in the case (the hand figure
  uses them); an override comes before the supplement and genai-prices, for the served
  model or the requested one.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

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
#: An embeddings call: the tracked SDK's ``embeddings.create``, LangChain's
#: ``OpenAIEmbeddings`` wrapped by ``track_embeddings``, and the ingest API.
EMBEDDING_PATHS = ("openai-embeddings", "langchain-embeddings", "ingest")
#: OpenRouter, an OpenAI-compatible gateway: the tracked OpenAI SDK client and ChatOpenAI
#: on OpenRouter's base URL (named ``openrouter`` from it), and the ingest API.
OPENROUTER_PATHS = ("openai-chat", "openai-chat-stream", *LANGCHAIN, "ingest")
#: langchain-openai drops ``usage.cost`` from stream chunks: a LangChain stream of a call
#: with a reported cost is priced instead (tests/test_langchain_costs.py), not used here.
REPORTED_COST_PATHS = ("openai-chat", "openai-chat-stream", "langchain-invoke",
                       "langchain-remote", "ingest")  # fmt: skip

#: ``ModelPrice`` fields of an override, by the short names the cases use.
_PRICE_FIELDS = {
    "input": "input_per_mtok",
    "output": "output_per_mtok",
    "cache_read": "cache_read_per_mtok",
    "cache_write": "cache_write_per_mtok",
    "cache_write_1h": "cache_write_1h_per_mtok",
    "tier_over": "tier_threshold_tokens",
    "tier_input": "tier_input_per_mtok",
    "tier_output": "tier_output_per_mtok",
    "tier_cache_read": "tier_cache_read_per_mtok",
    "tier_cache_write": "tier_cache_write_per_mtok",
    "tier_cache_write_1h": "tier_cache_write_1h_per_mtok",
}


@dataclasses.dataclass(frozen=True)
class Override:
    """A site's ``ModelPrice`` row, saved before the call."""

    model: str
    prices: tuple[tuple[str, Any], ...]

    def fields(self) -> dict[str, Any]:
        return {
            _PRICE_FIELDS[name]: value if name == "tier_over" else Decimal(value)
            for name, value in self.prices
        }


def override(model: str, **prices: Any) -> Override:
    return Override(model, tuple(prices.items()))


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
    #: The model the provider says served the call (a dated snapshot); None: ``model``.
    served: str | None = None
    operation: str = "chat"
    #: The cost the provider reported (OpenRouter's ``usage.cost``).
    reported_cost: Decimal | None = None
    #: The context's ``openrouter_cost`` (a cost the caller got from OpenRouter itself).
    context_cost: Decimal | None = None
    override: Override | None = None

    @property
    def cache_write(self) -> int:
        return self.cache_write_5m + self.cache_write_1h

    @property
    def served_model(self) -> str:
        return self.served or self.model

    @property
    def known_cost(self) -> Decimal | None:
        """A cost the call comes with (not priced by FluxGate)."""
        return self.reported_cost if self.reported_cost is not None else self.context_cost

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
        if self.operation == "embeddings":
            # (No tracked Gemini embeddings call: a Gemini embedding comes in by the API.)
            return EMBEDDING_PATHS if self.provider == "openai" else ("ingest",)
        if self.provider == "openrouter":
            return REPORTED_COST_PATHS if self.known_cost is not None else OPENROUTER_PATHS
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
            "gemini": ("gemini", "gemini-stream", "ingest"),
        }[self.provider]  # fmt: skip


D = Decimal

#: Paths for a call on a service tier. Batch is a separate API, not a chat call: declared
#: with ``tracking_context`` on a chat path; flex and priority are named in the request.
OPENAI_TIER_PATHS = ("openai-chat", "openai-responses", "langchain-invoke", "langchain-stream",
                     "langchain-responses", "ingest")  # fmt: skip
ANTHROPIC_TIER_PATHS = ("anthropic-create", "langchain-invoke", "langchain-stream", "ingest")

CASES = [
    # == OpenAI ===============================================================================
    # 800 x $2.50 + 200 x $1.25 + 500 x $10 = (2000 + 250 + 5000) / 1M
    Case("gpt-4o-cached", "openai", "gpt-4o", 1000, 500, D("0.00725"), "genai-prices",
         cache_read=200),
    # Batch: 800 x $1.25 + 200 cached x $1.25 (no batch cached rate) + 500 x $5
    #   = (1000 + 250 + 2500) / 1M   (a flat 0.5 multiplier would wrongly give 0.003625)
    Case("gpt-4o-batch-cached", "openai", "gpt-4o", 1000, 500, D("0.00375"),
         "genai-prices+batch", cache_read=200, tier="batch",
         paths=("openai-chat", "openai-chat-stream", "langchain-invoke", "langchain-stream",
                "langchain-remote", "ingest")),
    # Priority: 800 x $4.25 + 200 x $2.125 + 500 x $17 = (3400 + 425 + 8500) / 1M
    Case("gpt-4o-priority-cached", "openai", "gpt-4o", 1000, 500, D("0.012325"),
         "genai-prices+priority", cache_read=200, tier="priority",
         paths=("openai-chat", "langchain-invoke", "langchain-stream", "ingest")),
    # The dated snapshot keeps its launch price: 1000 x $5 + 500 x $15, cached input at
    # the input rate = (5000 + 7500) / 1M
    Case("gpt-4o-2024-05-13", "openai", "gpt-4o-2024-05-13", 1000, 500, D("0.0125"),
         "genai-prices", cache_read=200),
    # Asked for gpt-4o, served by that old snapshot: its price, not the alias's (0.00725).
    Case("gpt-4o-served-by-2024-05-13", "openai", "gpt-4o", 1000, 500, D("0.0125"),
         "genai-prices", cache_read=200, served="gpt-4o-2024-05-13"),
    # Asked for gpt-4o, served by gpt-4o-2024-08-06 (what OpenAI reports): gpt-4o's price,
    # 1000 x $2.50 + 100 x $10 = (2500 + 1000) / 1M
    Case("gpt-4o-served-by-2024-08-06", "openai", "gpt-4o", 1000, 100, D("0.0035"),
         "genai-prices", served="gpt-4o-2024-08-06"),
    # Asked for by its dated name: 1000 x $2.50 + 1000 x $1.25 + 300 x $10
    #   = (2500 + 1250 + 3000) / 1M
    Case("gpt-4o-2024-08-06-cached", "openai", "gpt-4o-2024-08-06", 2000, 300, D("0.00675"),
         "genai-prices", cache_read=1000),
    # 2000 x $2.50 + 1000 x $1.25 + 1000 x $10 = (5000 + 1250 + 10000) / 1M
    Case("gpt-4o-2024-11-20-cached", "openai", "gpt-4o-2024-11-20", 3000, 1000, D("0.01625"),
         "genai-prices", cache_read=1000,
         paths=("openai-chat", "openai-responses", "langchain-invoke", "ingest")),
    # A snapshot no price data knows: the requested model's price (gpt-4o's 0.00725).
    Case("gpt-4o-served-by-unknown-snapshot", "openai", "gpt-4o", 1000, 500, D("0.00725"),
         "genai-prices", cache_read=200, served="gpt-4o-2099-01-01",
         paths=("openai-chat", "openai-chat-stream", "langchain-invoke", "langchain-stream",
                "langchain-remote", "ingest")),
    # 600 x $0.15 + 400 x $0.075 + 500 x $0.60 = (90 + 30 + 300) / 1M
    Case("gpt-4o-mini-cached", "openai", "gpt-4o-mini", 1000, 500, D("0.00042"),
         "genai-prices", cache_read=400),
    # Batch: 600 x $0.075 + 400 cached x $0.075 (no batch cached rate: standard)
    #   + 500 x $0.30 = (45 + 30 + 150) / 1M
    Case("gpt-4o-mini-batch-cached", "openai", "gpt-4o-mini", 1000, 500, D("0.000225"),
         "genai-prices+batch", cache_read=400, tier="batch", paths=OPENAI_TIER_PATHS),
    # Served by its dated snapshot: 2000 x $2 + 8000 x $0.50 + 1000 x $8
    #   = (4000 + 4000 + 8000) / 1M
    Case("gpt-4.1-cached", "openai", "gpt-4.1", 10_000, 1000, D("0.016"), "genai-prices",
         cache_read=8000, served="gpt-4.1-2025-04-14"),
    # Priority: 800 x $3.50 + 200 x $0.875 + 500 x $14 = (2800 + 175 + 7000) / 1M
    Case("gpt-4.1-priority-cached", "openai", "gpt-4.1", 1000, 500, D("0.009975"),
         "genai-prices+priority", cache_read=200, tier="priority", paths=OPENAI_TIER_PATHS),
    # Batch: 1000 x $1 + 500 x $4 = (1000 + 2000) / 1M
    Case("gpt-4.1-batch", "openai", "gpt-4.1", 1000, 500, D("0.003"), "genai-prices+batch",
         tier="batch", paths=OPENAI_TIER_PATHS),
    # 4000 x $0.40 + 1000 x $0.10 + 2000 x $1.60 = (1600 + 100 + 3200) / 1M
    Case("gpt-4.1-mini-cached", "openai", "gpt-4.1-mini", 5000, 2000, D("0.0049"),
         "genai-prices", cache_read=1000),
    # 50,000 x $0.10 + 50,000 x $0.025 + 10,000 x $0.40 = (5000 + 1250 + 4000) / 1M
    Case("gpt-4.1-nano-cached", "openai", "gpt-4.1-nano", 100_000, 10_000, D("0.01025"),
         "genai-prices", cache_read=50_000),
    # 1000 x $1.10 + 1500 x $4.40 (1000 of them reasoning, billed once) = (1100 + 6600) / 1M
    Case("o4-mini-reasoning", "openai", "o4-mini", 1000, 1500, D("0.0077"),
         "genai-prices", reasoning=1000),
    # By its dated name: 1000 x $1.10 + 1000 x $0.275 + 1000 x $4.40 = (1100 + 275 + 4400) / 1M
    Case("o4-mini-2025-04-16-cached-reasoning", "openai", "o4-mini-2025-04-16", 2000, 1000,
         D("0.005775"), "genai-prices", cache_read=1000, reasoning=500),
    # Flex: 5000 x $0.55 + 5000 x $0.138 + 4000 x $2.20 = (2750 + 690 + 8800) / 1M
    Case("o4-mini-flex-cached-reasoning", "openai", "o4-mini", 10_000, 4000, D("0.01224"),
         "genai-prices+flex", cache_read=5000, reasoning=3000, tier="flex",
         paths=OPENAI_TIER_PATHS),
    # Priority: 500 x $2 + 500 x $0.50 + 1000 x $8 = (1000 + 250 + 8000) / 1M
    Case("o4-mini-priority-cached", "openai", "o4-mini", 1000, 1000, D("0.00925"),
         "genai-prices+priority", cache_read=500, tier="priority", paths=OPENAI_TIER_PATHS),
    # o3 now: 1000 x $2 + 1000 x $8 = (2000 + 8000) / 1M
    Case("o3-now", "openai", "o3", 1000, 1000, D("0.01"), "genai-prices"),
    # 500 x $2 + 1500 x $0.50 + 3000 x $8 (2500 reasoning) = (1000 + 750 + 24000) / 1M
    Case("o3-cached-reasoning", "openai", "o3", 2000, 3000, D("0.02575"), "genai-prices",
         cache_read=1500, reasoning=2500),
    # o3 flex now: 1000 x $1 + 1000 x $4 = (1000 + 4000) / 1M
    Case("o3-flex-now", "openai", "o3", 1000, 1000, D("0.005"), "genai-prices+flex",
         tier="flex",
         paths=("openai-chat", "langchain-invoke", "langchain-stream", "langchain-remote",
                "ingest")),
    # Flex: 400 x $1 + 600 x $0.25 + 2000 x $4 = (400 + 150 + 8000) / 1M
    Case("o3-flex-cached-reasoning", "openai", "o3", 1000, 2000, D("0.00855"),
         "genai-prices+flex", cache_read=600, reasoning=1500, tier="flex",
         paths=OPENAI_TIER_PATHS),
    # Priority: 1000 x $3.50 + 1000 x $14 = (3500 + 14000) / 1M
    Case("o3-priority-reasoning", "openai", "o3", 1000, 1000, D("0.0175"),
         "genai-prices+priority", reasoning=800, tier="priority", paths=OPENAI_TIER_PATHS),
    # Batch: 800 x $1 + 200 cached x $0.50 (no batch cached rate) + 500 x $4
    #   = (800 + 100 + 2000) / 1M
    Case("o3-batch-cached", "openai", "o3", 1000, 500, D("0.0029"), "genai-prices+batch",
         cache_read=200, tier="batch", paths=OPENAI_TIER_PATHS),
    # 1000 x $1.10 + 1000 x $0.55 + 1000 x $4.40 = (1100 + 550 + 4400) / 1M
    Case("o3-mini-cached", "openai", "o3-mini", 2000, 1000, D("0.00605"), "genai-prices",
         cache_read=1000, paths=("openai-chat", "openai-responses", "langchain-invoke", "ingest")),
    # 500 x $15 + 500 x $7.50 + 2000 x $60 = (7500 + 3750 + 120000) / 1M
    Case("o1-cached-reasoning", "openai", "o1", 1000, 2000, D("0.13125"), "genai-prices",
         cache_read=500, reasoning=1500,
         paths=("openai-chat", "openai-responses", "langchain-invoke", "ingest")),
    # 1000 x $1.25 + 9000 x $0.125 + 5000 x $10 = (1250 + 1125 + 50000) / 1M
    Case("gpt-5-cached-reasoning", "openai", "gpt-5", 10_000, 5000, D("0.052375"),
         "genai-prices", cache_read=9000, reasoning=4000, served="gpt-5-2025-08-07"),
    # Flex: 800 x $0.625 + 200 x $0.0625 + 1000 x $5 = (500 + 12.5 + 5000) / 1M
    Case("gpt-5-flex-cached", "openai", "gpt-5", 1000, 1000, D("0.0055125"),
         "genai-prices+flex", cache_read=200, tier="flex", paths=OPENAI_TIER_PATHS),
    # Priority: 1000 x $2.50 + 1000 x $20 = (2500 + 20000) / 1M
    Case("gpt-5-priority", "openai", "gpt-5", 1000, 1000, D("0.0225"),
         "genai-prices+priority", reasoning=600, tier="priority", paths=OPENAI_TIER_PATHS),
    # Batch (with its own cached rate): 500 x $0.625 + 500 x $0.0625 + 1000 x $5
    #   = (312.5 + 31.25 + 5000) / 1M
    Case("gpt-5-batch-cached", "openai", "gpt-5", 1000, 1000, D("0.00534375"),
         "genai-prices+batch", cache_read=500, tier="batch", paths=OPENAI_TIER_PATHS),
    # 2000 x $0.25 + 2000 x $0.025 + 2000 x $2 = (500 + 50 + 4000) / 1M
    Case("gpt-5-mini-cached-reasoning", "openai", "gpt-5-mini", 4000, 2000, D("0.00455"),
         "genai-prices", cache_read=2000, reasoning=1500, served="gpt-5-mini-2025-08-07"),
    # Flex: 80,000 x $0.025 + 20,000 x $0.0025 + 10,000 x $0.20 = (2000 + 50 + 2000) / 1M
    Case("gpt-5-nano-flex-cached", "openai", "gpt-5-nano", 100_000, 10_000, D("0.00405"),
         "genai-prices+flex", cache_read=20_000, tier="flex", paths=OPENAI_TIER_PATHS),
    # -- OpenAI, dated: o3 before and after its 2025-06-10 price cut ------------------------
    # o3 on 2025-05-01, before the 2025-06-10 price cut: 1000 x $10 + 1000 x $40
    #   = (10000 + 40000) / 1M
    Case("o3-2025-05-01", "openai", "o3", 1000, 1000, D("0.05"), "genai-prices",
         created_at="2025-05-01T12:00:00Z"),
    # ... with reasoning: 1000 x $10 + 1500 x $40 = (10000 + 60000) / 1M
    Case("o3-2025-05-01-reasoning", "openai", "o3", 1000, 1500, D("0.07"),
         "genai-prices", reasoning=1000, created_at="2025-05-01T12:00:00Z"),
    # ... with cached input at its launch price: 800 x $10 + 200 x $2.50 + 1000 x $40
    #   = (8000 + 500 + 40000) / 1M   (the supplement's row: genai-prices has $0.50 then)
    Case("o3-2025-05-01-cached", "openai", "o3", 1000, 1000, D("0.0485"), "supplement",
         cache_read=200, created_at="2025-05-01T12:00:00Z"),
    # ... and from the cut: 800 x $2 + 200 x $0.50 + 1000 x $8 = (1600 + 100 + 8000) / 1M
    Case("o3-2025-06-10-cached", "openai", "o3", 1000, 1000, D("0.0097"), "genai-prices",
         cache_read=200, created_at="2025-06-10T09:00:00Z"),
    # The last minute of the old price (UTC), then the first of the new one.
    Case("o3-2025-06-09-last-minute", "openai", "o3", 1000, 1000, D("0.05"),
         "genai-prices", created_at="2025-06-09T23:59:00Z"),
    Case("o3-2025-06-10-first-minute", "openai", "o3", 1000, 1000, D("0.01"),
         "genai-prices", created_at="2025-06-10T00:00:00Z"),
    # 01:00 in UTC+2 on 2025-06-10 is 23:00 UTC on 2025-06-09: still the old price.
    Case("o3-2025-06-10-at-utc+2", "openai", "o3", 1000, 1000, D("0.05"),
         "genai-prices", created_at="2025-06-10T01:00:00+02:00"),
    # gpt-4o Batch before genai-prices' batch rows (2026-10-14): the same published
    # figures, cached input not discounted further (the supplement's row):
    # 800 x $1.25 + 200 x $1.25 + 500 x $5 = (1000 + 250 + 2500) / 1M
    Case("gpt-4o-batch-cached-2025-03-01", "openai", "gpt-4o", 1000, 500, D("0.00375"),
         "supplement+batch", cache_read=200, tier="batch", created_at="2025-03-01T08:00:00Z"),
    Case("gpt-4o-batch-cached-2026-10-13-last-minute", "openai", "gpt-4o", 1000, 500,
         D("0.00375"), "supplement+batch", cache_read=200, tier="batch",
         created_at="2026-10-13T23:59:00Z"),
    # -- OpenAI embeddings -------------------------------------------------------------------
    # 12,345 x $0.02 = 246.9 / 1M
    Case("text-embedding-3-small", "openai", "text-embedding-3-small", 12_345, 0,
         D("0.0002469"), "genai-prices", operation="embeddings"),
    # 8000 x $0.13 = 1040 / 1M
    Case("text-embedding-3-large", "openai", "text-embedding-3-large", 8000, 0, D("0.00104"),
         "genai-prices", operation="embeddings"),
    # 5000 x $0.10 = 500 / 1M
    Case("text-embedding-ada-002", "openai", "text-embedding-ada-002", 5000, 0, D("0.0005"),
         "genai-prices", operation="embeddings"),
    # Batch $0.01 (half): 10,000 x $0.01 = 100 / 1M. genai-prices has no batch row for it:
    # FluxGate's 0.5 multiplier, which gives the published figure (and says so).
    Case("text-embedding-3-small-batch", "openai", "text-embedding-3-small", 10_000, 0,
         D("0.0001"), "genai-prices+batch*0.5", operation="embeddings", tier="batch",
         paths=("openai-embeddings", "ingest")),
    # == Anthropic ============================================================================
    # 1h writes on a tiered model (issue 14 item 1): 1000 x $3 + 4000 x $6 + 10 x $15
    #   = (3000 + 24000 + 150) / 1M   (at the 5-minute rate: wrongly 0.01815)
    Case("sonnet-4-5-1h-writes", "anthropic", "claude-sonnet-4-5", 5000, 10,
         D("0.02715"), "genai-prices", cache_write_1h=4000),
    # 100 x $3 + 1000 x $3.75 + 2000 x $6 + 100 x $15 = (300 + 3750 + 12000 + 1500) / 1M
    # LangChain streams, every write at the 1h rate: 100 x $3 + 3000 x $6 + 100 x $15
    #   = (300 + 18000 + 1500) / 1M
    Case("sonnet-4-5-5m-and-1h-writes", "anthropic", "claude-sonnet-4-5", 3100, 100,
         D("0.01755"), "genai-prices", cache_write_5m=1000, cache_write_1h=2000,
         stream_bound=D("0.0198")),
    # Served by its dated model: 1000 x $3 + 9000 x $0.30 + 500 x $15 = (3000 + 2700 + 7500) / 1M
    Case("sonnet-4-5-cache-read", "anthropic", "claude-sonnet-4-5", 10_000, 500, D("0.0132"),
         "genai-prices", cache_read=9000, served="claude-sonnet-4-5-20250929"),
    # Over 200k (210,000 input with the cache): 10,000 x $6 + 200,000 x $12 + 1000 x $22.50
    #   = (60000 + 2400000 + 22500) / 1M   (at the 5-minute rate: wrongly 1.5825)
    Case("sonnet-4-5-over-200k-1h-writes", "anthropic", "claude-sonnet-4-5", 210_000, 1000,
         D("2.4825"), "genai-prices", cache_write_1h=200_000),
    # Over 200k, every kind: 150,000 x $6 + 20,000 x $7.50 + 30,000 x $12 + 10,000 x $0.60
    #   + 2000 x $22.50 = (900000 + 150000 + 360000 + 6000 + 45000) / 1M
    # LangChain streams: 150,000 x $6 + 50,000 x $12 + 10,000 x $0.60 + 2000 x $22.50
    #   = (900000 + 600000 + 6000 + 45000) / 1M
    Case("sonnet-4-5-over-200k-all-kinds", "anthropic", "claude-sonnet-4-5", 210_000, 2000,
         D("1.461"), "genai-prices", cache_read=10_000, cache_write_5m=20_000,
         cache_write_1h=30_000, stream_bound=D("1.551")),
    # Exactly 200,000 input is not over 200k: 199,000 x $3 + 1000 x $6 = (597000 + 6000) / 1M
    Case("sonnet-4-5-at-200k", "anthropic", "claude-sonnet-4-5", 200_000, 0,
         D("0.603"), "genai-prices", cache_write_1h=1000),
    # One token more is: 200,001 x $6 + 100 x $22.50 = (1200006 + 2250) / 1M
    Case("sonnet-4-5-just-over-200k", "anthropic", "claude-sonnet-4-5", 200_001, 100,
         D("1.202256"), "genai-prices",
         paths=("anthropic-create", "anthropic-raw-stream", "langchain-invoke",
                "langchain-stream", "ingest")),
    # Batch now (genai-prices' own batch rows): 1000 x $1.50 + 1000 x $1.875 + 2000 x $3
    #   + 2000 x $0.15 + 500 x $7.50 = (1500 + 1875 + 6000 + 300 + 3750) / 1M
    # LangChain streams: 1000 x $1.50 + 3000 x $3 + 2000 x $0.15 + 500 x $7.50
    #   = (1500 + 9000 + 300 + 3750) / 1M
    Case("sonnet-4-5-batch", "anthropic", "claude-sonnet-4-5", 6000, 500,
         D("0.013425"), "genai-prices+batch", cache_read=2000, cache_write_5m=1000,
         cache_write_1h=2000, tier="batch", stream_bound=D("0.01455"),
         paths=("anthropic-create", "langchain-invoke", "langchain-stream",
                "langchain-remote-stream", "ingest")),
    # The same batch call on 2026-09-01, before genai-prices' batch rows: Anthropic's 50 %
    # applies all the same, here through FluxGate's multiplier (and the label says so):
    # (1000 x $3 + 1000 x $3.75 + 2000 x $6 + 2000 x $0.30 + 500 x $15) / 2
    #   = (3000 + 3750 + 12000 + 600 + 7500) / 2 / 1M
    Case("sonnet-4-5-batch-2026-09-01", "anthropic", "claude-sonnet-4-5", 6000, 500,
         D("0.013425"), "genai-prices+batch*0.5", cache_read=2000,
         cache_write_5m=1000, cache_write_1h=2000, tier="batch",
         created_at="2026-09-01T08:00:00Z"),
    # Batch over 200k with 1h writes: 10,000 x $3 + 200,000 x $6 + 1000 x $11.25
    #   = (30000 + 1200000 + 11250) / 1M
    Case("sonnet-4-5-batch-over-200k", "anthropic", "claude-sonnet-4-5", 210_000, 1000,
         D("1.24125"), "genai-prices+batch", cache_write_1h=200_000, tier="batch",
         paths=("anthropic-create", "langchain-invoke", "langchain-stream", "ingest")),
    # Sonnet 4 by its dated name, up to 200k (the supplement's row changes nothing there):
    # 500 x $3 + 1500 x $6 + 200 x $15 = (1500 + 9000 + 3000) / 1M
    Case("sonnet-4-20250514-1h-writes", "anthropic", "claude-sonnet-4-20250514", 2000, 200,
         D("0.0135"), "genai-prices", cache_write_1h=1500),
    # Sonnet 4 over 200k on 2025-09-15, in its 1M-context beta (the supplement's row:
    # genai-prices has no tier for it): 200,000 x $6 + 40,000 x $7.50 + 10,000 x $0.60
    #   + 2000 x $22.50 = (1200000 + 300000 + 6000 + 45000) / 1M
    Case("sonnet-4-over-200k-2025-09-15", "anthropic", "claude-sonnet-4-20250514", 250_000,
         2000, D("1.551"), "supplement", cache_read=10_000, cache_write_5m=40_000,
         created_at="2025-09-15T10:00:00Z"),
    # The SDK-FACTS reference figure: 1000 x $3 + 1000 x $3.75 + 2000 x $0.30 + 500 x $15
    #   = (3000 + 3750 + 600 + 7500) / 1M
    Case("sonnet-4-6-reference", "anthropic", "claude-sonnet-4-6", 4000, 500, D("0.01485"),
         "genai-prices", cache_read=2000, cache_write_5m=1000),
    # 1000 x $3 + 1000 x $0.30 + 2000 x $15 = (3000 + 300 + 30000) / 1M
    Case("sonnet-3-7-cache-read", "anthropic", "claude-3-7-sonnet-20250219", 2000, 2000,
         D("0.0333"), "genai-prices", cache_read=1000,
         paths=("anthropic-create", "langchain-invoke", "ingest")),
    # Served by its dated model: 1000 x $15 + 1000 x $18.75 + 1000 x $30 + 500 x $75
    #   = (15000 + 18750 + 30000 + 37500) / 1M
    # LangChain streams: 1000 x $15 + 2000 x $30 + 500 x $75 = (15000 + 60000 + 37500) / 1M
    Case("opus-4-1-5m-and-1h-writes", "anthropic", "claude-opus-4-1", 3000, 500,
         D("0.10125"), "genai-prices", cache_write_5m=1000, cache_write_1h=1000,
         served="claude-opus-4-1-20250805", stream_bound=D("0.1125")),
    # 2000 x $15 + 8000 x $1.50 + 1000 x $75 = (30000 + 12000 + 75000) / 1M
    Case("opus-4-1-cache-read", "anthropic", "claude-opus-4-1", 10_000, 1000, D("0.117"),
         "genai-prices", cache_read=8000,
         paths=("anthropic-create", "anthropic-stream-helper", "langchain-invoke", "ingest")),
    # Batch, no batch rows for it: 50 % of every rate, by FluxGate's multiplier:
    # (1000 x $15 + 1000 x $18.75 + 1000 x $1.50 + 1000 x $75) / 2
    #   = (15000 + 18750 + 1500 + 75000) / 2 / 1M
    Case("opus-4-1-batch", "anthropic", "claude-opus-4-1", 3000, 1000, D("0.055125"),
         "genai-prices+batch*0.5", cache_read=1000, cache_write_5m=1000, tier="batch",
         paths=ANTHROPIC_TIER_PATHS),
    # 1000 x $15 + 1000 x $18.75 + 100 x $75 = (15000 + 18750 + 7500) / 1M
    Case("opus-4-20250514-5m-writes", "anthropic", "claude-opus-4-20250514", 2000, 100,
         D("0.04125"), "genai-prices", cache_write_5m=1000,
         paths=("anthropic-create", "anthropic-raw-stream", "langchain-invoke",
                "langchain-stream", "ingest")),
    # 1000 x $5 + 2000 x $0.50 + 1000 x $10 + 1000 x $25 = (5000 + 1000 + 10000 + 25000) / 1M
    Case("opus-4-5-read-and-1h-write", "anthropic", "claude-opus-4-5", 4000, 1000, D("0.041"),
         "genai-prices", cache_read=2000, cache_write_1h=1000),
    # A flat-priced model: 1000 x $1 + 1000 x $1.25 + 2000 x $2 + 2000 x $0.10 + 500 x $5
    #   = (1000 + 1250 + 4000 + 200 + 2500) / 1M
    # LangChain streams: 1000 x $1 + 3000 x $2 + 2000 x $0.10 + 500 x $5
    #   = (1000 + 6000 + 200 + 2500) / 1M
    Case("haiku-4-5-5m-and-1h-writes", "anthropic", "claude-haiku-4-5", 6000, 500,
         D("0.00895"), "genai-prices", cache_read=2000, cache_write_5m=1000,
         cache_write_1h=2000, stream_bound=D("0.0097")),
    # 1000 x $1 + 4000 x $2 + 1000 x $0.10 + 2000 x $5 = (1000 + 8000 + 100 + 10000) / 1M
    Case("haiku-4-5-1h-writes-and-read", "anthropic", "claude-haiku-4-5", 6000, 2000,
         D("0.0191"), "genai-prices", cache_read=1000, cache_write_1h=4000),
    # Batch (genai-prices' rows): 1000 x $0.50 + 1000 x $0.625 + 1000 x $0.05 + 1000 x $2.50
    #   = (500 + 625 + 50 + 2500) / 1M
    Case("haiku-4-5-batch", "anthropic", "claude-haiku-4-5", 3000, 1000, D("0.003675"),
         "genai-prices+batch", cache_read=1000, cache_write_5m=1000, tier="batch",
         paths=ANTHROPIC_TIER_PATHS),
    # ... on 2026-09-01, before them: the same 50 %, by the multiplier.
    Case("haiku-4-5-batch-2026-09-01", "anthropic", "claude-haiku-4-5", 3000, 1000,
         D("0.003675"), "genai-prices+batch*0.5", cache_read=1000, cache_write_5m=1000,
         tier="batch", created_at="2026-09-01T08:00:00Z"),
    # 1000 x $0.80 + 2000 x $1 + 3000 x $0.08 + 1000 x $4 = (800 + 2000 + 240 + 4000) / 1M
    Case("haiku-3-5-5m-writes-and-read", "anthropic", "claude-3-5-haiku-20241022", 6000, 1000,
         D("0.00704"), "genai-prices", cache_read=3000, cache_write_5m=2000),
    # 1000 x $0.80 + 1000 x $1.60 + 500 x $4 = (800 + 1600 + 2000) / 1M
    Case("haiku-3-5-1h-writes", "anthropic", "claude-3-5-haiku-latest", 2000, 500,
         D("0.0044"), "genai-prices", cache_write_1h=1000,
         paths=("anthropic-create", "anthropic-raw-stream", "langchain-invoke",
                "langchain-stream", "ingest")),
    # == Gemini ===============================================================================
    # Over 200k: 200,000 x $2.50 + 50,000 cached x $0.25 + 1000 x $15
    #   = (500000 + 12500 + 15000) / 1M
    Case("gemini-2.5-pro-over-200k", "gemini", "gemini-2.5-pro", 250_000, 1000,
         D("0.5275"), "genai-prices", cache_read=50_000),
    # Up to 200k, thinking billed as output: 800 x $1.25 + 200 x $0.125 + 1500 x $10
    #   = (1000 + 25 + 15000) / 1M
    Case("gemini-2.5-pro-thinking", "gemini", "gemini-2.5-pro", 1000, 1500,
         D("0.016025"), "genai-prices", cache_read=200, reasoning=1000),
    # A prompt of exactly 200,000 is not over: 100,000 x $1.25 + 100,000 x $0.125
    #   + 1000 x $10 = (125000 + 12500 + 10000) / 1M
    Case("gemini-2.5-pro-at-200k", "gemini", "gemini-2.5-pro", 200_000, 1000, D("0.1475"),
         "genai-prices", cache_read=100_000),
    # One more is: 200,001 x $2.50 + 1000 x $15 (500 thinking) = (500002.5 + 15000) / 1M
    Case("gemini-2.5-pro-just-over-200k", "gemini", "gemini-2.5-pro", 200_001, 1000,
         D("0.5150025"), "genai-prices", reasoning=500),
    # Batch over 200k: 250,000 x $1.25 + 1000 x $7.50 = (312500 + 7500) / 1M
    Case("gemini-2.5-pro-batch-over-200k", "gemini", "gemini-2.5-pro", 250_000, 1000,
         D("0.32"), "genai-prices+batch", tier="batch", paths=("gemini", "ingest")),
    # 6000 x $0.30 + 4000 x $0.03 + 3000 x $2.50 (2000 thinking) = (1800 + 120 + 7500) / 1M
    Case("gemini-2.5-flash-thinking-cached", "gemini", "gemini-2.5-flash", 10_000, 3000,
         D("0.00942"), "genai-prices", cache_read=4000, reasoning=2000),
    # Batch, caching at the standard rate: 8000 x $0.15 + 2000 x $0.03 + 1000 x $1.25
    #   = (1200 + 60 + 1250) / 1M
    Case("gemini-2.5-flash-batch-cached", "gemini", "gemini-2.5-flash", 10_000, 1000,
         D("0.00251"), "genai-prices+batch", cache_read=2000, tier="batch",
         paths=("gemini", "ingest")),
    # 50,000 x $0.10 + 50,000 x $0.01 + 5000 x $0.40 = (5000 + 500 + 2000) / 1M
    Case("gemini-2.5-flash-lite-cached", "gemini", "gemini-2.5-flash-lite", 100_000, 5000,
         D("0.0075"), "genai-prices", cache_read=50_000),
    # 5000 x $0.10 + 5000 x $0.025 + 1000 x $0.40 = (500 + 125 + 400) / 1M
    Case("gemini-2.0-flash-cached", "gemini", "gemini-2.0-flash", 10_000, 1000, D("0.001025"),
         "genai-prices", cache_read=5000, paths=("gemini", "ingest")),
    # The supplement's cache-read price (genai-prices has none for it):
    # 40,000 x $1.25 + 60,000 x $0.3125 + 1000 x $5 = (50000 + 18750 + 5000) / 1M
    Case("gemini-1.5-pro-cached", "gemini", "gemini-1.5-pro", 100_000, 1000, D("0.07375"),
         "supplement", cache_read=60_000),
    # Over 128k: 100,000 x $2.50 + 100,000 x $0.625 + 2000 x $10 = (250000 + 62500 + 20000) / 1M
    Case("gemini-1.5-pro-over-128k-cached", "gemini", "gemini-1.5-pro", 200_000, 2000,
         D("0.3325"), "supplement", cache_read=100_000),
    # No cached tokens: the row changes no price the call uses, so genai-prices' label.
    # 10,000 x $1.25 + 1000 x $5 = (12500 + 5000) / 1M
    Case("gemini-1.5-pro-uncached", "gemini", "gemini-1.5-pro", 10_000, 1000, D("0.0175"),
         "genai-prices", paths=("gemini", "ingest")),
    # The cached call on 2025-01-15 (after the cut): the same 0.07375.
    Case("gemini-1.5-pro-cached-2025-01-15", "gemini", "gemini-1.5-pro", 100_000, 1000,
         D("0.07375"), "supplement", cache_read=60_000, created_at="2025-01-15T12:00:00Z"),
    # ... and on 2024-09-01, before it: 40,000 x $3.50 + 60,000 x $0.875 + 1000 x $10.50
    #   = (140000 + 52500 + 10500) / 1M
    Case("gemini-1.5-pro-cached-2024-09-01", "gemini", "gemini-1.5-pro", 100_000, 1000,
         D("0.203"), "supplement", cache_read=60_000, created_at="2024-09-01T12:00:00Z"),
    # ... over 128k then: 150,000 x $7 + 50,000 x $1.75 + 1000 x $21
    #   = (1050000 + 87500 + 21000) / 1M
    Case("gemini-1.5-pro-over-128k-2024-09-30", "gemini", "gemini-1.5-pro", 200_000, 1000,
         D("1.1585"), "supplement", cache_read=50_000, created_at="2024-09-30T23:00:00Z"),
    # Over 128k: 150,000 x $0.15 + 50,000 x $0.0375 + 1000 x $0.60 = (22500 + 1875 + 600) / 1M
    Case("gemini-1.5-flash-over-128k-cached", "gemini", "gemini-1.5-flash", 200_000, 1000,
         D("0.024975"), "genai-prices", cache_read=50_000, paths=("gemini", "ingest")),
    # 10,000 x $0.15 = 1500 / 1M
    Case("gemini-embedding-001", "gemini", "gemini-embedding-001", 10_000, 0, D("0.0015"),
         "genai-prices", operation="embeddings"),
    # == OpenRouter ===========================================================================
    # Its usage.cost is what it bills: used as it is, whatever the tokens would cost.
    Case("openrouter-reported-cost", "openrouter", "openai/gpt-4o", 1000, 500, D("0.00812"),
         "provider-reported", cache_read=200, reported_cost=D("0.00812")),
    # A cost the caller got from OpenRouter itself (the context's openrouter_cost).
    Case("openrouter-context-cost", "openrouter", "openai/gpt-4o", 1000, 500, D("0.0042"),
         "openrouter", context_cost=D("0.0042"),
         paths=("openai-chat", "langchain-invoke", "langchain-remote", "ingest")),
    # No usage.cost: OpenRouter's prices, 600 x $0.15 + 400 x $0.075 + 500 x $0.60
    #   = (90 + 30 + 300) / 1M
    Case("openrouter-gpt-4o-mini-priced", "openrouter", "openai/gpt-4o-mini", 1000, 500,
         D("0.00042"), "genai-prices", cache_read=400),
    # 2000 x $3 + 8000 x $0.30 + 500 x $15 = (6000 + 2400 + 7500) / 1M
    Case("openrouter-claude-sonnet-4.5-priced", "openrouter", "anthropic/claude-sonnet-4.5",
         10_000, 500, D("0.0159"), "genai-prices", cache_read=8000,
         paths=("openai-chat", "langchain-invoke", "ingest")),
    # == ModelPrice overrides (the site's own prices; order: override, supplement, data) =====
    # A site's gpt-4o at $2 / cached $0.50 / $8: 800 x $2 + 200 x $0.50 + 500 x $8
    #   = (1600 + 100 + 4000) / 1M   (genai-prices: 0.00725)
    Case("override-gpt-4o", "openai", "gpt-4o", 1000, 500, D("0.0057"), "override",
         cache_read=200, override=override("gpt-4o", input="2", cache_read="0.50", output="8"),
         paths=("openai-chat", "openai-responses", "langchain-invoke", "langchain-remote",
                "ingest")),
    # The site's row is for gpt-4o, the name it asks for; OpenAI reports the snapshot that
    # served it. The row comes first all the same (the same 0.0057), not the data's price
    # for the snapshot (0.00725).
    Case("override-gpt-4o-served-by-snapshot", "openai", "gpt-4o", 1000, 500, D("0.0057"),
         "override", cache_read=200, served="gpt-4o-2024-08-06",
         override=override("gpt-4o", input="2", cache_read="0.50", output="8"),
         paths=("openai-chat", "openai-chat-stream", "langchain-invoke", "langchain-stream",
                "ingest")),
    # A row for the served snapshot itself wins over one for the alias: $1 / $0.25 / $4,
    # 800 x $1 + 200 x $0.25 + 500 x $4 = (800 + 50 + 2000) / 1M
    Case("override-the-served-snapshot", "openai", "gpt-4o", 1000, 500, D("0.00285"),
         "override", cache_read=200, served="gpt-4o-2024-08-06",
         override=override("gpt-4o-2024-08-06", input="1", cache_read="0.25", output="4"),
         paths=("openai-chat", "langchain-invoke", "ingest")),
    # On Batch, the row's prices times the batch multiplier (not genai-prices' batch rows):
    # (800 x $2 + 200 x $0.50 + 500 x $8) x 0.5 = 5700 x 0.5 / 1M
    Case("override-gpt-4o-batch", "openai", "gpt-4o", 1000, 500, D("0.00285"),
         "override+batch*0.5", cache_read=200, tier="batch",
         override=override("gpt-4o", input="2", cache_read="0.50", output="8"),
         paths=("openai-chat", "langchain-invoke", "ingest")),
    # A model no price data knows: 1000 x $1 + 500 x $2 = (1000 + 1000) / 1M
    Case("override-unknown-model", "openai", "acme-llm-9000", 1000, 500, D("0.002"),
         "override", override=override("acme-llm-9000", input="1", output="2"),
         paths=("openai-chat", "langchain-invoke", "langchain-remote", "ingest")),
    # Every price of the row, 1h write included, up to its tier (over 100,000):
    # 1000 x $2 + 1000 x $2.50 + 2000 x $4 + 1000 x $0.20 + 500 x $10
    #   = (2000 + 2500 + 8000 + 200 + 5000) / 1M   (genai-prices: 0.02055)
    # LangChain streams: 1000 x $2 + 3000 x $4 + 1000 x $0.20 + 500 x $10
    #   = (2000 + 12000 + 200 + 5000) / 1M
    Case("override-sonnet-4-5-every-price", "anthropic", "claude-sonnet-4-5", 5000, 500,
         D("0.0177"), "override", cache_read=1000, cache_write_5m=1000, cache_write_1h=2000,
         stream_bound=D("0.0192"),
         override=override("claude-sonnet-4-5", input="2", output="10", cache_read="0.20",
                           cache_write="2.50", cache_write_1h="4", tier_over=100_000,
                           tier_input="4", tier_output="15", tier_cache_read="0.40",
                           tier_cache_write="5", tier_cache_write_1h="8"),
         paths=("anthropic-create", "anthropic-stream-helper", "langchain-invoke",
                "langchain-stream", "langchain-remote-stream", "ingest")),
    # ... and over its tier, on every token: 100,000 x $4 + 30,000 x $8 + 20,000 x $0.40
    #   + 1000 x $15 = (400000 + 240000 + 8000 + 15000) / 1M
    Case("override-sonnet-4-5-over-its-tier", "anthropic", "claude-sonnet-4-5", 150_000, 1000,
         D("0.663"), "override", cache_read=20_000, cache_write_1h=30_000,
         override=override("claude-sonnet-4-5", input="2", output="10", cache_read="0.20",
                           cache_write="2.50", cache_write_1h="4", tier_over=100_000,
                           tier_input="4", tier_output="15", tier_cache_read="0.40",
                           tier_cache_write="5", tier_cache_write_1h="8"),
         paths=("anthropic-create", "anthropic-raw-stream", "langchain-invoke",
                "langchain-stream", "ingest")),
    # Over the supplement's row (0.07375): $1 / $4, no cache price (a read at the input
    # price): 100,000 x $1 + 1000 x $4 = (100000 + 4000) / 1M
    Case("override-over-the-supplement", "gemini", "gemini-1.5-pro", 100_000, 1000,
         D("0.104"), "override", cache_read=60_000,
         override=override("gemini-1.5-pro", input="1", output="4"),
         paths=("gemini", "ingest")),
    # == Unknown models: never a silent 0 =====================================================
    Case("unknown-model", "openai", "acme-llm-9000", 1000, 500, None, "unknown",
         paths=("openai-chat", "langchain-invoke", "langchain-stream", "langchain-remote",
                "ingest")),
    Case("unknown-model-2025", "openai", "acme-llm-9000", 1000, 500, None, "unknown",
         created_at="2025-05-01T12:00:00Z"),
    # On a tier there is no price to multiply: still unknown.
    Case("unknown-model-batch", "openai", "acme-llm-9000", 1000, 500, None, "unknown",
         tier="batch", paths=("openai-chat", "ingest")),
    Case("unknown-claude", "anthropic", "claude-acme-9", 2000, 500, None, "unknown",
         cache_read=1000, paths=("anthropic-create", "langchain-invoke", "ingest")),
    Case("unknown-gemini", "gemini", "gemini-acme-9", 2000, 500, None, "unknown",
         cache_read=1000, paths=("gemini", "ingest")),
    Case("unknown-embedding-model", "openai", "acme-embed-1", 1000, 0, None, "unknown",
         operation="embeddings"),
    Case("unknown-openrouter-model", "openrouter", "acme/acme-llm-9000", 1000, 500, None,
         "unknown", paths=("openai-chat", "langchain-invoke", "ingest")),
]  # fmt: skip
