"""Pricing: the cost a user sees on ``resp.fluxgate.cost`` and in ``Event.cost_usd``.

Expected figures are computed by hand from the list prices (USD per million tokens) that
genai-prices carries for each model:

* gpt-4o: input $2.50, cached input $1.25, output $10
* o4-mini: input $1.10, cached input $0.275, output $4.40 (reasoning is billed as output)
* gpt-4o-mini: input $0.15, cached input $0.075, output $0.60
* claude-sonnet-4-6: input $3, 5-minute cache write $3.75, 1-hour cache write $6,
  cache read $0.30, output $15
* gemini-2.5-pro: up to 200k input tokens: input $1.25, cached $0.125, output $10;
  above 200k (the whole request): input $2.50, cached $0.25, output $15
"""

from __future__ import annotations

import logging
import socket
import types
from decimal import Decimal

import pytest
from genai_prices import Usage as GenaiUsage
from genai_prices import calc_price

from fluxgate_django import pricing, track_anthropic, track_openai, tracking_context
from fluxgate_django.models import Event, ModelPrice
from fluxgate_django.pricing import Cost, Rates, calculate_cost, price_book
from fluxgate_django.records import Usage
from fluxgate_django.testing import FakeReply
from tests.helpers import MSGS, fluxgate_overrides

pytestmark = pytest.mark.django_db

MTOK = Decimal(1_000_000)


@pytest.fixture(autouse=True)
def fresh_price_book():
    """Every test starts with nothing resolved, no overrides loaded and no warning given."""
    price_book.reset()
    yield
    price_book.reset()


@pytest.fixture
def openai(openai_client):
    return track_openai(openai_client)


@pytest.fixture
def anthropic(anthropic_client):
    return track_anthropic(anthropic_client)


def event_for(result) -> Event:
    return Event.objects.get(tracking_id=result.fluxgate.tracking_id)


def ask_anthropic(client, **kwargs):
    return client.messages.create(
        model="claude-sonnet-4-6", max_tokens=1024, messages=MSGS, **kwargs
    )


# -- reference figures, end to end through the real SDKs ---------------------------------


def test_gpt_4o_reference_figure(openai, fake):
    # 800 uncached input at $2.50 + 200 cached at $1.25 + 500 output at $10
    #   = (2000 + 250 + 5000) / 1M = $0.00725
    fake.enqueue(FakeReply(input_tokens=1000, cached_tokens=200, output_tokens=500))

    resp = openai.chat.completions.create(model="gpt-4o", messages=MSGS)

    assert resp.fluxgate.cost == Decimal("0.00725")
    assert resp.fluxgate.cost_source == "genai-prices"
    event = event_for(resp)
    assert event.cost_usd == Decimal("0.00725")
    assert event.cost_source == "genai-prices"
    assert (event.input_tokens, event.cache_read_tokens, event.output_tokens) == (1000, 200, 500)


def test_claude_sonnet_reference_figure(anthropic, fake):
    # Anthropic reports input *excluding* the cache: 1000 uncached + 1000 cache writes
    # + 2000 cache reads = 4000 input tokens in total.
    # 1000 x $3 + 1000 x $3.75 + 2000 x $0.30 + 500 x $15
    #   = (3000 + 3750 + 600 + 7500) / 1M = $0.01485
    fake.enqueue(
        FakeReply(input_tokens=1000, cache_write_tokens=1000, cached_tokens=2000, output_tokens=500)
    )

    resp = ask_anthropic(anthropic)

    assert resp.usage.input_tokens == 1000  # the provider's own (cache-exclusive) figure
    assert resp.fluxgate.cost == Decimal("0.01485")
    event = event_for(resp)
    assert event.cost_usd == Decimal("0.01485")
    assert (event.input_tokens, event.cache_write_tokens, event.cache_read_tokens) == (
        4000,
        1000,
        2000,
    )


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_reasoning_tokens_are_billed_once_as_output(openai, fake, api):
    # 1500 output tokens of which 1000 are reasoning: the provider bills 1500 at the
    # output rate, not 1500 + 1000.
    # 1000 x $1.10 + 1500 x $4.40 = (1100 + 6600) / 1M = $0.0077
    fake.enqueue(FakeReply(input_tokens=1000, output_tokens=1500, reasoning_tokens=1000))

    if api == "chat":
        resp = openai.chat.completions.create(model="o4-mini", messages=MSGS)
    else:
        resp = openai.responses.create(model="o4-mini", input="hi")

    assert resp.fluxgate.cost == Decimal("0.0077")
    event = event_for(resp)
    assert (event.output_tokens, event.reasoning_tokens) == (1500, 1000)
    assert event.cost_usd == Decimal("0.0077")


