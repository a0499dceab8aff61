"""FluxGate's supplement to genai-prices (``fluxgate_django.price_supplement``): one test
per row, through a real path (a tracked SDK client over HTTP against the fake provider,
or the ingest API for a dated event), the cost equal to a hand-computed figure to 1e-9
USD. Prices are USD per million tokens (MTok), from the source named in each test.
"""

from __future__ import annotations

import copy
import datetime as dt
from decimal import Decimal

import pytest

from fluxgate_django import track_anthropic, track_gemini, track_openai, tracking_context
from fluxgate_django.models import Event, ModelPrice
from fluxgate_django.price_rates import Corrected, ModelEntry, find_genai_model
from fluxgate_django.price_supplement import SUPPLEMENT_ROWS
from fluxgate_django.pricing import PriceBook, calculate_cost, price_book
from fluxgate_django.records import Usage
from fluxgate_django.testing import FakeReply
from tests.api_helpers import API, event_payload, make_world, post_json
from tests.helpers import MSGS

pytestmark = pytest.mark.django_db

TOLERANCE = Decimal("1e-9")
EVENTS = f"{API}events/"


@pytest.fixture(autouse=True)
def fresh_price_book():
    price_book.reset()
    yield
    price_book.reset()


def event_of(result) -> Event:
    return Event.objects.get(tracking_id=result.fluxgate.tracking_id)


def assert_cost(event: Event, expected: str, source: str) -> None:
    assert event.cost_usd is not None
    assert abs(event.cost_usd - Decimal(expected)) <= TOLERANCE, event.cost_usd
    assert event.cost_source == source


def anthropic_call(client, fake, *, stream: bool = False, **usage) -> Event:
    fake.enqueue(FakeReply(**usage))
    tracked = track_anthropic(client)
    kwargs = {"model": "claude-sonnet-4-20250514", "max_tokens": 1024, "messages": MSGS}
    if stream:
        with tracked.messages.stream(**kwargs) as result:
            result.get_final_message()
    else:
        result = tracked.messages.create(**kwargs)
    return event_of(result)


def ingested(**fields) -> Event:
    payload = event_payload(**fields)
    response = post_json(make_world().client("key_a"), EVENTS, payload)
    assert response.status_code == 202, response.content
    return Event.objects.get(tracking_id=payload["tracking_id"])


# -- anthropic / claude-sonnet-4-0: the >200k long-context tier ------------------------------
# Source: https://docs.claude.com/en/docs/about-claude/pricing#long-context-pricing and the
# 2025-08-12 announcement (https://www.anthropic.com/news/1m-context): Sonnet 4 input $3,
# output $15 up to 200k input tokens; over 200k, $6 input and $22.50 output on every token,
# prompt caching's multipliers on the long-context input price (5m write $7.50, 1h write
# $12, read $0.60).


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_sonnet_4_over_200k_pays_the_long_context_tier(anthropic_client, fake, stream):
    # 250,000 input x $6 + 1000 output x $22.50 = (1500000 + 22500) / 1M
    # (genai-prices alone: 250,000 x $3 + 1000 x $15 = 0.765)
    event = anthropic_call(
        anthropic_client, fake, stream=stream, input_tokens=250_000, output_tokens=1000
    )
    assert event.model == "claude-sonnet-4-20250514"  # an alias of genai's claude-sonnet-4-0
    assert_cost(event, "1.5225", "supplement")


def test_sonnet_4_over_200k_with_cache_pays_the_tier_cache_prices(anthropic_client, fake):
    # Anthropic input excludes the cache: total input 10,000 + 50,000 + 100,000 + 90,000
    # = 250,000 (> 200k): 10,000 x $6 + 50,000 5m writes x $7.50 + 100,000 1h writes x $12
    # + 90,000 reads x $0.60 + 1000 x $22.50
    #   = (60000 + 375000 + 1200000 + 54000 + 22500) / 1M
    event = anthropic_call(
        anthropic_client,
        fake,
        input_tokens=10_000,
        cache_write_tokens=50_000,
        cache_write_1h_tokens=100_000,
        cached_tokens=90_000,
        output_tokens=1000,
    )
    assert event.input_tokens == 250_000
    assert_cost(event, "1.7115", "supplement")


def test_sonnet_4_up_to_200k_is_genai_prices_own_figure(anthropic_client, fake):
    # 200,000 is not over 200k: 200,000 x $3 + 1000 x $15 = (600000 + 15000) / 1M, the
    # prices genai-prices has, and the event says so.
    event = anthropic_call(anthropic_client, fake, input_tokens=200_000, output_tokens=1000)
    assert_cost(event, "0.615", "genai-prices")


