"""``ModelPrice`` overrides with every price dimension: 1-hour cache writes and long-context
tiers, through real tracked calls against the fake provider; and the validation that
refuses an override that would price calls wrongly.

Audio and image tokens are not priced apart: no usage reader reports them (OpenAI's
``audio_tokens`` are counted in ``prompt_tokens`` and billed as input, on every source),
so an override has no audio or image price to be charged.

Figures are hand-computed from the override's own prices (USD per million tokens).
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from fluxgate_django import track_anthropic, track_gemini, tracking_context
from fluxgate_django.models import Event, ModelPrice
from fluxgate_django.pricing import calculate_cost, price_book
from fluxgate_django.records import Usage
from fluxgate_django.testing import FakeReply
from tests.helpers import MSGS

pytestmark = pytest.mark.django_db

TOLERANCE = Decimal("1e-9")


@pytest.fixture(autouse=True)
def fresh_price_book():
    price_book.reset()
    yield
    price_book.reset()


def sonnet_override(**fields) -> ModelPrice:
    """Negotiated claude-sonnet-4-5 prices: input $2, 5m write $2.50, 1h write $4, read
    $0.20, output $10."""
    values = {
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
        "input_per_mtok": Decimal("2"),
        "output_per_mtok": Decimal("10"),
        "cache_read_per_mtok": Decimal("0.2"),
        "cache_write_per_mtok": Decimal("2.5"),
        "cache_write_1h_per_mtok": Decimal("4"),
        **fields,
    }
    row = ModelPrice(**values)
    row.full_clean()
    row.save()
    return row


def anthropic_call(client, fake, *, stream: bool = False, **usage) -> Event:
    fake.enqueue(FakeReply(**usage))
    tracked = track_anthropic(client)
    kwargs = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": MSGS}
    if stream:
        result = tracked.messages.create(**kwargs, stream=True)
        for _ in result:
            pass
    else:
        result = tracked.messages.create(**kwargs)
    return Event.objects.get(tracking_id=result.fluxgate.tracking_id)


def assert_cost(event: Event, expected: str, source: str = "override") -> None:
    assert event.cost_usd is not None
    assert abs(event.cost_usd - Decimal(expected)) <= TOLERANCE, event.cost_usd
    assert event.cost_source == source


# -- 1-hour cache writes ------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["create", "raw-stream"])
def test_one_hour_writes_cost_the_overrides_one_hour_price(anthropic_client, fake, stream):
    sonnet_override()
    # 1000 input + 1000 5m writes x $2.50 + 2000 1h writes x $4 + 2000 reads x $0.20
    # + 500 output x $10 (input 1000 x $2) = (2000 + 2500 + 8000 + 400 + 5000) / 1M
    # (at the 5-minute price the 1h writes would cost 2000 x $2.50: 0.0129)
    event = anthropic_call(
        anthropic_client,
        fake,
        stream=stream,
        input_tokens=1000,
        cache_write_tokens=1000,
        cache_write_1h_tokens=2000,
        cached_tokens=2000,
        output_tokens=500,
    )
    assert (event.cache_write_tokens, event.cache_read_tokens) == (3000, 2000)
    assert_cost(event, "0.0179")


def test_an_empty_one_hour_price_is_the_cache_write_price(anthropic_client, fake):
    sonnet_override(cache_write_1h_per_mtok=None)
    # 1000 x $2 + 2000 1h writes at the cache-write $2.50 + 500 x $10
    #   = (2000 + 5000 + 5000) / 1M
    event = anthropic_call(
        anthropic_client, fake, input_tokens=1000, cache_write_1h_tokens=2000, output_tokens=500
    )
    assert_cost(event, "0.012")


# -- long-context tiers -------------------------------------------------------------------------

TIER = {
    "tier_threshold_tokens": 200_000,
    "tier_input_per_mtok": Decimal("4"),
    "tier_output_per_mtok": Decimal("15"),
    "tier_cache_read_per_mtok": Decimal("0.4"),
    "tier_cache_write_per_mtok": Decimal("5"),
    "tier_cache_write_1h_per_mtok": Decimal("8"),
}


def test_a_request_over_the_threshold_pays_the_tier_on_every_token(anthropic_client, fake):
    sonnet_override(**TIER)
    # Total input 10,000 + 50,000 5m + 100,000 1h + 90,000 read = 250,000 > 200,000:
    # 10,000 x $4 + 50,000 x $5 + 100,000 x $8 + 90,000 x $0.40 + 1000 x $15
    #   = (40000 + 250000 + 800000 + 36000 + 15000) / 1M
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
    assert_cost(event, "1.141")


def test_a_request_at_the_threshold_pays_the_base_prices(anthropic_client, fake):
    sonnet_override(**TIER)
    # 200,000 is not over 200,000: 199,000 x $2 + 1000 1h writes x $4 + 1000 x $10
    #   = (398000 + 4000 + 10000) / 1M
    event = anthropic_call(
        anthropic_client, fake, input_tokens=199_000, cache_write_1h_tokens=1000,
        output_tokens=1000,
    )  # fmt: skip
    assert event.input_tokens == 200_000
    assert_cost(event, "0.412")


def test_a_tiered_override_on_gemini(gemini_client, fake):
    ModelPrice.objects.create(
        provider="gemini",
        model="gemini-2.5-pro",
        input_per_mtok=Decimal("1"),
        output_per_mtok=Decimal("8"),
        cache_read_per_mtok=Decimal("0.1"),
        tier_threshold_tokens=128_000,
        tier_input_per_mtok=Decimal("2"),
        tier_output_per_mtok=Decimal("12"),
        tier_cache_read_per_mtok=Decimal("0.2"),
    )
    # 150,000 prompt tokens (> 128k), 50,000 cached, 1000 output + 500 thinking:
    # 100,000 x $2 + 50,000 x $0.20 + 1500 x $12 = (200000 + 10000 + 18000) / 1M
    fake.enqueue(
        FakeReply(input_tokens=150_000, cached_tokens=50_000, output_tokens=1000,
                  reasoning_tokens=500)
    )  # fmt: skip
    result = track_gemini(gemini_client).models.generate_content(
        model="gemini-2.5-pro", contents="hi"
    )
    assert_cost(Event.objects.get(tracking_id=result.fluxgate.tracking_id), "0.228")


def test_a_tiered_override_on_the_batch_tier_takes_the_multiplier(anthropic_client, fake):
    sonnet_override(**TIER)
    # Over 200k on batch: the override's tier prices x 0.5:
    # (250,000 x $4 + 1000 x $15) x 0.5 = (1000000 + 15000) / 2 / 1M
    fake.enqueue(FakeReply(input_tokens=250_000, output_tokens=1000))
    with tracking_context(service_tier="batch"):
        result = track_anthropic(anthropic_client).messages.create(
            model="claude-sonnet-4-5", max_tokens=1024, messages=MSGS
        )
    assert_cost(
        Event.objects.get(tracking_id=result.fluxgate.tracking_id),
        "0.5075",
        "override+batch*0.5",
    )


def test_overrides_saved_by_another_process_keep_their_tiers():
    # bulk_create sends no signal: the row is read from the table on the next load.
    ModelPrice.objects.bulk_create(
        [ModelPrice(provider="anthropic", model="claude-sonnet-4-5", input_per_mtok=2,
                    output_per_mtok=10, cache_write_1h_per_mtok=4, tier_threshold_tokens=1000,
                    tier_input_per_mtok=3, tier_output_per_mtok=12, tier_cache_write_1h_per_mtok=6)]
    )  # fmt: skip
    price_book.reset_overrides()
    small = Usage(1000, 100, cache_write_tokens=500, cache_write_1h_tokens=500)
    large = Usage(1001, 100, cache_write_tokens=500, cache_write_1h_tokens=500)
    # 500 x $2 + 500 x $4 + 100 x $10 = (1000 + 2000 + 1000) / 1M
    assert calculate_cost("anthropic", "claude-sonnet-4-5", small).usd == Decimal("0.004")
    # over 1000: 501 x $3 + 500 x $6 + 100 x $12 = (1503 + 3000 + 1200) / 1M
    assert calculate_cost("anthropic", "claude-sonnet-4-5", large).usd == Decimal("0.005703")


# -- validation -----------------------------------------------------------------------------------


def errors_of(**fields) -> dict[str, list[str]]:
    values = {"provider": "openai", "model": "my-model", "input_per_mtok": 1, "output_per_mtok": 2}
    row = ModelPrice(**{**values, **fields})
    with pytest.raises(ValidationError) as caught:
        row.full_clean()
    return caught.value.message_dict


@pytest.mark.parametrize(
    "field",
    ["input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok",
     "cache_write_1h_per_mtok"],
)  # fmt: skip
def test_a_negative_price_is_refused(field):
    assert errors_of(**{field: Decimal("-0.01")}) == {field: ["A price can't be negative."]}


def test_a_tier_price_without_a_threshold_is_refused():
    errors = errors_of(tier_input_per_mtok=2, tier_output_per_mtok=4)
    assert set(errors) == {"tier_input_per_mtok", "tier_output_per_mtok"}
    assert "threshold" in errors["tier_input_per_mtok"][0]


def test_a_threshold_without_tier_prices_is_refused():
    errors = errors_of(tier_threshold_tokens=200_000)
    assert set(errors) == {"tier_input_per_mtok", "tier_output_per_mtok"}


def test_a_tier_missing_a_cache_price_the_base_has_is_refused():
    # Else cached tokens over the threshold would be charged the tier's full input price.
    errors = errors_of(
        cache_read_per_mtok=Decimal("0.1"),
        cache_write_1h_per_mtok=Decimal("2"),
        tier_threshold_tokens=200_000,
        tier_input_per_mtok=2,
        tier_output_per_mtok=4,
    )
    assert set(errors) == {"tier_cache_read_per_mtok", "tier_cache_write_1h_per_mtok"}


def test_a_threshold_of_zero_and_names_with_spaces_are_refused():
    errors = errors_of(
        model=" my-model", tier_threshold_tokens=0, tier_input_per_mtok=2, tier_output_per_mtok=4
    )
    assert set(errors) == {"model", "tier_threshold_tokens"}


def test_a_complete_override_is_valid():
    row = ModelPrice(provider="anthropic", model="claude-sonnet-4-5", input_per_mtok=2,
                     output_per_mtok=10, cache_read_per_mtok=Decimal("0.2"), **TIER)  # fmt: skip
    row.full_clean()  # no error


def test_the_admin_refuses_an_invalid_override(admin_client):
    response = admin_client.post(
        reverse("admin:fluxgate_django_modelprice_add"),
        {"provider": "openai", "model": "my-model", "input_per_mtok": "-1",
         "output_per_mtok": "2", "cache_read_per_mtok": "", "cache_write_per_mtok": "",
         "note": ""},
    )  # fmt: skip
    assert response.status_code == 200  # the form again, not a redirect
    assert "A price can&#x27;t be negative." in response.content.decode()
    assert not ModelPrice.objects.exists()
