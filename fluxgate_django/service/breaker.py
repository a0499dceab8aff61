"""A circuit breaker per provider and model, shared across processes through the cache.

``failures`` failures within ``window_seconds`` open the circuit for ``cooldown_seconds``
(defaults 3 and 300 s, from seed 004); an open circuit is skipped without a network call
(the service never calls it, even when it is a route's last model). When the cooldown
ends the circuit is half-open: one caller (across all processes: the probe slot is taken
with ``cache.add``) tries it; success closes it, failure opens it again, and a probe that
said nothing about the model's health (the caller's own 4xx, a refused call) frees the
slot for the next caller. With Redis as the cache every process sees the same state.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.cache import caches

from ..conf import fluxgate_settings

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    def __init__(self, cache_alias: str | None = None) -> None:
        options = fluxgate_settings.CIRCUIT_BREAKER
        self.failures = int(options.get("failures", 3))
        self.cooldown = float(options.get("cooldown_seconds", 300))
        self.window = float(options.get("window_seconds", 60))
        self.cache = caches[cache_alias or options.get("cache_alias", "default")]

    @staticmethod
    def _keys(name: str) -> tuple[str, str, str]:
        base = f"fluxgate:breaker:{name}"
        return f"{base}:failures", f"{base}:opened", f"{base}:probe"

    def state(self, name: str) -> str:
        _, opened_key, _ = self._keys(name)
        opened = self.cache.get(opened_key)
        if opened is None:
            return CLOSED
        return OPEN if time.time() < opened + self.cooldown else HALF_OPEN

    def allow(self, name: str) -> str | None:
        """May a call go to ``name`` now? None if not; else ``"closed"``, or ``"probe"`` for
        the one call let through a half-open circuit (across all processes)."""
        state = self.state(name)
        if state == CLOSED:
            return CLOSED
        if state == OPEN:
            return None
        _, _, probe_key = self._keys(name)
        return "probe" if self.cache.add(probe_key, 1, max(int(self.cooldown), 1)) else None

    def record_success(self, name: str, *, probe: bool = True) -> None:
        """A call succeeded. Failures are counted per window, so only a successful probe
        changes anything: it closes the circuit (``probe=False`` costs no cache access)."""
        if probe:
            self.cache.delete_many(list(self._keys(name)))

    def release_probe(self, name: str) -> None:
        """Give back the probe slot taken by :meth:`allow` without a verdict: the circuit
        stays half-open and the next caller may probe."""
        self.cache.delete(self._keys(name)[2])

    def record_failure(self, name: str) -> None:
        failures_key, opened_key, probe_key = self._keys(name)
        if self.state(name) == HALF_OPEN:
            self._open(opened_key, probe_key)
            return
        self.cache.add(failures_key, 0, int(self.window) or 1)
        try:
            count = self.cache.incr(failures_key)
        except ValueError:  # expired between add and incr
            self.cache.set(failures_key, 1, int(self.window) or 1)
            count = 1
        if count >= self.failures:
            self._open(opened_key, probe_key)
            self.cache.delete(failures_key)

    def _open(self, opened_key: str, probe_key: str) -> None:
        # Kept past the cooldown so the half-open state can be told apart from closed.
        self.cache.set(opened_key, time.time(), int(self.cooldown * 2) + 60)
        self.cache.delete(probe_key)

    def snapshot(self, names: list[str]) -> dict[str, dict[str, Any]]:
        out = {}
        for name in names:
            failures_key, opened_key, _ = self._keys(name)
            opened = self.cache.get(opened_key)
            out[name] = {
                "state": self.state(name),
                "recent_failures": int(self.cache.get(failures_key) or 0),
                "opened_at": opened,
                "retry_at": opened + self.cooldown if opened else None,
            }
        return out