# -- gemini / gemini-1.5-pro: context caching ------------------------------------------------
# Source: https://ai.google.dev/gemini-api/docs/pricing (Gemini 1.5 Pro, from the 2024-10-01
# price cut): input $1.25 / output $5 up to 128k prompt tokens, $2.50 / $10 over; context
# caching (cached tokens) $0.3125 up to 128k, $0.625 over.


def test_gemini_1_5_pro_cached_tokens_pay_the_caching_price(gemini_client, fake):
    # 100,000 prompt tokens (Gemini's count includes the cached ones), 50,000 cached:
    # 50,000 x $1.25 + 50,000 x $0.3125 + 1000 x $5 = (62500 + 15625 + 5000) / 1M
    # (genai-prices alone bills the cached ones at $1.25: 0.13)
    fake.enqueue(FakeReply(input_tokens=100_000, cached_tokens=50_000, output_tokens=1000))
    result = track_gemini(gemini_client).models.generate_content(
        model="gemini-1.5-pro-002", contents="hi"
    )
    assert_cost(event_of(result), "0.083125", "supplement")


def test_gemini_1_5_pro_over_128k_cached_tokens(gemini_client, fake):
    # 200,000 prompt tokens (> 128k), 100,000 cached: 100,000 x $2.50 + 100,000 x $0.625
    #   + 1000 x $10 = (250000 + 62500 + 10000) / 1M
    fake.enqueue(FakeReply(input_tokens=200_000, cached_tokens=100_000, output_tokens=1000))
    result = track_gemini(gemini_client).models.generate_content(
        model="gemini-1.5-pro", contents="hi"
    )
    assert_cost(event_of(result), "0.3225", "supplement")


# -- openai / gpt-4o batch before 2026-10-14 -------------------------------------------------
# Source: https://platform.openai.com/docs/pricing (Batch table): gpt-4o input $1.25,
# output $5, no cached-input rate, so cached input is billed at the standard $1.25 (as
# genai-prices' own batch rows from 2026-10-14 and LiteLLM have it).


def test_gpt_4o_batch_before_genai_prices_batch_rows_keeps_cached_input_at_1_25():
    # 2026-09-01: 800 x $1.25 + 200 cached x $1.25 + 500 x $5 = (1000 + 250 + 2500) / 1M
    # (the 0.5 multiplier on the standard price would halve cached input too: 0.003625)
    event = ingested(
        input_tokens=1000,
        cache_read_tokens=200,
        output_tokens=500,
        service_tier="batch",
        created_at="2026-09-01T08:00:00Z",
    )
    assert_cost(event, "0.00375", "supplement+batch")


def test_gpt_4o_batch_row_ends_where_genai_prices_batch_rows_start(openai_client, fake):
    # 2026-10-13 23:59 UTC, the last minute before genai-prices' batch rows (a dated
    # snapshot name is corrected too).
    at = dt.datetime(2026, 10, 13, 23, 59, tzinfo=dt.timezone.utc)
    usage = Usage(1000, 500, cache_read_tokens=200)
    cost = calculate_cost("openai", "gpt-4o-2024-08-06", usage, service_tier="batch", at=at)
    # 800 x $1.25 + 200 x $1.25 + 500 x $5 = 0.00375
    assert (cost.usd, cost.source) == (Decimal("0.00375"), "supplement+batch")
    # Without cached input the row changes nothing: the multiplier's figure and label.
    # 1000 x $1.25 + 500 x $5 = (1250 + 2500) / 1M
    plain = calculate_cost("openai", "gpt-4o", Usage(1000, 500), service_tier="batch", at=at)
    assert (plain.usd, plain.source) == (Decimal("0.00375"), "genai-prices+batch*0.5")
    # From 2026-10-14 genai-prices' own batch prices (the same figures).
    on = calculate_cost(
        "openai", "gpt-4o", usage, service_tier="batch", at=at + dt.timedelta(minutes=1)
    )
    assert (on.usd, on.source) == (Decimal("0.00375"), "genai-prices+batch")

    # And a batch call tracked now goes through the same book: genai-prices' batch row.
    fake.enqueue(FakeReply(input_tokens=1000, cached_tokens=200, output_tokens=500))
    with tracking_context(service_tier="batch"):
        result = track_openai(openai_client).chat.completions.create(model="gpt-4o", messages=MSGS)
    assert_cost(event_of(result), "0.00375", "genai-prices+batch")


# -- openai / o3 cached input before 2025-06-10 ----------------------------------------------
# Source: https://platform.openai.com/docs/pricing as of o3's launch (2025-04-16): input $10,
# cached input $2.50, output $40, until the 2025-06-10 cut to $2 / $0.50 / $8 (the cached
# change from 2.5e-6 to 0.5e-6 per token recorded in langfuse/langfuse#7223, 2025-06-10).


