"""Cost of a call in USD, as ``Decimal``.

Where a price comes from, first found wins (for the model that served the call or the one
it asked for, served first within each source: a ``ModelPrice`` row for either name comes
before any data for either):

1. a ``ModelPrice`` row (the admin) for the provider and model: negotiated or self-hosted
   prices, with their own cache, 1-hour cache-write and long-context tier prices;
2. a row of FluxGate's supplement (``price_supplement``): a price genai-prices' data
   lacks or gets wrong, from the provider's published source;
3. the ``genai-prices`` package's data (bundled, no network; a site may refresh it, see
   the README).

A call is priced at the prices in force at its time (the record's ``created_at``): the data
has dated prices (o3 was $10/$40 until 2025-06-10) and dated tier prices, and supplement
rows have their own dates. Each model is looked up once, with the dates (and times of day)
where its prices change, and each (service tier, price period) of it is turned into
per-token ``Decimal`` rates once (``price_rates``) and reused; a call happening now pays a
dictionary lookup and a date comparison. ``ModelPrice`` overrides are held in memory,
updated at once by this process's saves and re-read from the database every
``PRICE_CACHE_SECONDS`` for other processes' changes. New genai-prices data (its
``UpdatePrices``, or a snapshot the site sets) is noticed on the next call.

Service tiers: a supplement row for the tier, else genai-prices' own prices for the tier
where the data has them at the call's time (OpenAI priority and flex, batch keyed
``processing="batch"``...), labelled ``"<source>+<tier>"``; otherwise
``SERVICE_TIER_MULTIPLIERS`` applied to the standard price, labelled
``"<source>+<tier>*<multiplier>"`` (``"genai-prices+batch*0.5"``).

An unknown model costs ``None`` with ``cost_source="unknown"`` — never a silent 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import threading
import time
from decimal import Decimal
from typing import Any

from . import price_rates
from .conf import fluxgate_settings, on_reload
from .price_rates import (
    GENAI_PROVIDER_IDS,
    MTOK,
    Corrected,
    ModelEntry,
    Prices,
    PriceSource,
    Rates,
    TieredRates,
    genai_rates,
    genai_snapshot,
    price_source_of,
    scaled,
)
from .price_supplement import corrections_for, in_force
from .records import CostSource, Usage

__all__ = [
    "GENAI_PROVIDER_IDS",
    "MTOK",
    "Cost",
    "PriceBook",
    "PriceSource",
    "Rates",
    "TieredRates",
    "calculate_cost",
    "price_book",
    "rates_from_model_price",
]

logger = logging.getLogger("fluxgate.pricing")

#: Models whose prices a process keeps; past this the cache starts afresh.
_MAX_CACHED_MODELS = 4096
#: (Tier, price period) pairs kept per model; past this its prices start afresh.
_MAX_PRICES_PER_MODEL = 64
#: ``Event.cost_source``'s length.
_MAX_SOURCE_LENGTH = 50

#: Tiers that are the standard price (OpenAI "default"/"auto", Anthropic "standard").
_STANDARD_TIERS = frozenset({"default", "auto", "standard"})

_OVERRIDE = CostSource.OVERRIDE.value


@dataclasses.dataclass(frozen=True, slots=True)
class Cost:
    usd: Decimal | None
    source: str
    #: What provider prompt caching saved: the same call with cache reads at the input price.
    saved: Decimal | None = dataclasses.field(default=None, compare=False)


#: A model neither genai-prices nor the supplement knows (cached too, bounded like the rest).
_UNKNOWN_MODEL = object()


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


def _multiplier(tier: str) -> Decimal | None:
    multiplier = fluxgate_settings.SERVICE_TIER_MULTIPLIERS.get(tier)
    return None if multiplier is None else Decimal(str(multiplier))


class PriceBook:
    """Per-process price lookups: ``ModelPrice`` overrides, the supplement, genai-prices."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], ModelEntry | object] = {}
        self._snapshot: object = None
        self._overrides: dict[tuple[str, str], Rates | TieredRates] = {}
        self._overrides_loaded_at: float | None = None
        self._loading = threading.Lock()
        self._warned: set[tuple[str, str]] = set()

    # -- lookups -----------------------------------------------------------------------

    def price_source(
        self, provider: str, model: str, at: dt.datetime | None = None
    ) -> PriceSource | None:
        """The price of ``model`` at ``provider`` at time ``at`` (default: now): an
        override, a supplement row, genai-prices data, or None."""
        self._maybe_refresh_overrides()
        override = self._overrides.get((provider, model))
        if override is not None:
            return override
        return self.data_price(provider, model, _aware(at))

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
        price, at the prices in force at ``at`` (the call's time; default: now).

        The sources keep their order across the names: a ``ModelPrice`` override for
        either name comes before the supplement's or genai-prices' price for either (a
        site's row for ``gpt-4o`` prices a call OpenAI reports as ``gpt-4o-2024-08-06``)."""
        when = _aware(at)
        source: PriceSource | None = None
        priced_model = ""
        self._maybe_refresh_overrides()
        for model in models:
            if model:
                source = self._overrides.get((provider, model))
                if source is not None:
                    priced_model = model
                    break
        else:
            for model in models:
                if model:
                    source = self.data_price(provider, model, when)
                    if source is not None:
                        priced_model = model
                        break
        if source is None:
            self._warn_unknown(provider, next((m for m in models if m), ""))
            return Cost(None, "unknown")
        factor = Decimal(1)
        if type(source) is Corrected:
            source, label = source.priced(usage)
        else:
            label = source.source
        if service_tier and service_tier not in _STANDARD_TIERS:
            tier_source = None
            if source.source != _OVERRIDE:
                tier_source = self.data_price(provider, priced_model, when, service_tier)
            if tier_source is not None:
                # The tier's own prices at that time: a supplement row, or genai-prices'
                # (OpenAI priority, flex, batch of the models its Batch table lists...).
                if type(tier_source) is Corrected:
                    source, label = tier_source.priced(usage)
                else:
                    source = tier_source
                    label = f"{source.source}+{service_tier}"
            else:
                multiplier = _multiplier(service_tier)
                if multiplier is not None:
                    factor = multiplier
                    label = _multiplier_label(label, service_tier, factor)
        usd = source.cost(usage) * factor
        saved = None
        if usage.cache_read_tokens:
            uncached = dataclasses.replace(usage, cache_read_tokens=0)
            saved = source.cost(uncached) * factor - usd
        return Cost(usd, label, saved)

    # -- the supplement and genai-prices ---------------------------------------------------

    def data_price(
        self, provider: str, model: str, at: dt.datetime, tier: str = ""
    ) -> PriceSource | None:
        """The price of ``model`` at ``at`` (aware) without overrides: a supplement row
        (``Corrected``) or genai-prices' data; for a ``tier``, that tier's own prices, or
        None when neither has any then (the multiplier's case)."""
        entry = self._entry(provider, model)
        if not isinstance(entry, ModelEntry):
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

    def _entry(self, provider: str, model: str) -> ModelEntry | object:
        """The model's cached entry (its genai-prices model, its supplement rows and its
        resolved prices), looked up once per model and price data."""
        snapshot = genai_snapshot()
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
        return entry

    @staticmethod
    def _find_model(provider: str, model: str) -> ModelEntry | object:
        found = price_rates.find_genai_model(provider, model)
        model_id = getattr(found[0], "id", model) if found else model
        rows = corrections_for(provider, model_id) or corrections_for(provider, model)
        if found is None and not rows:
            return _UNKNOWN_MODEL
        genai_model, genai_provider = found if found else (None, None)
        dates = [d for row in rows for d in row.dates()]
        return ModelEntry.of(genai_model, genai_provider, rows, dates)

    @staticmethod
    def _resolve(entry: ModelEntry, at: dt.datetime, tier: str) -> PriceSource | None:
        data = genai_rates(entry, at, tier)
        row = in_force(entry.corrections, at, tier)
        if row is None:
            return data
        fixed = row.price_source()
        # What the call would cost without the row, to label only the calls it changes.
        baseline: Rates | TieredRates | None = data
        baseline_label = f"{data.source}+{tier}" if data is not None and tier else "genai-prices"
        if tier and data is None:
            standard = genai_rates(entry, at)
            factor = _multiplier(tier)
            if standard is not None and factor is not None:
                baseline_label = _multiplier_label(standard.source, tier, factor)
                baseline = scaled(standard, factor, baseline_label)
        return Corrected.of(
            fixed, baseline, baseline_label if baseline is not None else fixed.source
        )

    def context_window(self, provider: str, model: str) -> int | None:
        """The model's context window in tokens (genai-prices data), or None if unknown
        (from the entry its prices use: one lookup per model)."""
        entry = self._entry(provider, model)
        window = getattr(getattr(entry, "model", None), "context_window", None)
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

    def override(self, provider: str, model: str) -> Rates | TieredRates | None:
        """The ``ModelPrice`` override of ``provider``/``model``, if any."""
        self._maybe_refresh_overrides()
        return self._overrides.get((provider, model))

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
            threading.Thread(target=self._load_overrides, args=(loading, True), daemon=True).start()
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


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


def rates_from_model_price(row: Any) -> Rates | TieredRates:
    """The rates of a ``ModelPrice`` row: its prices, and its long-context tier (over
    ``tier_threshold_tokens`` input tokens, the tier prices on every token) when set."""
    base = Prices(
        input=Decimal(row.input_per_mtok),
        output=Decimal(row.output_per_mtok),
        cache_read=_decimal(row.cache_read_per_mtok),
        cache_write=_decimal(row.cache_write_per_mtok),
        cache_write_1h=_decimal(row.cache_write_1h_per_mtok),
    )
    tiers = []
    threshold = row.tier_threshold_tokens
    tier_input = _decimal(row.tier_input_per_mtok)
    tier_output = _decimal(row.tier_output_per_mtok)
    if threshold is not None and tier_input is not None and tier_output is not None:
        tiers.append(
            (
                int(threshold),
                Prices(
                    input=tier_input,
                    output=tier_output,
                    cache_read=_decimal(row.tier_cache_read_per_mtok),
                    cache_write=_decimal(row.tier_cache_write_per_mtok),
                    cache_write_1h=_decimal(row.tier_cache_write_1h_per_mtok),
                ),
            )
        )
    return price_source_of(base, tiers, _OVERRIDE)


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
