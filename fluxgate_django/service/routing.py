"""Routing: which models a request tries, in which order.

Strategies (per route in ``FLUXGATE["ROUTES"]``, or changed at run time through
``PUT fluxgate/api/config/strategy/``, stored in the cache so every process sees it):

Other processes see a run-time change within ``STRATEGY_REFRESH_SECONDS`` (2 s).

* ``ordered`` — the route's models as listed.
* ``cost`` — cheapest estimated cost *for this request* first (its prompt size and
  ``max_tokens`` priced at each model's rates; unpriced models last).
* ``latency`` — lowest recent p95 latency first (samples shared through the cache;
  models without samples keep their listed order, after measured ones... unless none
  has samples).
* ``round_robin`` — the list rotated by a counter shared through the cache.
* ``priority`` — seed 004: ``priority="low"`` → cheapest first; ``"high"`` → the list
  reversed (list models from cheapest to most capable); otherwise a small request
  (under ``small_request_chars`` characters and ``small_request_tokens`` max tokens,
  500 each by default) → cheapest first, a larger one → as listed.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

from django.core.cache import caches

from ..conf import fluxgate_settings, on_reload
from ..estimate import CHARS_PER_TOKEN, estimate_cost
from ..model_refs import ModelRef, resolve_model
from .types import ServiceRequest

STRATEGIES = ("ordered", "cost", "latency", "round_robin", "priority")
_SAMPLES = 50


def _cache() -> Any:
    return caches[fluxgate_settings.CIRCUIT_BREAKER.get("cache_alias", "default")]


def route_config(route: str) -> dict[str, Any]:
    routes = fluxgate_settings.ROUTES
    if route not in routes:
        raise KeyError(f"Unknown route {route!r}; routes are set in FLUXGATE['ROUTES']")
    return routes[route]


_route_models: dict[str, list[ModelRef]] = {}
on_reload(_route_models.clear)


def route_models(route: str) -> list[ModelRef]:
    """The route's models, resolved once per process (and again after a settings change)."""
    refs = _route_models.get(route)
    if refs is None:
        refs = _route_models[route] = [resolve_model(r) for r in route_config(route)["models"]]
    return list(refs)


#: Run-time strategy changes are read from the shared cache at most this often.
STRATEGY_REFRESH_SECONDS = 2.0
_strategies: dict[str, tuple[float, str | None]] = {}
on_reload(_strategies.clear)


def strategy_for(route: str) -> str:
    cached = _strategies.get(route)
    now = time.monotonic()
    if cached is None or cached[0] < now:
        cached = (now + STRATEGY_REFRESH_SECONDS, _cache().get(f"fluxgate:strategy:{route}"))
        _strategies[route] = cached
    return cached[1] or route_config(route).get("strategy", "ordered")


def set_strategy(route: str, strategy: str) -> None:
    """Change a route's strategy for every process (until changed again or the cache is
    cleared; settings give the default)."""
    route_config(route)
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    _cache().set(f"fluxgate:strategy:{route}", strategy, None)
    _strategies[route] = (time.monotonic() + STRATEGY_REFRESH_SECONDS, strategy)


def estimated_cost(ref: ModelRef, request: ServiceRequest) -> Any:
    """What ``request`` typically costs on ``ref`` (to compare models: not a budget's
    bound, which the tracked call reserves)."""
    output = request.max_tokens or int(fluxgate_settings.BUDGET_DEFAULT_OUTPUT_TOKENS)
    input_tokens = -(-request.prompt_chars // CHARS_PER_TOKEN)
    return estimate_cost(ref.provider, ref.model, input_tokens, output)


class _LatencyBuffer:
    """Latency samples are gathered in-process and merged into the shared cache every
    ``FLUSH_EVERY`` samples or ``FLUSH_SECONDS``, so a call pays no cache round trip."""

    FLUSH_EVERY = 10
    FLUSH_SECONDS = 2.0

    def __init__(self) -> None:
        self.pending: dict[str, list[float]] = {}
        self.flushed_at = time.monotonic()
        self.lock = threading.Lock()

    def add(self, ref: ModelRef, latency_ms: float) -> None:
        with self.lock:
            samples = self.pending.setdefault(str(ref), [])
            samples.append(round(latency_ms, 1))
            due = (
                len(samples) >= self.FLUSH_EVERY
                or time.monotonic() - self.flushed_at > self.FLUSH_SECONDS
            )
            if not due:
                return
            pending, self.pending = self.pending, {}
            self.flushed_at = time.monotonic()
        self.merge(pending)

    def merge(self, pending: dict[str, list[float]]) -> None:
        cache = _cache()
        for name, samples in pending.items():
            key = f"fluxgate:latency:{name}"
            cache.set(key, ((cache.get(key) or []) + samples)[-_SAMPLES:], 3600)

    def flush(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, {}
        self.merge(pending)


latency_buffer = _LatencyBuffer()


def forget_local_state() -> None:
    """Drop this process's copies of shared routing state (after clearing the cache)."""
    _strategies.clear()
    latency_buffer.pending.clear()


def record_latency(ref: ModelRef, latency_ms: float) -> None:
    latency_buffer.add(ref, latency_ms)


def recent_p95(ref: ModelRef) -> float | None:
    samples = (_cache().get(f"fluxgate:latency:{ref}") or []) + latency_buffer.pending.get(
        str(ref), []
    )
    if len(samples) < 2:
        return samples[0] if samples else None
    return statistics.quantiles(samples, n=20)[-1]


def order_models(
    route: str | None,
    model: str | None,
    request: ServiceRequest,
    *,
    priority: str | None = None,
) -> list[ModelRef]:
    """The models to try for this request, best first (before breaker and stickiness)."""
    if model:
        return [resolve_model(model)]
    if not route:
        raise ValueError("Pass route= (a FLUXGATE['ROUTES'] name) or model=")
    config = route_config(route)
    refs = route_models(route)
    strategy = strategy_for(route)
    if strategy == "cost":
        return _by_cost(refs, request)
    if strategy == "latency":
        measured = {ref: recent_p95(ref) for ref in refs}
        return sorted(refs, key=lambda r: (measured[r] is None, measured[r] or 0.0))
    if strategy == "round_robin":
        cache = _cache()
        key = f"fluxgate:rr:{route}"
        cache.add(key, -1, None)
        try:
            turn = cache.incr(key)
        except ValueError:
            cache.set(key, 0, None)
            turn = 0
        shift = turn % len(refs)
        return refs[shift:] + refs[:shift]
    if strategy == "priority":
        if priority == "low":
            return _by_cost(refs, request)
        if priority == "high":
            return list(reversed(refs))
        small_chars = int(config.get("small_request_chars", 500))
        small_tokens = int(config.get("small_request_tokens", 500))
        if request.prompt_chars < small_chars and (request.max_tokens or 0) < small_tokens:
            return _by_cost(refs, request)
        return refs
    return refs


def _by_cost(refs: list[ModelRef], request: ServiceRequest) -> list[ModelRef]:
    costs = {ref: estimated_cost(ref, request) for ref in refs}
    return sorted(refs, key=lambda r: (costs[r] is None, costs[r] or 0))
