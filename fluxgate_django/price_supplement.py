"""Corrections to genai-prices' data: prices it lacks or gets wrong, each from the
provider's own published source.

A row applies over genai-prices (and under ``ModelPrice`` overrides) to calls of its
provider and model — genai-prices' model id, so its aliases and dated snapshots too
(``claude-sonnet-4-20250514`` is ``claude-sonnet-4-0``) — on its service tier (``""``:
the standard price) from ``valid_from`` (midnight UTC, included) to ``valid_to``
(excluded). A row gives the model's whole price for that period, not only the part it
corrects; an event is labelled ``cost_source="supplement"`` only when it uses a price the
row changes, otherwise the data's own figures priced it and it says ``genai-prices``.
When a refreshed genai-prices carries the fix, the row changes nothing any more
(``fluxgate_prices --diff`` shows which rows still differ) and can be dropped.

Every row has a test in ``tests/test_price_supplement.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

from .price_rates import Prices, Rates, TieredRates, price_source_of
from .records import CostSource

#: ``Event.cost_source`` of a call priced by a supplement row.
SUPPLEMENT = CostSource.SUPPLEMENT.value


@dataclasses.dataclass(frozen=True)
class Correction:
    """One row: ``prices`` (and long-context ``tiers``) per million tokens for
    ``provider``/``model`` on ``tier`` while it is valid."""

    provider: str
    model: str
    #: What genai-prices' data gets wrong, in a sentence.
    corrects: str
    prices: Prices
    #: The provider's published page (or announcement) the figures are from.
    source: str
    #: The date of that source's figures (published, or as checked on the page).
    source_date: dt.date
    #: ``(start, prices)``: a request over ``start`` input tokens pays these on every token.
    tiers: tuple[tuple[int, Prices], ...] = ()
    valid_from: dt.date | None = None
    #: Excluded: the first day the row no longer applies.
    valid_to: dt.date | None = None
    #: The service tier the prices are for (``"batch"``); ``""`` for the standard price.
    tier: str = ""
    #: How the figures were checked, when more than the source's own page.
    note: str = ""

    def applies(self, at: dt.datetime) -> bool:
        """Whether the row is in force at ``at`` (aware; dates compare as UTC dates)."""
        day = at.astimezone(dt.timezone.utc).date()
        if self.valid_from is not None and day < self.valid_from:
            return False
        return self.valid_to is None or day < self.valid_to

    def price_source(self) -> Rates | TieredRates:
        label = f"{SUPPLEMENT}+{self.tier}" if self.tier else SUPPLEMENT
        return price_source_of(self.prices, self.tiers, label)

    def dates(self) -> tuple[dt.date, ...]:
        return tuple(d for d in (self.valid_from, self.valid_to) if d is not None)


def _d(text: str) -> Decimal:
    return Decimal(text)


SUPPLEMENT_ROWS: tuple[Correction, ...] = (
    Correction(
        provider="anthropic",
        model="claude-sonnet-4-0",
        corrects="no long-context tier: a request over 200k input tokens is billed at the "
        "base rates instead of the long-context ones",
        # Up to 200k input tokens: the model's standard prices (as genai-prices has them).
        prices=Prices(
            input=_d("3"),
            output=_d("15"),
            cache_read=_d("0.30"),
            cache_write=_d("3.75"),
            cache_write_1h=_d("6"),
        ),
        # Over 200k (cache reads and writes counted): $6 input, $22.50 output, and the
        # prompt-caching multipliers on the long-context input price (5m write 1.25x, 1h
        # write 2x, read 0.1x), on every token of the request.
        tiers=(
            (
                200_000,
                Prices(
                    input=_d("6"),
                    output=_d("22.50"),
                    cache_read=_d("0.60"),
                    cache_write=_d("7.50"),
                    cache_write_1h=_d("12"),
                ),
            ),
        ),
        source="https://docs.claude.com/en/docs/about-claude/pricing#long-context-pricing",
        source_date=dt.date(2025, 8, 12),
        valid_from=dt.date(2025, 8, 12),
        note="Long context (1M-token beta) for Sonnet 4 announced 2025-08-12 "
        "(https://www.anthropic.com/news/1m-context): $6 / $22.50 per MTok over 200k.",
    ),
    Correction(
        provider="gemini",
        model="gemini-1.5-pro",
        corrects="no context-caching (cache read) price: cached tokens billed at the full "
        "input rate",
        prices=Prices(input=_d("1.25"), output=_d("5"), cache_read=_d("0.3125")),
        tiers=((128_000, Prices(input=_d("2.50"), output=_d("10"), cache_read=_d("0.625"))),),
        source="https://ai.google.dev/gemini-api/docs/pricing#gemini-1.5-pro",
        source_date=dt.date(2024, 10, 1),
        valid_from=dt.date(2024, 10, 1),
        note="Prices from Google's 2024-10-01 Gemini 1.5 Pro price cut (input $1.25 / "
        "$2.50 over 128k, output $5 / $10, context caching $0.3125 / $0.625). Cache "
        "storage ($4.50/MTok per hour) is not a per-call price and is not charged here.",
    ),
    Correction(
        provider="gemini",
        model="gemini-1.5-pro",
        corrects="before the 2024-10-01 price cut: genai-prices has the prices since then "
        "(and no cache-read price) for every date, about a third of what was billed",
        prices=Prices(input=_d("3.50"), output=_d("10.50"), cache_read=_d("0.875")),
        tiers=((128_000, Prices(input=_d("7"), output=_d("21"), cache_read=_d("1.75"))),),
        source="https://developers.googleblog.com/en/updated-gemini-models-reduced-15-pro-"
        "pricing-increased-rate-limits-and-more/",
        source_date=dt.date(2024, 9, 24),
        valid_to=dt.date(2024, 10, 1),
        note="Google's 2024-09-24 announcement: 64% off input and cached input, 52% off "
        "output, effective 2024-10-01 — from $3.50 / $0.875 / $10.50 (up to 128k) and $7 / "
        "$1.75 / $21 (over 128k) to the next row's $1.25 / $0.3125 / $5 and $2.50 / $0.625 "
        "/ $10. No valid_from: before paid use began there were no billed calls to price.",
    ),
    Correction(
        provider="openai",
        model="gpt-4o",
        tier="batch",
        corrects="no Batch prices before 2026-10-14, so the batch multiplier also halved "
        "cached input, which Batch does not discount further",
        # Batch: half the input and output prices; the Batch table publishes no cached
        # input rate, so cached input is billed at the standard $1.25.
        prices=Prices(input=_d("1.25"), output=_d("5"), cache_read=_d("1.25")),
        source="https://platform.openai.com/docs/pricing#batch",
        source_date=dt.date(2026, 10, 14),
        valid_from=dt.date(2024, 10, 1),
        valid_to=dt.date(2026, 10, 14),
        note="From prompt caching's launch (2024-10-01) to the first day genai-prices has "
        "gpt-4o's own Batch prices (same figures: input $1.25, output $5, no cached-input "
        "rate; its price_comments: verified 2026-10-14 on OpenAI's pricing page).",
    ),
    Correction(
        provider="openai",
        model="o3",
        corrects="cached input before the 2025-06-10 price cut: genai-prices has $0.50 "
        "(the price since then); o3 launched at $2.50",
        prices=Prices(input=_d("10"), output=_d("40"), cache_read=_d("2.50")),
        source="https://platform.openai.com/docs/pricing",
        source_date=dt.date(2025, 4, 16),
        valid_from=dt.date(2025, 4, 16),
        valid_to=dt.date(2025, 6, 10),
        note="o3's launch prices (2025-04-16) until the 2025-06-10 cut to $2 / $0.50 / $8; "
        "the cached-input change from $2.50 to $0.50 on 2025-06-10 is recorded in "
        "langfuse/langfuse#7223 (input_cached_tokens 2.5e-6 -> 0.5e-6).",
    ),
)


def corrections_for(provider: str, model: str) -> tuple[Correction, ...]:
    """The rows for ``provider``/``model`` (a genai-prices model id or a plain name)."""
    return _INDEX.get((provider, model), ())


def in_force(rows: tuple[Correction, ...], at: dt.datetime, tier: str = "") -> Correction | None:
    """The row of ``rows`` for ``tier`` in force at ``at``, if any (the last listed wins)."""
    found = None
    for row in rows:
        if row.tier == tier and row.applies(at):
            found = row
    return found


def _index(rows: tuple[Correction, ...]) -> dict[tuple[str, str], tuple[Correction, ...]]:
    index: dict[tuple[str, str], tuple[Correction, ...]] = {}
    for row in rows:
        key = (row.provider, row.model)
        index[key] = (*index.get(key, ()), row)
    return index


_INDEX = _index(SUPPLEMENT_ROWS)
