"""Cost of a call in USD, as ``Decimal``.

Prices come from the ``genai-prices`` package (bundled data, no network), overridden per
model by ``ModelPrice`` rows. Looking a model up in genai-prices costs ~100 µs, so each
model's price is resolved once (per day, as prices can change on a date) and reused;
``ModelPrice`` overrides are held in memory, updated at once by this process's saves and
re-read from the database every ``PRICE_CACHE_SECONDS`` for other processes' changes.

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

from .conf import fluxgate_settings, on_reload
from .records import Usage

logger = logging.getLogger("fluxgate.pricing")

MTOK = Decimal(1_000_000)

#: Models (x tiers) whose prices a process keeps; past this the cache starts afresh.
_MAX_CACHED_MODELS = 4096

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
class _TieredPrice:
    """A genai-prices model price with tiers (e.g. long-context rates): priced by genai-prices."""

    model_price: Any
    source: str = "genai-prices"

    def cost(self, usage: Usage) -> Decimal:
        from genai_prices import Usage as GenaiUsage

        return self.model_price.calc_price(
            GenaiUsage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cache_write_tokens=usage.cache_write_tokens,
            )
        )["total_price"]


PriceSource = Rates | _TieredPrice


@dataclasses.dataclass(frozen=True, slots=True)
class Cost:
    usd: Decimal | None
    source: str
    #: What provider prompt caching saved: the same call with cache reads at the input price.
    saved: Decimal | None = dataclasses.field(default=None, compare=False)


class PriceBook:
    """Per-process price lookups: genai-prices data plus ``ModelPrice`` overrides."""

    def __init__(self) -> None:
        self._genai: dict[tuple[str, str, str], tuple[dt.date, PriceSource | None]] = {}
        self._overrides: dict[tuple[str, str], Rates] = {}
        self._overrides_loaded_at: float | None = None
        self._loading = threading.Lock()
        self._warned: set[tuple[str, str]] = set()
        self._windows: dict[tuple[str, str], int | None] = {}

    # -- lookups -----------------------------------------------------------------------

    def price_source(self, provider: str, model: str) -> PriceSource | None:
        """The price of ``model`` at ``provider``: an override, genai-prices data, or None."""
        self._maybe_refresh_overrides()
        override = self._overrides.get((provider, model))
        if override is not None:
            return override
        return self._genai_price(provider, model)

    def cost(
        self,
        provider: str,
        models: tuple[str, ...],
        usage: Usage,
        *,
        service_tier: str | None = None,
    ) -> Cost:
        """Cost of ``usage`` for the first of ``models`` (served, then requested) with a price."""
        source: PriceSource | None = None
        priced_model = ""
        for model in models:
            if model:
                source = self.price_source(provider, model)
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
                tier_source = self._genai_price(provider, priced_model, service_tier)
            if tier_source is not None and tier_source != source:
                # genai-prices knows this tier's own prices (priority, flex of o-models...).
                source = tier_source
                label = f"{source.source}+{service_tier}"
            else:
                multiplier = fluxgate_settings.SERVICE_TIER_MULTIPLIERS.get(service_tier)
                if multiplier is not None:
                    factor = Decimal(str(multiplier))
                    label = f"{label}+{service_tier}"
        usd = source.cost(usage) * factor
        saved = None
        if usage.cache_read_tokens:
            uncached = dataclasses.replace(usage, cache_read_tokens=0)
            saved = source.cost(uncached) * factor - usd
        return Cost(usd, label, saved)

    # -- genai-prices ------------------------------------------------------------------

    def _genai_price(self, provider: str, model: str, tier: str = "") -> PriceSource | None:
        today = dt.date.today()
        key = (provider, model, tier)
        cached = self._genai.get(key)
        if cached is not None and cached[0] == today:
            return cached[1]
        source = self._lookup_genai(provider, model, tier)
        if len(self._genai) >= _MAX_CACHED_MODELS:
            # Model names can come from API clients: keep the cache bounded.
            self._genai.clear()
        self._genai[key] = (today, source)
        return source

    @staticmethod
    def _lookup_genai(provider: str, model: str, tier: str = "") -> PriceSource | None:
        from genai_prices import Usage as GenaiUsage
        from genai_prices import calc_price
        from genai_prices.types import TieredPrices

        provider_id = GENAI_PROVIDER_IDS.get(provider, provider)
        try:
            calc = calc_price(
                GenaiUsage(input_tokens=0, output_tokens=0),
                model,
                provider_id=provider_id,
                price_context={"service_tier": tier} if tier else None,
            )
        except LookupError:
            return None
        mp = calc.model_price
        prices = {
            name: getattr(mp, f"{name}_mtok", None)
            for name in ("input", "output", "cache_read", "cache_write", "cache_write_1h")
        }
        if prices["input"] is None and prices["output"] is None:
            return None
        if any(isinstance(p, TieredPrices) for p in prices.values()):
            return _TieredPrice(mp)
        return Rates.per_mtok(
            input=prices["input"] or Decimal(0),
            output=prices["output"] or Decimal(0),
            cache_read=prices["cache_read"],
            cache_write=prices["cache_write"],
            cache_write_1h=prices["cache_write_1h"],
            source="genai-prices",
        )

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
) -> Cost:
    """Cost of ``usage`` on ``provider``/``model`` (falling back to ``requested_model``'s price)."""
    return price_book.cost(provider, (model, requested_model), usage, service_tier=service_tier)


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
