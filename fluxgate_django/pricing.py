"""Cost of a call in USD, as ``Decimal``.

Prices come from the ``genai-prices`` package (bundled data, no network), overridden per
model by ``ModelPrice`` rows. A call is priced at the prices in force at its time (the
record's ``created_at``): the data has dated prices (o3 was $10/$40 until 2025-06-10) and
dated tier prices. Looking a model up in genai-prices costs ~100 µs, so each model is
resolved once, with the dates (and times of day) where its prices change, and each
(service tier, price period) of it is turned into per-token ``Decimal`` rates once
(long-context tiers included) and reused; a call happening now pays a dictionary lookup
and a date comparison. ``ModelPrice`` overrides are held in memory, updated at once by this
process's saves and re-read from the database every ``PRICE_CACHE_SECONDS`` for other
processes' changes.

Service tiers: genai-prices' own prices for the tier where the data has them at the call's
time (OpenAI priority and flex, batch keyed ``processing="batch"``...), labelled
``"<source>+<tier>"``; otherwise ``SERVICE_TIER_MULTIPLIERS`` applied to the standard price,
labelled ``"<source>+<tier>*<multiplier>"`` (``"genai-prices+batch*0.5"``).

An unknown model costs ``None`` with ``cost_source="unknown"`` — never a silent 0.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from .conf import fluxgate_settings, on_reload
from .records import Usage

logger = logging.getLogger("fluxgate.pricing")

MTOK = Decimal(1_000_000)

#: Models whose prices a process keeps; past this the cache starts afresh.
_MAX_CACHED_MODELS = 4096
#: (Tier, price period) pairs kept per model; past this its prices start afresh.
_MAX_PRICES_PER_MODEL = 64
#: ``Event.cost_source``'s length.
_MAX_SOURCE_LENGTH = 50

#: Tiers that are the standard price (OpenAI "default"/"auto", Anthropic "standard").
_STANDARD_TIERS = frozenset({"default", "auto", "standard"})

#: Our provider names → genai-prices provider ids.
GENAI_PROVIDER_IDS = {"openai": "openai", "anthropic": "anthropic", "gemini": "google"}


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


PriceSource = Rates | TieredRates


@dataclasses.dataclass(frozen=True, slots=True)
class Cost:
    usd: Decimal | None
    source: str
    #: What provider prompt caching saved: the same call with cache reads at the input price.
    saved: Decimal | None = dataclasses.field(default=None, compare=False)


@dataclasses.dataclass(slots=True)
class _ModelEntry:
    """One genai-prices model as found for a (provider, model name): its data, the times
    at which its prices change, and its prices resolved so far by (tier, period)."""

    model: Any  # genai_prices.types.ModelInfo
    provider: Any  # genai_prices.types.Provider
    #: When its dated prices and tier prices start (midnight UTC of their start dates, as
    #: genai-prices compares UTC dates), ascending.
    starts: tuple[dt.datetime, ...]
    #: Its other constraints (times of day: off-peak prices), evaluated per call.
    daily: tuple[Any, ...]
    prices: dict[tuple[str, object], PriceSource | None] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, model: Any, provider: Any) -> _ModelEntry:
        constraints = [
            getattr(p, "constraint", None)
            for p in (model.prices if isinstance(model.prices, list) else ())
        ]
        constraints += [v.constraint for v in model.price_variants or ()]
        dates: set[dt.date] = set()
        daily: list[Any] = []
        for constraint in constraints:
            if constraint is None:
                continue
            start = getattr(constraint, "start_date", None)
            if type(start) is dt.date and not hasattr(constraint, "start_time"):
                dates.add(start)
            elif constraint not in daily:
                daily.append(constraint)
        starts = tuple(
            dt.datetime.combine(d, dt.time(), tzinfo=dt.timezone.utc) for d in sorted(dates)
        )
        return cls(model, provider, starts, tuple(daily))

    def period(self, at: dt.datetime) -> object:
        """What the model's prices at ``at`` (aware) depend on: how many of its price
        changes have happened by then, and which of its daily windows are on."""
        if not self.starts and not self.daily:
            return 0
        reached = bisect.bisect_right(self.starts, at)
        if not self.daily:
            return reached
        return (reached, tuple(bool(c.active(at)) for c in self.daily))


#: A model genai-prices does not know (cached too, bounded like the rest).
_UNKNOWN_MODEL = object()


def _price_context(tier: str) -> dict[str, str]:
    """genai-prices' request context for one of our service tiers: its batch prices are
    keyed ``processing="batch"``, the others by ``service_tier``."""
    return {"processing": "batch"} if tier == "batch" else {"service_tier": tier}


def _aware(at: dt.datetime | None) -> dt.datetime:
    """``at`` as an aware datetime: now if None; a naive one is the site's local time (as
    Django stores it with ``USE_TZ`` off)."""
    if at is None:
        return dt.datetime.now(dt.timezone.utc)
    if at.tzinfo is None:
        try:
            from django.utils import timezone

            return at.replace(tzinfo=timezone.get_default_timezone())
        except Exception:  # (settings not configured: take it as UTC, as genai-prices does)
            return at.replace(tzinfo=dt.timezone.utc)
    return at


def _multiplier_label(label: str, tier: str, factor: Decimal) -> str:
    text = format(factor.normalize(), "f") if factor.is_finite() else str(factor)
    return f"{label}+{tier}*{text}"[:_MAX_SOURCE_LENGTH]


class PriceBook:
    """Per-process price lookups: genai-prices data plus ``ModelPrice`` overrides."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], _ModelEntry | object] = {}
        self._snapshot: object = None
        self._overrides: dict[tuple[str, str], Rates] = {}
        self._overrides_loaded_at: float | None = None
        self._loading = threading.Lock()
        self._warned: set[tuple[str, str]] = set()
        self._windows: dict[tuple[str, str], int | None] = {}

    # -- lookups -----------------------------------------------------------------------

    def price_source(
        self, provider: str, model: str, at: dt.datetime | None = None
    ) -> PriceSource | None:
        """The price of ``model`` at ``provider`` at time ``at`` (default: now): an
        override, genai-prices data, or None."""
        self._maybe_refresh_overrides()
        override = self._overrides.get((provider, model))
        if override is not None:
            return override
        return self._genai_price(provider, model, _aware(at))

    def cost(
        self,
        provider: str,
        models: tuple[str, ...],
        usage: Usage,
        *,
        service_tier: str | None = None,
        at: dt.datetime | None = None,
    ) -> Cost:
        """Cost of ``usage`` for the first of ``models`` (served, then requested) with a
        price, at the prices in force at ``at`` (the call's time; default: now)."""
        when = _aware(at)
        source: PriceSource | None = None
        priced_model = ""
        for model in models:
            if model:
                source = self.price_source(provider, model, when)
                if source is not None:
                    priced_model = model
                    break
        if source is None:
            self._warn_unknown(provider, next((m for m in models if m), ""))
            return Cost(None, "unknown")
        factor = Decimal(1)
        label = source.source
        if service_tier and service_tier not in _STANDARD_TIERS:
            tier_source = None
            if source.source == "genai-prices":
                tier_source = self._genai_price(provider, priced_model, when, service_tier)
            if tier_source is not None:
                # genai-prices has this tier's own prices at that time (OpenAI priority,
                # flex, batch of the models its Batch table lists...).
                source = tier_source
                label = f"{source.source}+{service_tier}"
            else:
                multiplier = fluxgate_settings.SERVICE_TIER_MULTIPLIERS.get(service_tier)
                if multiplier is not None:
                    factor = Decimal(str(multiplier))
                    label = _multiplier_label(label, service_tier, factor)
        usd = source.cost(usage) * factor
        saved = None
        if usage.cache_read_tokens:
            uncached = dataclasses.replace(usage, cache_read_tokens=0)
            saved = source.cost(uncached) * factor - usd
        return Cost(usd, label, saved)

    # -- genai-prices ------------------------------------------------------------------

    def _genai_price(
        self, provider: str, model: str, at: dt.datetime, tier: str = ""
    ) -> PriceSource | None:
        """genai-prices' price of ``model`` at ``at`` (aware); for a ``tier``, its own
        prices for that tier, or None when the data has none then (the multiplier's case)."""
        snapshot = _genai_snapshot()
        if snapshot is not self._snapshot:
            # New price data (genai-prices' UpdatePrices, or a site's own snapshot).
            self._models = {}
            self._snapshot = snapshot
        key = (provider, model)
        entry = self._models.get(key)
        if entry is None:
            entry = self._find_model(provider, model)
            if len(self._models) >= _MAX_CACHED_MODELS:
                # Model names can come from API clients: keep the cache bounded.
                self._models.clear()
            self._models[key] = entry
        if not isinstance(entry, _ModelEntry):
            return None
        price_key = (tier, entry.period(at))
        try:
            return entry.prices[price_key]
        except KeyError:
            pass
        source = self._resolve(entry, at, tier)
        if len(entry.prices) >= _MAX_PRICES_PER_MODEL:
            entry.prices.clear()  # (tier names can come from API clients too)
        entry.prices[price_key] = source
        return source

    @staticmethod
    def _find_model(provider: str, model: str) -> _ModelEntry | object:
        from genai_prices import Usage as GenaiUsage
        from genai_prices import calc_price

        try:
            calc = calc_price(
                GenaiUsage(input_tokens=0, output_tokens=0),
                model,
                provider_id=GENAI_PROVIDER_IDS.get(provider, provider),
            )
        except LookupError:
            return _UNKNOWN_MODEL
        return _ModelEntry.of(calc.model, calc.provider)

    @staticmethod
    def _resolve(entry: _ModelEntry, at: dt.datetime, tier: str) -> PriceSource | None:
        from genai_prices import Usage as GenaiUsage

        context = _price_context(tier) if tier else None
        if context is not None and not _has_tier_prices(entry, context, at):
            return None
        calc = entry.model.calc_price(
            GenaiUsage(input_tokens=0, output_tokens=0),
            entry.provider,
            genai_request_timestamp=at,
            price_context=context,
        )
        return _price_source(calc.model_price)

    def context_window(self, provider: str, model: str) -> int | None:
        """The model's context window in tokens (genai-prices data), or None if unknown."""
        key = (provider, model)
        if key not in self._windows:
            if len(self._windows) >= _MAX_CACHED_MODELS:
                self._windows.clear()
            self._windows[key] = self._lookup_window(provider, model)
        return self._windows[key]

    @staticmethod
    def _lookup_window(provider: str, model: str) -> int | None:
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
        window = getattr(calc.model, "context_window", None)
        return window if isinstance(window, int) and window > 0 else None

    def _warn_unknown(self, provider: str, model: str) -> None:
        key = (provider, model)
        if key not in self._warned and len(self._warned) < _MAX_CACHED_MODELS:
            self._warned.add(key)
            logger.warning(
                "FluxGate has no price for %s model %r: its events get cost=None "
                "(cost_source='unknown'). Add a ModelPrice row in the admin to price it.",
                provider,
                model,
            )

    # -- ModelPrice overrides ------------------------------------------------------------

    def _maybe_refresh_overrides(self) -> None:
        loaded = self._overrides_loaded_at
        if loaded is not None and time.monotonic() - loaded < fluxgate_settings.PRICE_CACHE_SECONDS:
            return
        loading = self._loading  # (this one: reset() may replace it meanwhile)
        if not loading.acquire(blocking=False):
            return
        if _in_event_loop():
            # No database I/O on an event loop: read them in a thread; until then the
            # overrides known so far (always including this process's own saves) apply.
            self._overrides_loaded_at = time.monotonic()
            threading.Thread(
                target=self._load_overrides, args=(loading, True), daemon=True
            ).start()
        else:
            self._load_overrides(loading)

    def _load_overrides(self, loading: threading.Lock, in_own_thread: bool = False) -> None:
        from django.db import connections, router

        from .models import ModelPrice

        # A caller's thread that had no connection (a LangChain callback pool, a worker
        # thread) is not left holding one for this one read.
        connection = connections[router.db_for_read(ModelPrice)]
        opened_here = connection.connection is None and not connection.in_atomic_block
        try:
            self._overrides = {
                (row.provider, row.model): rates_from_model_price(row)
                for row in ModelPrice.objects.all()
            }
            self._overrides_loaded_at = time.monotonic()
        except Exception:
            # The database is unreachable: keep the overrides we have, try again later.
            logger.warning("FluxGate could not load ModelPrice overrides", exc_info=True)
            self._overrides_loaded_at = time.monotonic()
        finally:
            if in_own_thread or opened_here:
                connection.close()
            loading.release()

    def set_override(self, row: Any) -> None:
        self._overrides[(row.provider, row.model)] = rates_from_model_price(row)

    def drop_override(self, provider: str, model: str) -> None:
        self._overrides.pop((provider, model), None)

    def reset_overrides(self) -> None:
        """Forget ModelPrice overrides; they are read again on the next lookup."""
        self._overrides = {}
        self._overrides_loaded_at = None

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


