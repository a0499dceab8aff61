"""Per-token rates, and genai-prices' data resolved into them.

``Prices`` are what a source publishes (USD per million tokens); ``Rates`` and
``TieredRates`` are the same turned into per-token ``Decimal`` rates once, so that pricing a
call is a few multiplications. ``ModelEntry`` is one genai-prices model as found for a
(provider, model name), with the times at which its prices change; :func:`genai_rates`
resolves its price for one (service tier, price period). Looking a model up in
genai-prices costs about a millisecond: it is done once per model, never per call.

Django-free: ``pricing`` puts these together with ``ModelPrice`` overrides and the
supplement (``price_supplement``).
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from .records import Usage

MTOK = Decimal(1_000_000)

#: Our provider names → genai-prices provider ids.
GENAI_PROVIDER_IDS = {"openai": "openai", "anthropic": "anthropic", "gemini": "google"}

#: The kinds of token priced apart, in the order of ``Rates``' fields.
KINDS = ("input", "output", "cache_read", "cache_write", "cache_write_1h")
ALL_KINDS = (1 << len(KINDS)) - 1


@dataclasses.dataclass(frozen=True, slots=True)
class Rates:
    """USD per token for each kind of token of one model."""

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal
    cache_write_1h: Decimal
    source: str

    def cost(self, usage: Usage) -> Decimal:
        writes_1h = min(usage.cache_write_1h_tokens, usage.cache_write_tokens)
        uncached = max(usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens, 0)
        return (
            uncached * self.input
            + usage.cache_read_tokens * self.cache_read
            + (usage.cache_write_tokens - writes_1h) * self.cache_write
            + writes_1h * self.cache_write_1h
            + usage.output_tokens * self.output
        )

    def rates_for(self, input_tokens: int) -> Rates:
        return self

    @classmethod
    def per_mtok(
        cls,
        *,
        input: Decimal,
        output: Decimal,
        cache_read: Decimal | None = None,
        cache_write: Decimal | None = None,
        cache_write_1h: Decimal | None = None,
        source: str,
    ) -> Rates:
        cache_write = input if cache_write is None else cache_write
        return cls(
            input=input / MTOK,
            output=output / MTOK,
            cache_read=(input if cache_read is None else cache_read) / MTOK,
            cache_write=cache_write / MTOK,
            cache_write_1h=(cache_write if cache_write_1h is None else cache_write_1h) / MTOK,
            source=source,
        )

    def per_mtok_prices(self) -> Prices:
        """These rates as prices per million tokens (every kind given)."""
        return Prices(*(getattr(self, kind) * MTOK for kind in KINDS))


@dataclasses.dataclass(frozen=True, slots=True)
class TieredRates:
    """Rates with long-context tiers (genai-prices ``TieredPrices``): a request whose total
    input is over a tier's start pays that tier's rates on *every* token, as genai-prices
    and the providers bill it. ``bands``: ``(start, rates)`` ascending, the first the base
    rates (start -1); resolved once per model, so no genai-prices call per event."""

    bands: tuple[tuple[int, Rates], ...]
    source: str = "genai-prices"

    def rates_for(self, input_tokens: int) -> Rates:
        rates = self.bands[0][1]
        for start, band in self.bands[1:]:
            if input_tokens <= start:
                break
            rates = band
        return rates

    def cost(self, usage: Usage) -> Decimal:
        return self.rates_for(usage.input_tokens).cost(usage)


@dataclasses.dataclass(frozen=True, slots=True)
class Corrected:
    """A supplement row's price, with the data's price it corrects (``price_supplement``).

    The cost is always the row's. The label names the supplement only for a call that
    uses a price the row changes; a call that uses none of them was priced by the data's
    own figures, and says so (``baseline_label``)."""

    fixed: Rates | TieredRates
    label: str
    baseline_label: str
    #: ``(band start, the row's rates there, bitmask of the KINDS whose price differs
    #: from the data's)``, ascending, the first at -1: one lookup gives both.
    bands: tuple[tuple[int, Rates, int], ...]

    @classmethod
    def of(
        cls,
        fixed: Rates | TieredRates,
        baseline: Rates | TieredRates | None,
        baseline_label: str,
    ) -> Corrected:
        if baseline is None:  # (nothing to compare with: every price is the row's)
            differs: tuple[tuple[int, int], ...] = tuple(
                (start, ALL_KINDS) for start in band_starts(fixed)
            )
        else:
            differs = differences(fixed, baseline)
        bands = tuple((start, fixed.rates_for(start + 1), mask) for start, mask in differs)
        return cls(fixed, fixed.source, baseline_label, bands)

    @property
    def source(self) -> str:
        return self.label

    @property
    def differs(self) -> tuple[tuple[int, int], ...]:
        return tuple((start, mask) for start, _, mask in self.bands)

    def band(self, input_tokens: int) -> tuple[Rates, int]:
        """The row's rates for a request of ``input_tokens``, and what they change."""
        _, rates, mask = self.bands[0]
        for start, band_rates, band_mask in self.bands[1:]:
            if input_tokens <= start:
                break
            rates, mask = band_rates, band_mask
        return rates, mask

    def rates_for(self, input_tokens: int) -> Rates:
        return self.band(input_tokens)[0]

    def cost(self, usage: Usage) -> Decimal:
        return self.band(usage.input_tokens)[0].cost(usage)

    def priced(self, usage: Usage) -> tuple[Rates, str]:
        """The rates ``usage`` pays, and the label of its event."""
        rates, mask = self.band(usage.input_tokens)
        if mask and (mask == ALL_KINDS or mask & kinds_used(usage)):
            return rates, self.label
        return rates, self.baseline_label


