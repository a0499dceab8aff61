"""Rate limit for event ingest, per API key.

The rate comes from DRF's ``DEFAULT_THROTTLE_RATES["fluxgate_ingest"]`` (e.g.
``"600/min"``), read at each request so ``override_settings`` applies; without it,
:data:`DEFAULT_INGEST_RATE`. The scope is namespaced so that a site's own ``"ingest"``
scope is not shared with FluxGate's. Counts live in Django's default cache: use a shared
cache (Redis) when several processes serve the API.

The count is a sliding-window estimate from two fixed-window counters (this window's and
the previous one's, weighted by how much of it still overlaps the last period), kept
with the cache's atomic ``add``/``incr``: a few bytes per key whatever the rate.
DRF's own throttle keeps the time of every request of the period in one cache value,
read and rewritten on every request: at 500 requests/s that is 30,000 entries
(~3.6 ms a request on its own). Refused requests count too (a client hammering while
throttled stays throttled).

A process counts its own requests at once and adds them to the shared counters at most
every :data:`SYNC_SECONDS` (one ``incr`` and one ``get`` then, not three cache round
trips a request, which cost more than the rest of a request with a Redis cache). So a
process's own requests are limited exactly; another process's are seen at most
:data:`SYNC_SECONDS` late, which is the most a limit can be overrun by.
"""

from __future__ import annotations

import threading
from typing import Any

from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from .permissions import api_key_of

DEFAULT_INGEST_RATE = "600/min"
#: How often a process adds its requests to the shared counters (and reads others').
SYNC_SECONDS = 0.1
_MAX_KEYS = 10_000


class _Counts:
    """One key's counts in this process: the shared totals when last synced, and the
    requests made here since."""

    __slots__ = ("current", "pending", "previous", "synced_at", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.current = self.previous = self.pending = 0
        self.synced_at: float | None = None


_lock = threading.Lock()
_counts: dict[str, _Counts] = {}


def forget_counts() -> None:
    """Forget this process's counts (the shared cache was cleared: tests)."""
    with _lock:
        _counts.clear()


class IngestRateThrottle(SimpleRateThrottle):
    """At most N ingest requests (each one event or one batch) per API key per period."""

    scope = "fluxgate_ingest"

    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope, DEFAULT_INGEST_RATE)

    def allow_request(self, request: Any, view: Any) -> bool:
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        self.now = now = self.timer()
        window, elapsed = divmod(now, self.duration)
        self._window_end = now - elapsed + self.duration
        overlap = 1 - elapsed / self.duration
        number = int(window)
        ended = None
        with _lock:
            counts = _counts.get(self.key)
            if counts is None or counts.window != number:
                if counts is not None and counts.pending:
                    ended = counts  # its last requests still go to its window's counter
                if len(_counts) >= _MAX_KEYS:
                    _counts.clear()
                counts = _counts[self.key] = _Counts(number)
            counts.pending += 1
            if counts.synced_at is not None and now - counts.synced_at < SYNC_SECONDS:
                total = counts.previous * overlap + counts.current + counts.pending
                return total <= self.num_requests
            pending, counts.pending = counts.pending, 0
        if ended is not None:
            self._add(ended.window, ended.pending)
        current = self._add(number, pending)
        previous = self.cache.get(f"{self.key}:{number - 1}", 0)
        with _lock:
            counts.current, counts.previous, counts.synced_at = current, previous, now
            total = previous * overlap + current + counts.pending
        return total <= self.num_requests

    def _add(self, window: int, requests: int) -> int:
        """Add ``requests`` to the shared counter of ``window``; its new total."""
        key = f"{self.key}:{window}"
        try:
            return int(self.cache.incr(key, requests))
        except ValueError:  # the window's first request (or its key just expired)
            if self.cache.add(key, requests, 2 * self.duration + 1):
                return requests
            return int(self.cache.incr(key, requests))

    def wait(self) -> float | None:
        return max(1.0, self._window_end - self.now)

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        key = api_key_of(request)
        if key is None:
            return None  # not throttled here: ingest refuses requests without a key anyway
        return self.cache_format % {"scope": self.scope, "ident": f"key{key.pk}"}