def _genai_snapshot() -> object:
    """genai-prices' current price data (its bundled snapshot, or the one UpdatePrices or
    the site set): resolved prices are kept only while it is the same object."""
    global _get_snapshot
    if _get_snapshot is None:
        from genai_prices import data_snapshot  # (imported on first use: its data is large)

        _get_snapshot = data_snapshot.get_snapshot
    return _get_snapshot()


_get_snapshot: Callable[[], object] | None = None


def _has_tier_prices(entry: _ModelEntry, context: dict[str, str], at: dt.datetime) -> bool:
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


_PRICE_FIELDS = ("input", "output", "cache_read", "cache_write", "cache_write_1h")


def _price_source(model_price: Any) -> PriceSource | None:
    """Per-token rates of a genai-prices ``ModelPrice`` (with its long-context tiers)."""
    from genai_prices.types import TieredPrices

    prices = {name: getattr(model_price, f"{name}_mtok", None) for name in _PRICE_FIELDS}
    if prices["input"] is None and prices["output"] is None:
        return None
    starts = sorted(
        {t.start for p in prices.values() if isinstance(p, TieredPrices) for t in p.tiers}
    )
    if not starts:
        return _rates(prices)

    def at_band(price: Any, start: int) -> Any:
        if not isinstance(price, TieredPrices):
            return price
        applies = price.base
        for tier in sorted(price.tiers, key=lambda t: t.start):
            if tier.start <= start:
                applies = tier.price
        return applies

    bands = [(-1, _rates({k: at_band(p, -1) for k, p in prices.items()}))]
    bands += [(s, _rates({k: at_band(p, s) for k, p in prices.items()})) for s in starts]
    return TieredRates(tuple(bands))