PriceSource = Rates | TieredRates | Corrected


def kinds_used(usage: Usage) -> int:
    """Bitmask of the ``KINDS`` of token ``usage`` pays for."""
    writes_1h = min(usage.cache_write_1h_tokens, usage.cache_write_tokens)
    mask = 0
    if usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens > 0:
        mask |= 1
    if usage.output_tokens > 0:
        mask |= 2
    if usage.cache_read_tokens > 0:
        mask |= 4
    if usage.cache_write_tokens - writes_1h > 0:
        mask |= 8
    if writes_1h > 0:
        mask |= 16
    return mask


def band_starts(source: PriceSource) -> tuple[int, ...]:
    if isinstance(source, Corrected):
        return band_starts(source.fixed)
    if isinstance(source, TieredRates):
        return tuple(start for start, _ in source.bands)
    return (-1,)


def differences(fixed: PriceSource, baseline: PriceSource) -> tuple[tuple[int, int], ...]:
    """Per input band of either, which kinds' prices ``fixed`` and ``baseline`` differ on."""
    starts = sorted(set(band_starts(fixed)) | set(band_starts(baseline)))
    bands = []
    for start in starts:
        ours, theirs = fixed.rates_for(start + 1), baseline.rates_for(start + 1)
        mask = sum(
            1 << i for i, kind in enumerate(KINDS) if getattr(ours, kind) != getattr(theirs, kind)
        )
        bands.append((start, mask))
    return tuple(bands)


def scaled(source: Rates | TieredRates, factor: Decimal, label: str) -> Rates | TieredRates:
    """``source`` with every rate times ``factor`` (a service tier's multiplier)."""

    def scale(rates: Rates) -> Rates:
        return Rates(**{kind: getattr(rates, kind) * factor for kind in KINDS}, source=label)

    if isinstance(source, TieredRates):
        return TieredRates(tuple((s, scale(r)) for s, r in source.bands), label)
    return scale(source)


# -- prices as published ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Prices:
    """USD per million tokens. An empty cache price falls back: a cache read or a cache
    write to the input price, a 1-hour cache write to the (5-minute) cache-write price."""

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None

    def rates(self, source: str) -> Rates:
        return Rates.per_mtok(
            input=self.input,
            output=self.output,
            cache_read=self.cache_read,
            cache_write=self.cache_write,
            cache_write_1h=self.cache_write_1h,
            source=source,
        )


