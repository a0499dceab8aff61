"""Provider clients for the LLM service: created once per process from
``FLUXGATE["PROVIDERS"]``, tracked, with the SDK's own retries off (FluxGate owns retry
policy). Each provider kind knows how to send a :class:`ServiceRequest` and read the
answer's text; usage, cost and the event come from the tracked client, as for any SDK call.

``PROVIDERS`` entries: ``openai``, ``anthropic`` and ``gemini`` are their own kind; any
other name is an OpenAI-compatible endpoint (OpenRouter, vLLM, ...) unless it says
``"type"``: ``{"openrouter": {"type": "openai", "base_url": "...", "api_key": "..."}}``.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ..conf import fluxgate_settings, on_reload
from .types import ServiceRequest

ENV_KEYS = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
}
DEFAULT_MAX_TOKENS = 1024  # Anthropic requires max_tokens
#: The operation of the call the service makes, per provider kind (as tracked clients
#: name it).
OPERATIONS = {"openai": "chat", "anthropic": "messages", "gemini": "generate_content"}


def provider_kind(name: str) -> str:
    options = fluxgate_settings.PROVIDERS.get(name) or {}
    return options.get("type") or (name if name in ("openai", "anthropic", "gemini") else "openai")


class ProviderClients:
    """Tracked SDK clients, one sync and one async per provider, made on first use."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, bool], Any] = {}
        self._lock = threading.Lock()

    def get(self, name: str, *, asynchronous: bool = False) -> Any:
        key = (name, asynchronous)
        client = self._clients.get(key)
        if client is None:
            with self._lock:
                client = self._clients.get(key)
                if client is None:
                    client = self._clients[key] = _make_client(name, asynchronous)
        return client

    def clear(self) -> None:
        self._clients.clear()


clients = ProviderClients()
on_reload(clients.clear)


def _options(name: str) -> dict[str, Any]:
    options = dict(fluxgate_settings.PROVIDERS.get(name) or {})
    kind = provider_kind(name)
    if not options.get("api_key"):
        options["api_key"] = os.environ.get(ENV_KEYS.get(name, ""), "") or os.environ.get(
            ENV_KEYS.get(kind, ""), ""
        )
    return options


_STAINLESS_SDKS = {
    "openai": ("openai", "OpenAI", "AsyncOpenAI"),
    "anthropic": ("anthropic", "Anthropic", "AsyncAnthropic"),
}


def _make_client(name: str, asynchronous: bool) -> Any:
    from ..tracking import track_anthropic, track_openai

    kind = provider_kind(name)
    options = _options(name)
    if kind in _STAINLESS_SDKS:
        import importlib

        package, sync_class, async_class = _STAINLESS_SDKS[kind]
        cls = getattr(importlib.import_module(package), async_class if asynchronous else sync_class)
        client = cls(
            api_key=options.get("api_key") or "missing-key",
            base_url=options.get("base_url"),
            timeout=options.get("timeout", 30),
            max_retries=0,
        )
        return track_openai(client, provider=name) if kind == "openai" else track_anthropic(client)
    if kind == "gemini":
        from ..tracking import track_gemini

        try:
            from google import genai
            from google.genai import types
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "Gemini needs google-genai: pip install 'django-fluxgate[gemini]'"
            ) from exc
        # FluxGate owns retry policy: one attempt per call.
        http_options: dict[str, Any] = {"retry_options": types.HttpRetryOptions(attempts=1)}
        if options.get("base_url"):
            http_options["base_url"] = options["base_url"]
        if options.get("timeout"):
            http_options["timeout"] = int(float(options["timeout"]) * 1000)
        client = genai.Client(
            api_key=options.get("api_key") or "missing-key",
            http_options=types.HttpOptions(**http_options),
        )
        return track_gemini(client)
    raise ValueError(f"Unknown provider type {kind!r} for provider {name!r}")


# -- one request, per provider kind -------------------------------------------------------


def call_arguments(
    kind: str, model: str, request: ServiceRequest, timeout: float | None
) -> tuple[tuple[str, ...], dict[str, Any]]:
    """(attribute path of the SDK method, keyword arguments) for one attempt."""
    if kind == "anthropic":
        system: list[dict[str, Any]] = []
        if request.system:
            system.append({"type": "text", "text": request.system})
        system += [{"type": "text", "text": doc} for doc in request.documents]
        if system:
            # One cache breakpoint after the stable prefix (system prompt + documents).
            system[-1]["cache_control"] = {"type": "ephemeral"}
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": list(request.messages),
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        }
        if system:
            kwargs["system"] = system
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.tools:
            kwargs["tools"] = list(request.tools)
        if timeout is not None:
            kwargs["timeout"] = timeout
        return ("messages", "create"), kwargs
    if kind == "gemini":
        from google.genai import types

        contents = [
            types.Content(
                role="model" if m["role"] == "assistant" else "user",
                parts=[types.Part(text=m["content"])],
            )
            for m in request.messages
        ]
        system_text = "\n\n".join(filter(None, [request.system, *request.documents]))
        config = types.GenerateContentConfig(
            system_instruction=system_text or None,
            max_output_tokens=request.max_tokens,
            temperature=request.temperature,
            http_options=types.HttpOptions(timeout=int(timeout * 1000)) if timeout else None,
        )
        return ("models", "generate_content"), {
            "model": model,
            "contents": contents,
            "config": config,
        }
    # OpenAI and OpenAI-compatible: a stable prefix (system prompt, then documents) lets
    # OpenAI's automatic prompt caching reuse it.
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages += [{"role": "system", "content": doc} for doc in request.documents]
    messages += list(request.messages)
    kwargs = {"model": model, "messages": messages}
    if request.max_tokens is not None:
        kwargs["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        kwargs["temperature"] = request.temperature
    if request.tools:
        kwargs["tools"] = list(request.tools)
    if timeout is not None:
        kwargs["timeout"] = timeout
    return ("chat", "completions", "create"), kwargs


def method_of(client: Any, path: tuple[str, ...]) -> Any:
    target = client
    for part in path:
        target = getattr(target, part)
    return target


def answer_text(kind: str, response: Any) -> str:
    """The text of a provider response (its usage, model and finish reason are on
    ``response.fluxgate``, as the tracked client read them)."""
    if kind == "anthropic":
        return "".join(b.text for b in response.content if getattr(b, "type", "") == "text")
    if kind == "gemini":
        return response.text or ""
    choices = response.choices
    return (choices[0].message.content or "") if choices else ""