def _rates(prices: dict[str, Any]) -> Rates:
    return Rates.per_mtok(
        input=prices["input"] or Decimal(0),
        output=prices["output"] or Decimal(0),
        cache_read=prices["cache_read"],
        cache_write=prices["cache_write"],
        cache_write_1h=prices["cache_write_1h"],
        source="genai-prices",
    )


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def rates_from_model_price(row: Any) -> Rates:
    return Rates.per_mtok(
        input=Decimal(row.input_per_mtok),
        output=Decimal(row.output_per_mtok),
        cache_read=None if row.cache_read_per_mtok is None else Decimal(row.cache_read_per_mtok),
        cache_write=None if row.cache_write_per_mtok is None else Decimal(row.cache_write_per_mtok),
        source="override",
    )


price_book = PriceBook()
on_reload(price_book.reset)


def calculate_cost(
    provider: str,
    model: str,
    usage: Usage,
    *,
    requested_model: str = "",
    service_tier: str | None = None,
    at: dt.datetime | None = None,
) -> Cost:
    """Cost of ``usage`` on ``provider``/``model`` (falling back to ``requested_model``'s
    price) at the prices in force at ``at``, the call's time (default: now)."""
    return price_book.cost(
        provider, (model, requested_model), usage, service_tier=service_tier, at=at
    )


def connect_signals() -> None:
    """Keep this process's overrides current as ModelPrice rows change (from AppConfig.ready)."""
    from django.db.models.signals import post_delete, post_save

    from .models import ModelPrice

    def saved(sender: Any, instance: Any, **kwargs: Any) -> None:
        price_book.set_override(instance)

    def deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
        price_book.drop_override(instance.provider, instance.model)

    post_save.connect(saved, sender=ModelPrice, weak=False, dispatch_uid="fluxgate_price_saved")
    post_delete.connect(deleted, sender=ModelPrice, weak=False, dispatch_uid="fluxgate_price_del")