def price_source_of(
    base: Prices, tiers: Iterable[tuple[int, Prices]], source: str
) -> Rates | TieredRates:
    """Rates of ``base`` prices, with long-context ``tiers`` (over ``start`` input
    tokens, these prices on every token) if any."""
    bands = sorted(tiers, key=lambda t: t[0])
    if not bands:
        return base.rates(source)
    return TieredRates(
        ((-1, base.rates(source)), *((s, p.rates(source)) for s, p in bands)), source
    )


def describe(source: PriceSource | None) -> str:
    """A price per million tokens, as a line of text (``fluxgate_prices``)."""
    if source is None:
        return "none"
    if isinstance(source, Corrected):
        source = source.fixed
    if isinstance(source, Rates):
        return _describe(source.per_mtok_prices())
    parts = [_describe(source.bands[0][1].per_mtok_prices())]
    parts += [
        f"over {start:,} input tokens: {_describe(rates.per_mtok_prices())}"
        for start, rates in source.bands[1:]
    ]
    return "; ".join(parts)


def _describe(prices: Prices) -> str:
    """Every kind's price; a cache write that is the input price, or a 1-hour write that
    is the cache-write price (no price of its own), left out."""
    parts = [f"input ${_money(prices.input)}", f"output ${_money(prices.output)}"]
    if prices.cache_read is not None:
        parts.append(f"cache read ${_money(prices.cache_read)}")
    if prices.cache_write is not None and prices.cache_write != prices.input:
        parts.append(f"cache write ${_money(prices.cache_write)}")
    if prices.cache_write_1h is not None and prices.cache_write_1h != prices.cache_write:
        parts.append(f"1h cache write ${_money(prices.cache_write_1h)}")
    return ", ".join(parts)


def _money(value: Decimal) -> str:
    return format(value.normalize(), "f") if value.is_finite() else str(value)


# -- genai-prices' data -----------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class ModelEntry:
    """One model as found for a (provider, model name): its genai-prices data (None when
    genai-prices does not know it), the supplement rows for it, the times at which its
    prices change, and its prices resolved so far by (tier, period)."""

    model: Any  # genai_prices.types.ModelInfo | None
    provider: Any  # genai_prices.types.Provider | None
    #: Supplement rows for this model (``price_supplement.Correction``).
    corrections: tuple[Any, ...]
    #: When its dated prices and tier prices start (midnight UTC of their start dates, as
    #: genai-prices compares UTC dates), the supplement rows' dates included, ascending.
    starts: tuple[dt.datetime, ...]
    #: Its other constraints (times of day: off-peak prices), evaluated per call.
    daily: tuple[Any, ...]
    prices: dict[tuple[str, object], PriceSource | None] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(
        cls,
        model: Any,
        provider: Any,
        corrections: tuple[Any, ...] = (),
        dates: Iterable[dt.date] = (),
    ) -> ModelEntry:
        constraints: list[Any] = []
        if model is not None:
            constraints = [
                getattr(p, "constraint", None)
                for p in (model.prices if isinstance(model.prices, list) else ())
            ]
            constraints += [v.constraint for v in model.price_variants or ()]
        starts_on: set[dt.date] = set(dates)
        daily: list[Any] = []
        for constraint in constraints:
            if constraint is None:
                continue
            start = getattr(constraint, "start_date", None)
            if type(start) is dt.date and not hasattr(constraint, "start_time"):
                starts_on.add(start)
            elif constraint not in daily:
                daily.append(constraint)
        starts = tuple(
            dt.datetime.combine(d, dt.time(), tzinfo=dt.timezone.utc) for d in sorted(starts_on)
        )
        return cls(model, provider, corrections, starts, tuple(daily))

    def period(self, at: dt.datetime) -> object:
        """What the model's prices at ``at`` (aware) depend on: how many of its price
        changes have happened by then, and which of its daily windows are on."""
        if not self.starts and not self.daily:
            return 0
        reached = bisect.bisect_right(self.starts, at)
        if not self.daily:
            return reached
        return (reached, tuple(bool(c.active(at)) for c in self.daily))


