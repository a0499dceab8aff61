"""The gateway's views: thin async views over the shared core (:mod:`.core`), one per
endpoint. CSRF does not apply (callers authenticate with a key, never a cookie)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from django.http import HttpRequest, HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from . import core
from .protocols import ENDPOINTS, PROTOCOLS, GatewayError

View = Callable[[HttpRequest], Coroutine[Any, Any, HttpResponseBase]]


def key_only(view: View) -> View:
    """``view``, exempt from CSRF because it authenticates by a key header only, never a
    session cookie (a browser can't send it on its own); marked so that the security test
    can tell such views from a view that would skip CSRF for sessions."""
    view.fluxgate_key_only = True  # type: ignore[attr-defined]
    return csrf_exempt(view)


def endpoint_view(protocol: str, name: str) -> View:
    """The view of one endpoint (POST only)."""
    endpoint = ENDPOINTS[(protocol, name)]

    async def view(request: HttpRequest) -> HttpResponseBase:
        if request.method != "POST":
            return _not_allowed(protocol, request, "POST")
        return await core.serve(request, endpoint)

    view.__name__ = view.__qualname__ = f"{protocol}_{name}"
    return key_only(view)


@key_only
async def models(request: HttpRequest) -> HttpResponseBase:
    """``GET models``: the models, aliases and routes the caller's key may use."""
    if request.method != "GET":
        return _not_allowed("openai", request, "GET")
    return await core.models(request)


def _not_allowed(protocol: str, request: HttpRequest, allowed: str) -> HttpResponseBase:
    error = GatewayError(
        405, "invalid_request", f"FluxGate: {request.method} is not allowed here (use {allowed})."
    )
    response = PROTOCOLS[protocol].error_response(error)
    response["Allow"] = allowed
    return response