@pytest.mark.parametrize("stream", [False, True], ids=["response", "stream"])
def test_anthropic_one_hour_cache_writes_cost_the_one_hour_rate(anthropic, fake, stream):
    # 100 uncached input, 1000 writes to the 5-minute cache and 2000 to the 1-hour cache
    # (cache_creation_input_tokens = 3000), 100 output:
    # 100 x $3 + 1000 x $3.75 + 2000 x $6 + 100 x $15
    #   = (300 + 3750 + 12000 + 1500) / 1M = $0.01755
    # (all writes at the 5-minute rate would wrongly give $0.01305)
    fake.enqueue(
        FakeReply(
            input_tokens=100, cache_write_tokens=1000, cache_write_1h_tokens=2000, output_tokens=100
        )
    )

    if stream:
        resp = ask_anthropic(anthropic, stream=True)
        for _ in resp:
            pass
    else:
        resp = ask_anthropic(anthropic)
        assert resp.usage.cache_creation_input_tokens == 3000

    assert resp.fluxgate.cost == Decimal("0.01755")
    event = event_for(resp)
    assert (event.input_tokens, event.cache_write_tokens) == (3100, 3000)
    assert event.cost_usd == Decimal("0.01755")


def test_gemini_long_context_tier_applies_to_the_whole_request():
    # Below the 200k threshold: 100k x $1.25 + 1000 x $10 = $0.135
    assert calculate_cost("gemini", "gemini-2.5-pro", Usage(100_000, 1000)).usd == Decimal("0.135")
    # Above it, every token is at the long-context rate:
    # 200k x $2.50 + 50k cached x $0.25 + 1000 x $15 = (500000 + 12500 + 15000) / 1M
    cost = calculate_cost(
        "gemini", "gemini-2.5-pro", Usage(250_000, 1000, cache_read_tokens=50_000)
    )
    assert cost == Cost(Decimal("0.5275"), "genai-prices")


# -- the fast path is genai-prices' own arithmetic -----------------------------------------

PROVIDER_IDS = {"openai": "openai", "anthropic": "anthropic", "gemini": "google"}

USAGES = [
    Usage(0, 0),
    Usage(1, 0),
    Usage(1000, 500),
    Usage(1000, 500, cache_read_tokens=200),
    Usage(1000, 1500, reasoning_tokens=1000),
    Usage(4000, 500, cache_read_tokens=2000, cache_write_tokens=1000),
    Usage(4000, 500, cache_read_tokens=2000, cache_write_tokens=1000, cache_write_1h_tokens=600),
    Usage(123_457, 7_891, cache_read_tokens=33_333, cache_write_tokens=1_111),
    Usage(199_999, 10),
    Usage(200_001, 10),
    Usage(250_000, 3_000, reasoning_tokens=1_000, cache_read_tokens=50_000),
]


@pytest.mark.parametrize(
    ("provider", "model", "tiered"),
    [
        ("openai", "gpt-4o", False),
        ("openai", "gpt-4o-mini", False),
        ("openai", "o4-mini", False),
        ("openai", "o3-mini", False),
        ("openai", "text-embedding-3-small", False),
        ("anthropic", "claude-sonnet-4-6", False),
        ("anthropic", "claude-haiku-4-5", False),
        ("gemini", "gemini-2.5-pro", True),
        ("gemini", "gemini-2.5-flash", False),
    ],
)
def test_fast_path_equals_genai_prices_calc_price(provider, model, tiered):
    # Flat prices are resolved once into per-token Decimals; tiered ones are left to
    # genai-prices. Either way the figure must be genai-prices' own, to the last digit.
    assert isinstance(price_book.price_source(provider, model), Rates) is not tiered
    for usage in USAGES:
        genai_usage = {
            "input_tokens": usage.input_tokens,  # genai-prices wants the total input
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        }
        if usage.cache_write_1h_tokens:
            genai_usage["cache_write_1h_tokens"] = usage.cache_write_1h_tokens
        expected = calc_price(
            GenaiUsage(**genai_usage), model, provider_id=PROVIDER_IDS[provider]
        ).total_price

        cost = calculate_cost(provider, model, usage)

        assert cost.usd == expected, usage
        assert type(cost.usd) is Decimal
        assert cost.source == "genai-prices"


