"""Requests to the providers: one pooled ``httpx.AsyncClient`` per provider and event loop.

The clients are kept by the LLM service's mechanism (:class:`~fluxgate_django.service.
providers.ProviderClients`): made on a loop's first request, shared by that loop's calls,
closed as the loop shuts down, dropped when the settings change. Their base URLs, keys
and timeouts come from ``FLUXGATE["PROVIDERS"]`` as the service reads them (a key from
``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY`` when the settings give none). The provider key
goes into the upstream request's headers only: it is never logged, and the caller's
FluxGate key never goes upstream.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from django.http import HttpResponse

from ..conf import on_reload
from ..service.failures import classify, is_timeout
from ..service.providers import ProviderClients, provider_options, shared_ssl_context
from .protocols import GatewayError, Protocol, passed_headers


def _make_client(name: str, asynchronous: bool) -> Any:
    try:
        import httpx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "FluxGate's gateway needs httpx: pip install 'django-fluxgate[gateway]'"
        ) from exc
    if not asynchronous:  # (the gateway's views are async: nothing asks for one)
        raise ValueError("the gateway keeps async clients only")
    timeout = float(provider_options(name).get("timeout") or 30)
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        verify=shared_ssl_context(httpx) or True,
        follow_redirects=False,
    )


clients = ProviderClients(make=_make_client)
on_reload(clients.clear)


async def send(
    provider: str,
    protocol: Protocol,
    path: str,
    body: dict[str, Any],
    caller_request: Any,
    *,
    timeout: float | None = None,
) -> Any:
    """POST ``body`` to ``path`` of ``provider`` (in ``protocol``); the response, its body
    not read yet (``await response.aread()``, or ``response.aiter_bytes()`` for a stream;
    ``await response.aclose()`` in any case). Raises httpx's errors (connection, timeout)."""
    client = clients.get(provider, loop=asyncio.get_running_loop())
    options = provider_options(provider)
    headers = protocol.upstream_headers(caller_request, str(options.get("api_key") or ""))
    extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    request = client.build_request(
        "POST",
        protocol.base_url(options) + path,
        content=json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        headers=headers,
        **extra,
    )
    return await client.send(request, stream=True)


def unreachable(provider: str, exc: Exception) -> GatewayError:
    """The answer to a call whose provider could not be reached: 504 for a timeout, else
    502. An exception that is no transport failure (FluxGate's own) is raised again."""
    if classify(exc) != "retry":
        raise exc
    timeout = is_timeout(exc)
    return GatewayError(
        504 if timeout else 502,
        "timeout" if timeout else "bad_gateway",
        f"FluxGate could not reach {provider}: {type(exc).__name__}",
    )


def passed_on(response: Any, content: bytes) -> HttpResponse:
    """The provider's answer as it sent it: its status, body, content type, and the
    headers the caller's SDK reads (request ids, retry advice)."""
    answer = HttpResponse(
        content,
        status=response.status_code,
        content_type=response.headers.get("content-type", "application/json"),
    )
    for name, value in passed_headers(response.headers).items():
        answer[name] = value
    return answer
