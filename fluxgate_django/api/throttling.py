"""FluxGate's rate limits: event ingest per API key, failed API-key authentications per
client address. Both count atomically in Django's default cache, across threads and
processes (use a shared cache, Redis or Memcached, when several processes serve the API;
the database and file caches cannot increment atomically).

Every request is one atomic increment of its window's counter (:func:`incr_window`: the
cache's ``incr``, or ``add`` for a window's first request; on Django's Redis cache one
round trip, a Lua script doing ``INCRBY`` and giving a new counter its expiry). The count
an increment returns is the request's place in its window, so of N concurrent requests
against a limit L exactly L pass: nothing reads a count and writes it back (DRF's
``SimpleRateThrottle`` does, and lets concurrent requests through past its limit).

**Ingest** (:class:`IngestRateThrottle`): the rate comes from DRF's
``DEFAULT_THROTTLE_RATES["fluxgate_ingest"]`` (e.g. ``"600/min"``), read at each request
so ``override_settings`` applies; without it, :data:`DEFAULT_INGEST_RATE`. The scope is
namespaced so that a site's own ``"ingest"`` scope is not shared with FluxGate's. The
count is a sliding-window estimate from two fixed-window counters: this window's, plus
the previous one's weighted by how much of it still overlaps the last period (read once
per window and process: it no longer changes). Refused requests count too (a client
hammering while throttled stays throttled).

**Failed authentications** (:class:`AuthFailureThrottle`): ``FLUXGATE["AUTH_FAILURE_RATE"]``
(default ``"20/min"``) failed API-key authentications per client address and fixed window;
past it every request with a Bearer key from that address is answered 429 with
``Retry-After`` until the window ends, whether its key is right or not (so guessing is
limited, not only answered differently). The address is ``REMOTE_ADDR``; behind proxies,
set DRF's ``NUM_PROXIES`` and the address is taken from ``X-Forwarded-For`` as DRF does
(never from a header a client can set when ``NUM_PROXIES`` is unset). IPv6 clients are
counted per /64 (one host usually holds the whole /64).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from typing import Any

from django.core.cache import caches
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle

from ..conf import fluxgate_settings
from .permissions import api_key_of

logger = logging.getLogger("fluxgate.api")

DEFAULT_INGEST_RATE = "600/min"
_MAX_KEYS = 10_000
_DURATIONS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def incr_window(cache: Any, key: str, delta: int, ttl: int) -> int:
    """Add ``delta`` to the counter ``key`` atomically (creating it, to expire after
    ``ttl`` seconds, if it does not exist); its new value."""
    if _scripting[0]:
        client = _redis_client(cache, key)
        if client is not None:
            try:
                return _incr_by_script(*client, delta, ttl)
            except Exception as exc:
                import redis

                if not isinstance(exc, redis.ResponseError):
                    raise
                _scripting[0] = False  # scripts turned off on this server: as below
                logger.warning("FluxGate: Redis refused a Lua script (%s); using INCR", exc)
    try:
        return int(cache.incr(key, delta))
    except ValueError:  # the window's first request (or its key just expired)
        if cache.add(key, delta, ttl):
            return delta
        return int(cache.incr(key, delta))


#: INCRBY, and an expiry for a counter that has none: one atomic round trip.
_INCR_SCRIPT = """
local count = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('TTL', KEYS[1]) == -1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return count
"""
_scripting = [True]
_script: list[Any] = []


def _incr_by_script(full_key: str, client: Any, delta: int, ttl: int) -> int:
    if not _script:
        _script.append(client.register_script(_INCR_SCRIPT))
    return int(_script[0](keys=[full_key], args=[delta, ttl], client=client))


def _redis_client(cache: Any, key: str) -> tuple[str, Any] | None:
    """Django's own Redis cache: (the stored key, a redis client). Else None."""
    from django.core.cache.backends.redis import RedisCache

    if not isinstance(cache, RedisCache):
        return None
    try:
        full_key = cache.make_and_validate_key(key)
        return full_key, cache._cache.get_client(full_key, write=True)
    except AttributeError:  # a Django whose Redis backend is shaped differently
        return None


_lock = threading.Lock()
#: ``{counter key: (window number, count of the window before it)}`` in this process.
_previous: dict[str, tuple[int, int]] = {}