# -- money is Decimal, stored exactly ------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "model", "tier", "expected"),
    [
        # the gpt-4o reference figure
        (FakeReply(input_tokens=1000, cached_tokens=200, output_tokens=500), "gpt-4o", None,
         Decimal("0.00725")),
        # one cached gpt-4o-mini token on the flex tier: $0.075 / 2 / 1M = 10 decimal places
        (FakeReply(input_tokens=1, cached_tokens=1, output_tokens=0), "gpt-4o-mini", "flex",
         Decimal("0.0000000375")),
        # 50M input + 10M output on gpt-4o: $125 + $100
        (FakeReply(input_tokens=50_000_000, output_tokens=10_000_000), "gpt-4o", None,
         Decimal("225")),
    ],
    ids=["reference", "tiny", "large"],
)  # fmt: skip
def test_cost_is_decimal_and_round_trips_through_the_event_column(
    openai, fake, reply, model, tier, expected
):
    fake.enqueue(reply)
    with tracking_context(service_tier=tier):
        resp = openai.chat.completions.create(model=model, messages=MSGS)

    assert type(resp.fluxgate.cost) is Decimal
    assert resp.fluxgate.cost == expected
    stored = event_for(resp).cost_usd
    assert type(stored) is Decimal
    assert stored == resp.fluxgate.cost


# -- unknown models --------------------------------------------------------------------------


