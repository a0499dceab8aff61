"""The two protocols the gateway speaks, OpenAI's and Anthropic's: their endpoints, where a
caller's key and end user are, how an error looks, what is sent upstream.

A :class:`Protocol` is used on both sides of a call: as the *caller's* (how its key,
its end user and FluxGate's own errors look) and as the *upstream's* (where requests go,
how the provider key is sent, which usage reader reads the answer). They are the same
object when the call passes through, two when a route falls back across protocols.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import json
import os
from typing import Any

from django.http import HttpRequest, HttpResponse

from ..tracking.anthropic import AnthropicAdapter
from ..tracking.openai import OpenAIAdapter
from ..tracking.protocols import UsageReader
from .wire import sse_data, sse_named


class GatewayError(Exception):
    """A call FluxGate answers itself, in the caller's protocol: ``status``, a ``kind``
    (``authentication``, ``permission``, ``not_found``, ``invalid_request``,
    ``too_large``, ``budget``, ``rate_limit``, ``unavailable``, ``bad_gateway``,
    ``timeout``) and the message the caller's SDK shows."""

    def __init__(
        self, status: int, kind: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = headers or {}


class UpstreamError(Exception):
    """The provider answered with an error status: recorded on the call's event, and
    judged by the service's rules (``service.failures.classify``) for a route's fallback."""

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.code: str | None = None
        message = content[:500].decode("utf-8", "replace")
        try:
            error = json.loads(content).get("error")
            if isinstance(error, dict):
                message = str(error.get("message") or message)
                code = error.get("code") or error.get("type")
                self.code = code if isinstance(code, str) else None
        except (ValueError, AttributeError):
            pass
        super().__init__(f"upstream answered {status_code}: {message}")


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint of a protocol."""

    protocol: str
    name: str
    #: Path under the provider's base URL.
    path: str
    #: The events' operation ("" for a call that is not an LLM call: no event, no budget).
    operation: str
    #: Whether ``"stream": true`` is served as SSE.
    streams: bool = False
    #: The other protocol's endpoint a route's fallback may translate this one to.
    counterpart: str | None = None


ENDPOINTS = {
    ("openai", "chat"): Endpoint("openai", "chat", "/chat/completions", "chat", True, "messages"),
    ("openai", "completions"): Endpoint(
        "openai", "completions", "/completions", "completion", True
    ),
    ("openai", "responses"): Endpoint("openai", "responses", "/responses", "responses", True),
    ("openai", "embeddings"): Endpoint("openai", "embeddings", "/embeddings", "embeddings"),
    ("anthropic", "messages"): Endpoint(
        "anthropic", "messages", "/v1/messages", "messages", True, "chat"
    ),
    ("anthropic", "count_tokens"): Endpoint(
        "anthropic", "count_tokens", "/v1/messages/count_tokens", ""
    ),
}

#: Upstream response headers passed on to the caller (its SDK reads them: request ids for
#: support, retry advice for its retries); by exact name or by prefix.
_PASSED_HEADERS = ("x-request-id", "request-id", "openai-processing-ms", "retry-after")
_PASSED_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-", "retry-after-", "x-should-retry")


def passed_headers(headers: Any) -> dict[str, str]:
    """The upstream response headers the caller gets."""
    return {
        name: value
        for name, value in headers.items()
        if name.lower() in _PASSED_HEADERS or name.lower().startswith(_PASSED_PREFIXES)
    }


class Protocol(abc.ABC):
    """What differs between OpenAI's API and Anthropic's (see the module doc)."""

    name: str
    default_base_url: str
    base_url_env: str
    #: Caller request headers forwarded upstream (features the caller opts into).
    forwarded: tuple[str, ...] = ()
    #: ``kind`` → the protocol's own error type (and, for OpenAI, code).
    error_types: dict[str, tuple[str, str | None]]

    def secret(self, request: HttpRequest) -> str:
        """The FluxGate key the caller sent ("" if none)."""
        return _bearer(request)

    @abc.abstractmethod
    def end_user(self, body: dict[str, Any]) -> str | None:
        """The end user the request names in the protocol's own fields."""

    @abc.abstractmethod
    def error_payload(self, kind: str, message: str) -> dict[str, Any]:
        """The protocol's error body for a FluxGate ``kind`` and message."""

    def error_response(self, error: GatewayError) -> HttpResponse:
        response = json_response(self.error_payload(error.kind, error.message), error.status)
        for name, value in error.headers.items():
            response[name] = value
        return response

    def stream_error(self, kind: str, message: str) -> bytes:
        """An error event ending a stream (the caller's SDK raises it)."""
        return sse_data(self.error_payload(kind, message))

    @abc.abstractmethod
    def reader(self, provider: str) -> UsageReader:
        """The tracked clients' usage reader for this protocol's answers."""

    def upstream_headers(self, request: HttpRequest, api_key: str) -> dict[str, str]:
        """The headers of the upstream request: the provider key (never the caller's
        FluxGate key) and the features the caller opted into."""
        headers = {"content-type": "application/json", "accept": "application/json"}
        for name in self.forwarded:
            value = request.headers.get(name)
            if value:
                headers[name] = value
        return headers

    def base_url(self, options: dict[str, Any]) -> str:
        url = options.get("base_url") or os.environ.get(self.base_url_env) or self.default_base_url
        return str(url).rstrip("/")


class OpenAIProtocol(Protocol):
    name = "openai"
    default_base_url = "https://api.openai.com/v1"
    base_url_env = "OPENAI_BASE_URL"
    forwarded = ("openai-beta",)
    error_types = {
        "authentication": ("invalid_request_error", "invalid_api_key"),
        "permission": ("permission_error", "model_not_allowed"),
        "not_found": ("invalid_request_error", "model_not_found"),
        "invalid_request": ("invalid_request_error", None),
        "too_large": ("invalid_request_error", "request_too_large"),
        "budget": ("budget_exceeded", "budget_exceeded"),
        "rate_limit": ("requests", "rate_limit_exceeded"),
        "unavailable": ("server_error", "service_unavailable"),
        "bad_gateway": ("server_error", "bad_gateway"),
        "timeout": ("server_error", "timeout"),
    }

    def end_user(self, body: dict[str, Any]) -> str | None:
        user = body.get("user")
        return user if isinstance(user, str) and user else None

    def error_payload(self, kind: str, message: str) -> dict[str, Any]:
        kind_type, code = self.error_types.get(kind, ("invalid_request_error", None))
        return {"error": {"message": message, "type": kind_type, "param": None, "code": code}}

    @functools.cache  # noqa: B019  (one instance per process; few provider names)
    def reader(self, provider: str) -> UsageReader:
        return OpenAIAdapter(provider)

    def upstream_headers(self, request: HttpRequest, api_key: str) -> dict[str, str]:
        return {**super().upstream_headers(request, api_key), "authorization": f"Bearer {api_key}"}


class AnthropicProtocol(Protocol):
    name = "anthropic"
    default_base_url = "https://api.anthropic.com"
    base_url_env = "ANTHROPIC_BASE_URL"
    forwarded = ("anthropic-version", "anthropic-beta")
    #: Sent when the caller names no ``anthropic-version`` (the API requires one).
    default_version = "2023-06-01"
    error_types = {
        "authentication": ("authentication_error", None),
        "permission": ("permission_error", None),
        "not_found": ("not_found_error", None),
        "invalid_request": ("invalid_request_error", None),
        "too_large": ("request_too_large", None),
        "budget": ("rate_limit_error", None),
        "rate_limit": ("rate_limit_error", None),
        "unavailable": ("api_error", None),
        "bad_gateway": ("api_error", None),
        "timeout": ("timeout_error", None),
    }

    def secret(self, request: HttpRequest) -> str:
        # The SDK sends ``api_key`` as x-api-key, ``auth_token`` as a Bearer token.
        return request.headers.get("x-api-key", "").strip() or _bearer(request)

    def end_user(self, body: dict[str, Any]) -> str | None:
        metadata = body.get("metadata")
        user = metadata.get("user_id") if isinstance(metadata, dict) else None
        return user if isinstance(user, str) and user else None

    def error_payload(self, kind: str, message: str) -> dict[str, Any]:
        kind_type, _ = self.error_types.get(kind, ("invalid_request_error", None))
        return {"type": "error", "error": {"type": kind_type, "message": message}}

    def stream_error(self, kind: str, message: str) -> bytes:
        return sse_named("error", self.error_payload(kind, message))

    @functools.cache  # noqa: B019  (one instance per process)
    def reader(self, provider: str) -> UsageReader:
        return AnthropicAdapter()

    def upstream_headers(self, request: HttpRequest, api_key: str) -> dict[str, str]:
        headers = super().upstream_headers(request, api_key)
        headers.setdefault("anthropic-version", self.default_version)
        return {**headers, "x-api-key": api_key}


PROTOCOLS: dict[str, Protocol] = {"openai": OpenAIProtocol(), "anthropic": AnthropicProtocol()}


def _bearer(request: HttpRequest) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def json_response(payload: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(
        json.dumps(payload, separators=(",", ":"), ensure_ascii=False),
        status=status,
        content_type="application/json",
    )


#: A chat or completion stream reports usage only when asked (``stream_options``).
_USAGE_ON_REQUEST = frozenset({"chat", "completion"})


def ask_for_stream_usage(
    protocol: Protocol, operation: str, body: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """``(body, asked)``: the upstream body of a stream, with usage asked for where the
    protocol reports it only on request (the only way to price the stream, whatever the
    caller said), and whether the caller itself asked for it (else its usage chunk is not
    shown)."""
    if protocol.name != "openai" or operation not in _USAGE_ON_REQUEST:
        return body, True
    options = body.get("stream_options")
    options = options if isinstance(options, dict) else {}
    asked = bool(options.get("include_usage"))
    if asked:
        return body, True
    return {**body, "stream_options": {**options, "include_usage": True}}, False