def forget_counts() -> None:
    """Forget what this process read from the shared counters (the cache was cleared: tests)."""
    with _lock:
        _previous.clear()


class IngestRateThrottle(SimpleRateThrottle):
    """At most N ingest requests (each one event or one batch) per API key per period."""

    scope = "fluxgate_ingest"

    @property  # type: ignore[override]
    def cache(self) -> Any:
        """The default cache itself (not Django's proxy to it: its Redis client is used)."""
        return caches["default"]

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
        number = int(window)
        self._window_end = now - elapsed + self.duration
        overlap = 1 - elapsed / self.duration
        key = self.key
        current = incr_window(self.cache, f"{key}:{number}", 1, 2 * self.duration + 1)
        return self._previous_count(key, number) * overlap + current <= self.num_requests

    def _previous_count(self, key: str, number: int) -> int:
        with _lock:
            known = _previous.get(key)
        if known is not None and known[0] == number:
            return known[1]
        count = int(self.cache.get(f"{key}:{number - 1}", 0) or 0)
        with _lock:
            if len(_previous) >= _MAX_KEYS:
                _previous.clear()
            _previous[key] = (number, count)
        return count

    def wait(self) -> float | None:
        return max(1.0, self._window_end - self.now)

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        key = api_key_of(request)
        if key is None:
            return None  # not throttled here: ingest refuses requests without a key anyway
        return self.cache_format % {"scope": self.scope, "ident": f"key{key.pk}"}


def parse_rate(rate: str | None) -> tuple[int, int] | None:
    """``"20/min"`` -> ``(20, 60)``; None for None (no limit). Periods: s, m, h, d (or
    words starting with them: "sec", "min", "hour", "day")."""
    if rate is None:
        return None
    count, _, period = str(rate).partition("/")
    period = period.strip().lower()
    if not period or period[0] not in _DURATIONS or not count.strip().isdigit():
        raise ValueError(f"Not a rate: {rate!r} (expected e.g. '20/min').")
    return int(count), _DURATIONS[period[0]]


def client_address(request: Any) -> str:
    """The address a request is counted under: ``REMOTE_ADDR`` (or, with DRF's
    ``NUM_PROXIES`` set, the client address that many proxies reported), IPv6 by /64."""
    if api_settings.NUM_PROXIES:
        raw = BaseThrottle().get_ident(request)
    else:
        raw = request.META.get("REMOTE_ADDR") or ""
    try:
        address = ipaddress.ip_address(str(raw).strip().split("%", 1)[0])
    except ValueError:
        return str(raw)[:100] or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


class AuthFailureThrottle:
    """Failed API-key authentications per client address: :meth:`wait` before checking a
    key (None, or seconds until the address may try again), :meth:`failed` after a key
    was refused (likewise: seconds once this failure is past the limit, to answer 429
    rather than 401, so concurrent guesses past the limit are not told apart either).

    The cache being unreachable never locks clients out: the check is then skipped (and
    logged)."""

    scope = "fluxgate_auth_failures"
    timer = staticmethod(time.time)

    def __init__(self) -> None:
        self.rate = parse_rate(fluxgate_settings.AUTH_FAILURE_RATE)
        self.cache = caches["default"]

    def _key(self, request: Any) -> tuple[str, float]:
        assert self.rate is not None
        duration = self.rate[1]
        now = self.timer()
        number, elapsed = divmod(now, duration)
        key = f"throttle_{self.scope}_{client_address(request)}:{int(number)}"
        return key, duration - elapsed

    def wait(self, request: Any) -> float | None:
        if self.rate is None:
            return None
        key, remaining = self._key(request)
        try:
            failures = int(self.cache.get(key, 0) or 0)
        except Exception:
            logger.warning("FluxGate could not read the failed-authentication count", exc_info=True)
            return None
        return _seconds(remaining) if failures >= self.rate[0] else None

    def failed(self, request: Any) -> float | None:
        """Count a failure; None while within the limit, else the seconds to wait."""
        if self.rate is None:
            return None
        key, remaining = self._key(request)
        try:
            failures = incr_window(self.cache, key, 1, self.rate[1] + 1)
        except Exception:
            logger.warning("FluxGate could not count a failed authentication", exc_info=True)
            return None
        return _seconds(remaining) if failures > self.rate[0] else None


def _seconds(remaining: float) -> float:
    return float(max(1, math.ceil(remaining)))