def test_unknown_model_costs_none_and_warns_once(openai, fake, caplog):
    caplog.set_level(logging.WARNING, logger="fluxgate.pricing")

    first = openai.chat.completions.create(model="acme-llm-9000", messages=MSGS)
    second = openai.chat.completions.create(model="acme-llm-9000", messages=MSGS)

    for resp in (first, second):
        assert resp.fluxgate.cost is None  # never a silent 0
        assert resp.fluxgate.cost_source == "unknown"
        event = event_for(resp)
        assert event.cost_usd is None
        assert event.cost_source == "unknown"
        assert event.input_tokens > 0  # the usage is still recorded
    warnings = [r for r in caplog.records if r.name == "fluxgate.pricing"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "acme-llm-9000" in warnings[0].getMessage()
    assert Event.objects.filter(cost_usd__isnull=True).count() == 2


def test_unknown_served_model_falls_back_to_the_requested_models_price(openai, fake, caplog):
    fake.enqueue(
        FakeReply(
            input_tokens=1000, cached_tokens=200, output_tokens=500, served_model="acme-snapshot"
        )
    )

    resp = openai.chat.completions.create(model="gpt-4o", messages=MSGS)

    assert resp.fluxgate.cost == Decimal("0.00725")
    event = event_for(resp)
    assert (event.model, event.requested_model) == ("acme-snapshot", "gpt-4o")
    assert not [r for r in caplog.records if r.name == "fluxgate.pricing"]


# -- ModelPrice overrides --------------------------------------------------------------------

REFERENCE_USAGE = Usage(1000, 500, cache_read_tokens=200)


def test_override_wins_at_once_and_is_dropped_after_delete(openai, fake):
    assert calculate_cost("openai", "gpt-4o", REFERENCE_USAGE) == Cost(
        Decimal("0.00725"), "genai-prices"
    )

    row = ModelPrice.objects.create(
        provider="openai",
        model="gpt-4o",
        input_per_mtok=Decimal("2"),
        output_per_mtok=Decimal("8"),
        cache_read_per_mtok=Decimal("0.5"),
    )
    # 800 x $2 + 200 x $0.50 + 500 x $8 = (1600 + 100 + 4000) / 1M
    fake.enqueue(FakeReply(input_tokens=1000, cached_tokens=200, output_tokens=500))
    resp = openai.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert resp.fluxgate.cost == Decimal("0.0057")
    assert resp.fluxgate.cost_source == "override"
    assert event_for(resp).cost_source == "override"

    # An edit in this process applies at once too; an empty cache price is the input price:
    # 1000 x $2 + 500 x $8 = (2000 + 4000) / 1M
    row.cache_read_per_mtok = None
    row.save()
    assert calculate_cost("openai", "gpt-4o", REFERENCE_USAGE) == Cost(Decimal("0.006"), "override")

    row.delete()
    assert calculate_cost("openai", "gpt-4o", REFERENCE_USAGE) == Cost(
        Decimal("0.00725"), "genai-prices"
    )


def test_override_cache_prices_fall_back_to_the_input_price():
    usage = Usage(
        4000, 500, cache_read_tokens=2000, cache_write_tokens=1000, cache_write_1h_tokens=400
    )
    row = ModelPrice.objects.create(
        provider="anthropic",
        model="claude-sonnet-4-6",
        input_per_mtok=Decimal("2"),
        output_per_mtok=Decimal("10"),
    )
    # No cache prices: every input token at $2: 4000 x $2 + 500 x $10 = (8000 + 5000) / 1M
    assert calculate_cost("anthropic", "claude-sonnet-4-6", usage) == Cost(
        Decimal("0.013"), "override"
    )

    row.cache_read_per_mtok = Decimal("0.2")
    row.cache_write_per_mtok = Decimal("2.5")
    row.save()
    # ModelPrice has one cache-write price, used for 1-hour writes too:
    # 1000 x $2 + 1000 x $2.50 + 2000 x $0.20 + 500 x $10 = (2000 + 2500 + 400 + 5000) / 1M
    assert calculate_cost("anthropic", "claude-sonnet-4-6", usage) == Cost(
        Decimal("0.0099"), "override"
    )


def test_override_prices_a_model_genai_prices_does_not_know(openai, fake, caplog):
    ModelPrice.objects.create(
        provider="openai",
        model="my-llama-70b",
        input_per_mtok=Decimal("0.4"),
        output_per_mtok=Decimal("0.8"),
    )
    fake.enqueue(FakeReply(input_tokens=1000, output_tokens=500))

    resp = openai.chat.completions.create(model="my-llama-70b", messages=MSGS)

    # 1000 x $0.40 + 500 x $0.80 = (400 + 400) / 1M
    assert resp.fluxgate.cost == Decimal("0.0008")
    assert resp.fluxgate.cost_source == "override"
    assert not [r for r in caplog.records if r.name == "fluxgate.pricing"]


def test_override_from_another_process_is_picked_up_after_price_cache_seconds():
    with fluxgate_overrides(PRICE_CACHE_SECONDS=0):
        assert calculate_cost("openai", "gpt-4o", REFERENCE_USAGE).source == "genai-prices"

        # bulk_create and update() send no signals: as if another process made the change.
        ModelPrice.objects.bulk_create(
            [ModelPrice(provider="openai", model="gpt-4o", input_per_mtok=1, output_per_mtok=2)]
        )
        # 1000 x $1 + 500 x $2
        assert calculate_cost("openai", "gpt-4o", REFERENCE_USAGE) == Cost(
            Decimal("0.002"), "override"
        )

        ModelPrice.objects.filter(provider="openai", model="gpt-4o").update(input_per_mtok=3)
        # 1000 x $3 + 500 x $2
        assert calculate_cost("openai", "gpt-4o", REFERENCE_USAGE) == Cost(
            Decimal("0.004"), "override"
        )


def test_other_process_overrides_are_cached_for_price_cache_seconds(monkeypatch):
    assert pricing.fluxgate_settings.PRICE_CACHE_SECONDS == 60  # the default
    assert calculate_cost("openai", "gpt-4o", REFERENCE_USAGE).source == "genai-prices"
    ModelPrice.objects.bulk_create(
        [ModelPrice(provider="openai", model="gpt-4o", input_per_mtok=1, output_per_mtok=2)]
    )

    # Within the minute the table is not read again (no query per call) ...
    assert calculate_cost("openai", "gpt-4o", REFERENCE_USAGE).source == "genai-prices"

    # ... a minute later it is.
    real_monotonic = pricing.time.monotonic
    later = types.SimpleNamespace(monotonic=lambda: real_monotonic() + 61)
    monkeypatch.setattr(pricing, "time", later)
    assert calculate_cost("openai", "gpt-4o", REFERENCE_USAGE) == Cost(Decimal("0.002"), "override")


# -- service tiers and OpenRouter ------------------------------------------------------------


@pytest.mark.parametrize(
    ("tier", "expected", "source"),
    [
        # genai-prices has no gpt-4o flex price: the 0.5 multiplier, on every token:
        # $0.00725 / 2
        ("flex", Decimal("0.003625"), "genai-prices+flex*0.5"),
        # genai-prices has gpt-4o's own batch prices (keyed processing="batch"): $1.25 input,
        # $5 output, and no batch cached-input rate, so cached input keeps $1.25:
        # 800 x $1.25 + 200 x $1.25 + 500 x $5 = (1000 + 250 + 2500) / 1M
        ("batch", Decimal("0.00375"), "genai-prices+batch"),
    ],
)
def test_flex_and_batch_tiers(openai, fake, tier, expected, source):
    fake.enqueue(FakeReply(input_tokens=1000, cached_tokens=200, output_tokens=500))

    with tracking_context(service_tier=tier):
        resp = openai.chat.completions.create(model="gpt-4o", messages=MSGS)

    assert resp.fluxgate.cost == expected
    assert resp.fluxgate.cost_source == source
    event = event_for(resp)
    assert event.cost_usd == expected
    assert event.service_tier == tier
    assert event.cost_source == source


def test_service_tier_multipliers_are_configurable():
    with fluxgate_overrides(SERVICE_TIER_MULTIPLIERS={"priority": "1.7"}):
        cost = calculate_cost("openai", "gpt-4o", REFERENCE_USAGE, service_tier="priority")
        # the defaults are kept alongside
        flex = calculate_cost("openai", "gpt-4o", REFERENCE_USAGE, service_tier="flex")

    assert cost == Cost(Decimal("0.012325"), "genai-prices+priority")  # $0.00725 x 1.7
    assert flex.usd == Decimal("0.003625")


def test_openrouter_cost_is_passed_through(openai, fake):
    fake.enqueue(FakeReply(input_tokens=1000, output_tokens=500))

    # OpenRouter model ids are unknown to genai-prices: its own reported cost is used.
    with tracking_context(openrouter_cost="0.0123"):
        resp = openai.chat.completions.create(model="meta-llama/llama-3.3-70b", messages=MSGS)

    assert resp.fluxgate.cost == Decimal("0.0123")
    assert type(resp.fluxgate.cost) is Decimal
    assert resp.fluxgate.cost_source == "openrouter"
    event = event_for(resp)
    assert event.cost_usd == Decimal("0.0123")
    assert event.cost_source == "openrouter"


# -- offline -----------------------------------------------------------------------------------

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def test_pricing_needs_no_network(openai, fake, monkeypatch):
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    attempts = []

    def guard(address):
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            attempts.append(address)
            raise OSError(f"network access blocked in this test: {address}")

    def connect(self, address):
        guard(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        guard(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    with pytest.raises(OSError, match="blocked"):
        socket.create_connection(("192.0.2.1", 443), timeout=0.1)  # the guard bites
    attempts.clear()

    price_book.reset()  # nothing resolved yet: every lookup below is a first one
    assert calculate_cost("openai", "gpt-4.1", Usage(1000, 100)).usd is not None
    assert calculate_cost("anthropic", "claude-haiku-4-5", Usage(1000, 100)).usd is not None
    assert calculate_cost("gemini", "gemini-2.5-pro", Usage(300_000, 100)).usd is not None
    fake.enqueue(FakeReply(input_tokens=1000, cached_tokens=200, output_tokens=500))
    resp = openai.chat.completions.create(model="gpt-4o", messages=MSGS)  # loopback is fine
    assert resp.fluxgate.cost == Decimal("0.00725")

    assert attempts == []


def test_tier_prices_known_to_genai_prices_are_used_before_multipliers():
    # genai-prices has OpenAI's priority tier for gpt-4o (1.7x) and flex for o4-mini.
    priority = calculate_cost("openai", "gpt-4o", REFERENCE_USAGE, service_tier="priority")
    assert priority == Cost(Decimal("0.012325"), "genai-prices+priority")
    usage = Usage(input_tokens=1000, output_tokens=500)
    standard = calculate_cost("openai", "o4-mini", usage)
    flex = calculate_cost("openai", "o4-mini", usage, service_tier="flex")
    assert flex.usd == standard.usd / 2 and flex.source == "genai-prices+flex"
    # The standard tier names change nothing.
    for tier in ("default", "auto", "standard"):
        assert calculate_cost("openai", "gpt-4o", REFERENCE_USAGE, service_tier=tier) == Cost(
            Decimal("0.00725"), "genai-prices"
        )
