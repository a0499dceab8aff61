"""Tracked provider clients: ``track_openai(OpenAI())``, ``track_anthropic(Anthropic())``,
``track_gemini(genai.Client())``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from ..conf import fluxgate_settings
from ..context import EMPTY_CONTEXT
from ..outcomes import openai_compatible_provider
from .anthropic import AnthropicAdapter
from .core import instrument, is_instrumented
from .gemini import GeminiReader, GeminiTransport
from .openai import OpenAIAdapter
from .stainless import StainlessTransport

if TYPE_CHECKING:
    from anthropic import Anthropic, AsyncAnthropic  # noqa: F401
    from google.genai import Client as GeminiClient  # noqa: F401
    from openai import AsyncOpenAI, OpenAI  # noqa: F401

ClientT = TypeVar("ClientT")

__all__ = ["is_instrumented", "track_anthropic", "track_gemini", "track_openai"]


def track_openai(
    client: ClientT | None = None,
    *,
    provider: str | None = None,
    stream_usage: bool = True,
    **context: Any,
) -> ClientT:
    """Track every LLM call of an ``OpenAI`` or ``AsyncOpenAI`` client (returned, same object).

    Without a client, one is made from ``FLUXGATE["PROVIDERS"][provider or "openai"]``.
    ``provider`` names an OpenAI-compatible endpoint's events (``"vllm"``...); by default
    a known gateway is named from the client's base URL (``openrouter.ai`` →
    ``"openrouter"``, as the LangChain handler names it), else ``"openai"``. Keyword
    arguments bind context fields (``feature=``, ``user=``...) to the client.

    ``stream_usage`` (default True): a chat or completion stream started without
    ``stream_options={"include_usage": True}`` is sent with it, so that it can be priced,
    and the usage-only chunk it adds is not shown to the caller; False sends requests as
    they are (for an OpenAI-compatible endpoint that refuses ``stream_options``).
    """
    if client is None:
        client = _client_from_settings(provider or "openai", "openai", "OpenAI")
    _check(client, "openai")
    if provider is None:
        provider = openai_compatible_provider(getattr(client, "base_url", None))
    reader = OpenAIAdapter(provider, stream_usage=stream_usage)
    return instrument(client, StainlessTransport(reader), reader, EMPTY_CONTEXT.merge(**context))


def track_anthropic(client: ClientT | None = None, **context: Any) -> ClientT:
    """Track every LLM call of an ``Anthropic`` or ``AsyncAnthropic`` client."""
    if client is None:
        client = _client_from_settings("anthropic", "anthropic", "Anthropic")
    _check(client, "anthropic")
    reader = AnthropicAdapter()
    return instrument(client, StainlessTransport(reader), reader, EMPTY_CONTEXT.merge(**context))


def track_gemini(client: ClientT | None = None, **context: Any) -> ClientT:
    """Track ``models.generate_content`` (and its stream) of a ``google.genai.Client``,
    sync and ``client.aio``; returns the same client.

    Without a client, one is made from ``FLUXGATE["PROVIDERS"]["gemini"]`` (or
    ``GEMINI_API_KEY``). Keyword arguments bind context fields to the client.
    """
    if client is None:
        client = _gemini_client_from_settings()
    module = type(client).__module__
    if not module.startswith("google.genai") or not hasattr(client, "_models"):
        raise TypeError(
            "track_gemini() takes a google-genai client (google.genai.Client(), or its .aio), "
            f"not {type(client).__name__}"
        )
    bound = EMPTY_CONTEXT.merge(**context)
    return instrument(client, GeminiTransport(), GeminiReader(), bound)


def _gemini_client_from_settings() -> Any:
    try:
        from google import genai
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "track_gemini() needs the google-genai package: pip install 'django-fluxgate[gemini]'"
        ) from exc
    options = {
        k: v for k, v in fluxgate_settings.PROVIDERS.get("gemini", {}).items() if v is not None
    }
    return genai.Client(**options)


def _check(client: Any, package: str) -> None:
    module = type(client).__module__.split(".")[0]
    if module != package or not hasattr(type(client), "request"):
        raise TypeError(
            f"track_{package}() takes a {package} SDK client "
            f"(e.g. {package}.{'OpenAI' if package == 'openai' else 'Anthropic'}()), "
            f"not {type(client).__name__}"
        )


def _client_from_settings(provider: str, package: str, class_name: str) -> Any:
    try:
        module = __import__(package)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"track_{provider}() needs the {package} package: "
            f"pip install 'django-fluxgate[{provider}]'"
        ) from exc
    options = {
        k: v
        for k, v in fluxgate_settings.PROVIDERS.get(provider, {}).items()
        if v is not None and k in ("api_key", "base_url", "timeout", "max_retries")
    }
    return getattr(module, class_name)(**options)