def price_context(tier: str) -> dict[str, str]:
    """genai-prices' request context for one of our service tiers: its batch prices are
    keyed ``processing="batch"``, the others by ``service_tier``."""
    return {"processing": "batch"} if tier == "batch" else {"service_tier": tier}


def find_genai_model(provider: str, model: str) -> tuple[Any, Any] | None:
    """genai-prices' (model, provider) for ``model`` at our ``provider``, or None."""
    from genai_prices import Usage as GenaiUsage
    from genai_prices import calc_price

    try:
        calc = calc_price(
            GenaiUsage(input_tokens=0, output_tokens=0),
            model,
            provider_id=GENAI_PROVIDER_IDS.get(provider, provider),
        )
    except LookupError:
        return None
    return calc.model, calc.provider


def genai_rates(entry: ModelEntry, at: dt.datetime, tier: str = "") -> Rates | TieredRates | None:
    """genai-prices' price of ``entry`` at ``at`` (aware); for a ``tier``, its own prices
    for that tier, or None when the data has none then (the multiplier's case)."""
    from genai_prices import Usage as GenaiUsage

    if entry.model is None:
        return None
    context = price_context(tier) if tier else None
    if context is not None and not _has_tier_prices(entry, context, at):
        return None
    calc = entry.model.calc_price(
        GenaiUsage(input_tokens=0, output_tokens=0),
        entry.provider,
        genai_request_timestamp=at,
        price_context=context,
    )
    return _price_source(calc.model_price)


def genai_snapshot() -> object:
    """genai-prices' current price data (its bundled snapshot, or the one UpdatePrices or
    the site set): resolved prices are kept only while it is the same object."""
    global _get_snapshot
    if _get_snapshot is None:
        from genai_prices import data_snapshot  # (imported on first use: its data is large)

        _get_snapshot = data_snapshot.get_snapshot
    return _get_snapshot()


_get_snapshot: Callable[[], object] | None = None


def _has_tier_prices(entry: ModelEntry, context: dict[str, str], at: dt.datetime) -> bool:
    """Whether genai-prices has prices of its own for the tier ``context`` at ``at``
    (a variant in force then that sets at least one price): as ``calc_price`` does, the
    variants count only for a model of the provider itself, not one it falls back to."""
    if not any(entry.model is m for m in entry.provider.models):
        return False
    for variant in entry.model.price_variants or ():
        if variant.constraint is not None and not variant.constraint.active(at):
            continue
        if not all(context.get(k) == v for k, v in variant.when.items()):
            continue
        if any(p is not None for k, p in vars(variant.prices).items() if not k.startswith("_")):
            return True
    return False


def _price_source(model_price: Any) -> Rates | TieredRates | None:
    """Per-token rates of a genai-prices ``ModelPrice`` (with its long-context tiers)."""
    from genai_prices.types import TieredPrices

    prices = {name: getattr(model_price, f"{name}_mtok", None) for name in KINDS}
    if prices["input"] is None and prices["output"] is None:
        return None
    starts = sorted(
        {t.start for p in prices.values() if isinstance(p, TieredPrices) for t in p.tiers}
    )

    def at_band(price: Any, start: int) -> Any:
        if not isinstance(price, TieredPrices):
            return price
        applies = price.base
        for tier in sorted(price.tiers, key=lambda t: t.start):
            if tier.start <= start:
                applies = tier.price
        return applies

    def band(start: int) -> Prices:
        values = {k: at_band(p, start) for k, p in prices.items()}
        return Prices(
            input=values["input"] or Decimal(0),
            output=values["output"] or Decimal(0),
            cache_read=values["cache_read"],
            cache_write=values["cache_write"],
            cache_write_1h=values["cache_write_1h"],
        )

    return price_source_of(band(-1), [(s, band(s)) for s in starts], "genai-prices")
