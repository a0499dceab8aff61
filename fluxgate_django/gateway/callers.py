"""Who is calling the gateway and who the call is for: the FluxGate key (its team pays),
and the attribution the request carries.

The key is the caller's ``Authorization: Bearer fg_live_...`` (OpenAI's SDK) or
``x-api-key`` (Anthropic's), checked as the REST API checks it (``api.authentication``),
failed attempts counted per client address (``AUTH_FAILURE_RATE``).

Attribution comes from headers, else from the protocol's own fields (OpenAI's ``user``,
Anthropic's ``metadata.user_id``): ``X-FluxGate-Feature``, ``-User``, ``-Session``,
``-Conversation``, ``-Step`` and ``-Metadata`` (a JSON object). The event's metadata
also names the key (its public prefix) and, when it differs from the model served, the
model the caller asked for (an alias or a route).
"""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest

from ..api.authentication import key_for_secret, touch_key
from ..api.throttling import AuthFailureThrottle
from ..context import TrackingContext, current_context
from ..middleware import request_id_for
from ..models import ApiKey
from .protocols import GatewayError

_THROTTLED = "FluxGate: too many failed API-key authentications from this address."


def authenticate(request: HttpRequest, secret: str) -> ApiKey:
    """The caller's active key, or a :class:`GatewayError` (401; 429 past the failure
    limit). Queries: run it off the event loop."""
    throttle = AuthFailureThrottle()
    wait = throttle.wait(request)
    if wait is not None:
        raise _throttled(wait)
    key = key_for_secret(secret) if secret else None
    if key is None:
        wait = throttle.failed(request)
        if wait is not None:
            raise _throttled(wait)
        raise GatewayError(
            401,
            "authentication",
            "FluxGate: invalid or revoked API key (the gateway takes a FluxGate key, "
            "fg_live_..., not a provider's).",
        )
    touch_key(key)
    return key


def _throttled(wait: float) -> GatewayError:
    return GatewayError(429, "rate_limit", _THROTTLED, headers={"Retry-After": f"{wait:.0f}"})


HEADER_FIELDS = {
    "X-FluxGate-Feature": "feature",
    "X-FluxGate-User": "user",
    "X-FluxGate-Session": "session_id",
    "X-FluxGate-Conversation": "conversation_id",
    "X-FluxGate-Step": "step",
}
METADATA_HEADER = "X-FluxGate-Metadata"


def context_for(request: HttpRequest, key: ApiKey, end_user: str | None) -> TrackingContext:
    """The attribution of the request's events: the key's team, the headers' fields, the
    protocol's end user when no header names one. A malformed metadata header is a 400
    (the caller's mistake, said before anything is sent)."""
    fields: dict[str, Any] = {
        name: value
        for header, name in HEADER_FIELDS.items()
        if (value := request.headers.get(header))
    }
    fields.setdefault("user", end_user)
    metadata: dict[str, Any] = {}
    raw = request.headers.get(METADATA_HEADER)
    if raw:
        try:
            metadata = json.loads(raw)
        except ValueError:
            metadata = None  # type: ignore[assignment]
        if not isinstance(metadata, dict):
            raise GatewayError(
                400, "invalid_request", f"FluxGate: {METADATA_HEADER} must be a JSON object."
            )
    metadata["api_key"] = key.prefix
    return TrackingContext(
        team=key.team,
        request_id=current_context().request_id or request_id_for(request),
        metadata=metadata,
        **fields,
    )
