"""Rate limit for event ingest, per API key.

The rate comes from DRF's ``DEFAULT_THROTTLE_RATES["fluxgate_ingest"]`` (e.g.
``"600/min"``), read at each request so ``override_settings`` applies; without it,
:data:`DEFAULT_INGEST_RATE`. The scope is namespaced so that a site's own ``"ingest"``
scope is not shared with FluxGate's. Counts live in Django's default cache: use a shared
cache (Redis) when several processes serve the API.
"""

from __future__ import annotations

from typing import Any

from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from .permissions import api_key_of

DEFAULT_INGEST_RATE = "600/min"


class IngestRateThrottle(SimpleRateThrottle):
    """At most N ingest requests (each one event or one batch) per API key per period."""

    scope = "fluxgate_ingest"

    def get_rate(self) -> str | None:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope, DEFAULT_INGEST_RATE)

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        key = api_key_of(request)
        if key is None:
            return None  # not throttled here: ingest refuses requests without a key anyway
        return self.cache_format % {"scope": self.scope, "ident": f"key{key.pk}"}