def test_o3_cached_input_before_the_price_cut_was_2_50():
    # 2025-05-01: 800 x $10 + 200 cached x $2.50 + 1000 x $40 = (8000 + 500 + 40000) / 1M
    # (genai-prices alone has $0.50 cached then: 0.0481)
    event = ingested(
        model="o3",
        input_tokens=1000,
        cache_read_tokens=200,
        output_tokens=1000,
        created_at="2025-05-01T12:00:00Z",
    )
    assert_cost(event, "0.0485", "supplement")


def test_o3_rows_end_where_the_cut_starts():
    usage = Usage(1000, 1000, cache_read_tokens=200)
    last = dt.datetime(2025, 6, 9, 23, 59, 59, tzinfo=dt.timezone.utc)
    before = calculate_cost("openai", "o3-2025-04-16", usage, at=last)
    after = calculate_cost("openai", "o3", usage, at=last + dt.timedelta(seconds=1))
    # before: 800 x $10 + 200 x $2.50 + 1000 x $40; after: 800 x $2 + 200 x $0.50 + 1000 x $8
    assert (before.usd, before.source) == (Decimal("0.0485"), "supplement")
    assert (after.usd, after.source) == (Decimal("0.0097"), "genai-prices")
    # No cached input: the row changes nothing, and the label says genai-prices priced it.
    plain = calculate_cost("openai", "o3", Usage(1000, 1000), at=last)
    assert (plain.usd, plain.source) == (Decimal("0.05"), "genai-prices")


# -- how rows apply --------------------------------------------------------------------------


def test_an_override_wins_over_the_supplement(anthropic_client, fake):
    ModelPrice.objects.create(
        provider="anthropic",
        model="claude-sonnet-4-20250514",
        input_per_mtok=Decimal("2"),
        output_per_mtok=Decimal("10"),
    )
    # The override has no tier: 250,000 x $2 + 1000 x $10 = (500000 + 10000) / 1M
    event = anthropic_call(anthropic_client, fake, input_tokens=250_000, output_tokens=1000)
    assert_cost(event, "0.51", "override")


def test_a_row_stops_mattering_once_genai_prices_carries_the_fix():
    """New genai-prices data (UpdatePrices, or a site's snapshot) with o3's launch cached
    price: the row then changes nothing and events say genai-prices again."""
    from genai_prices import data_snapshot
    from genai_prices.types import ModelPrice as GenaiModelPrice

    usage = Usage(1000, 1000, cache_read_tokens=200)
    at = dt.datetime(2025, 5, 1, tzinfo=dt.timezone.utc)
    assert calculate_cost("openai", "o3", usage, at=at).source == "supplement"

    providers = copy.deepcopy(data_snapshot.get_snapshot().providers)
    o3 = next(m for m in next(p for p in providers if p.id == "openai").models if m.id == "o3")
    o3.prices[0].prices = GenaiModelPrice(
        input_mtok=Decimal("10"), cache_read_mtok=Decimal("2.5"), output_mtok=Decimal("40")
    )
    data_snapshot.set_custom_snapshot(
        data_snapshot.DataSnapshot(providers=providers, from_auto_update=True)
    )
    try:
        cost = calculate_cost("openai", "o3", usage, at=at)
    finally:
        data_snapshot.set_custom_snapshot(None)
    # 800 x $10 + 200 x $2.50 + 1000 x $40, now genai-prices' own figure
    assert (cost.usd, cost.source) == (Decimal("0.0485"), "genai-prices")


@pytest.mark.parametrize("row", SUPPLEMENT_ROWS, ids=lambda r: f"{r.provider}-{r.model}-{r.tier}")
def test_every_row_is_sourced_dated_and_still_needed(row):
    assert row.source.startswith("https://")
    assert row.corrects and row.source_date
    if row.valid_from and row.valid_to:
        assert row.valid_from < row.valid_to
    # It names genai-prices' model id (so aliases and snapshots are corrected too) ...
    found = find_genai_model(row.provider, row.model)
    assert found is not None and found[0].id == row.model
    # ... and still differs from what the call would cost without it — genai-prices' own
    # price, or for a tier it has none for then, the multiplier's — as pricing resolves
    # it: when a genai-prices release carries the fix, this fails, and the row should go.
    day = row.valid_from or (row.valid_to - dt.timedelta(days=1))
    at = dt.datetime.combine(day, dt.time(12), tzinfo=dt.timezone.utc)
    entry = ModelEntry.of(*found, (row,), row.dates())
    corrected = PriceBook._resolve(entry, at, row.tier)
    assert isinstance(corrected, Corrected) and corrected.baseline_label != corrected.label
    assert any(mask for _, _, mask in corrected.bands)
