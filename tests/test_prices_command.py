"""``manage.py fluxgate_prices``: the prices each source gives for a model, the one FluxGate
uses (the same one a tracked call is priced with), and what differs from genai-prices."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from fluxgate_django.models import ModelPrice
from fluxgate_django.pricing import calculate_cost, price_book
from fluxgate_django.records import Usage

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_price_book():
    price_book.reset()
    yield
    price_book.reset()


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("fluxgate_prices", *args, stdout=out)
    return out.getvalue()


def line(output: str, start: str) -> str:
    return next(x.strip() for x in output.splitlines() if x.strip().startswith(start))


def test_check_shows_every_source_and_the_one_used_for_an_alias():
    output = run("--check", "claude-sonnet-4-20250514", "--at", "2026-01-15")

    assert output.splitlines()[0] == (
        "anthropic/claude-sonnet-4-20250514 at 2026-01-15 00:00 UTC, standard tier"
    )
    assert line(output, "override:") == "override:     none"
    # The supplement's long-context tier, and genai-prices' flat price (by its model id).
    assert line(output, "supplement:") == (
        "supplement:   input $3, output $15, cache read $0.3, cache write $3.75, 1h cache "
        "write $6; over 200,000 input tokens: input $6, output $22.5, cache read $0.6, cache "
        "write $7.5, 1h cache write $12"
    )
    assert "(in force)" in output
    assert line(output, "genai-prices:") == (
        "genai-prices: input $3, output $15, cache read $0.3, cache write $3.75, 1h cache "
        "write $6 (as claude-sonnet-4-0)"
    )
    assert line(output, "FluxGate uses:") == (
        "FluxGate uses: the supplement (supplement) for calls over 200,000 input tokens; "
        "otherwise genai-prices"
    )


def test_check_names_the_override_when_there_is_one():
    ModelPrice.objects.create(
        provider="openai", model="gpt-4o", input_per_mtok=2, output_per_mtok=8,
        cache_read_per_mtok=Decimal("0.5"),
    )  # fmt: skip
    output = run("--check", "openai:gpt-4o")

    assert line(output, "override:") == "override:     input $2, output $8, cache read $0.5"
    assert line(output, "FluxGate uses:") == "FluxGate uses: the override (ModelPrice)"
    # ... as pricing does: 800 x $2 + 200 x $0.50 + 500 x $8
    cost = calculate_cost("openai", "gpt-4o", Usage(1000, 500, cache_read_tokens=200))
    assert (cost.usd, cost.source) == (Decimal("0.0057"), "override")


def test_check_at_a_date_and_tier():
    # gpt-4o batch on 2026-09-01: genai-prices has no batch prices then; the supplement does.
    output = run("--check", "gpt-4o", "--at", "2026-09-01", "--tier", "batch")

    assert "batch tier" in output.splitlines()[0]
    assert line(output, "genai-prices batch:") == "genai-prices batch: none"
    assert line(output, "FluxGate uses:") == (
        "FluxGate uses: the supplement (supplement+batch) for calls with cache read; "
        "otherwise genai-prices+batch*0.5"
    )
    # After 2026-10-14 genai-prices' own batch prices.
    later = run("--check", "gpt-4o", "--at", "2026-11-01", "--tier", "batch")
    assert "(not in force then)" in later
    assert line(later, "FluxGate uses:") == "FluxGate uses: genai-prices batch"
    # A tier nothing has prices for: the multiplier.
    flex = run("--check", "anthropic:claude-sonnet-4-5", "--tier", "flex")
    assert line(flex, "FluxGate uses:") == "FluxGate uses: genai-prices x 0.5 (flex multiplier)"


def test_check_fails_for_a_model_nothing_prices():
    out = io.StringIO()
    with pytest.raises(CommandError, match="No price for openai:acme-llm-9000"):
        call_command("fluxgate_prices", "--check", "openai:acme-llm-9000", stdout=out)
    assert "genai-prices: unknown model" in out.getvalue()
    assert "FluxGate uses: nothing: its events get cost_source='unknown'" in out.getvalue()


def test_diff_lists_every_supplement_row_and_differing_override():
    ModelPrice.objects.create(
        provider="openai", model="gpt-4o", input_per_mtok=Decimal("2.5"), output_per_mtok=8,
        cache_read_per_mtok=Decimal("1.25"), note="negotiated",
    )  # fmt: skip
    ModelPrice.objects.create(  # the same as genai-prices: not listed
        provider="openai", model="o4-mini", input_per_mtok=Decimal("1.1"),
        output_per_mtok=Decimal("4.4"), cache_read_per_mtok=Decimal("0.275"),
    )  # fmt: skip
    output = run("--diff")

    rows, overrides = output.split("Overrides (ModelPrice) that differ from genai-prices:")
    assert "anthropic/claude-sonnet-4-0" in rows
    assert (
        "on 2025-08-12: over 200,000 input tokens: input $6 (genai-prices $3), output $22.5 "
        "(genai-prices $15)"
    ) in rows
    assert "on 2024-10-01: cache read $0.3125 (genai-prices $1.25)" in rows  # gemini-1.5-pro
    assert "on 2024-10-01: cache read $1.25 (genai-prices $0.625)" in rows  # gpt-4o batch
    assert "on 2025-04-16: cache read $2.5 (genai-prices $0.5)" in rows  # o3
    assert "openai/gpt-4o (negotiated)" in overrides
    assert "output $8 (genai-prices $10)" in overrides
    assert "o4-mini" not in overrides


def test_nothing_to_do_is_an_error():
    with pytest.raises(CommandError, match="--check MODEL"):
        call_command("fluxgate_prices")
