"""Tracked provider clients: ``track_openai(OpenAI())``, ``track_anthropic(Anthropic())``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from ..conf import fluxgate_settings
from ..context import EMPTY_CONTEXT
from .anthropic import AnthropicAdapter
from .core import instrument_client, is_instrumented
from .openai import OpenAIAdapter

if TYPE_CHECKING:
    from anthropic import Anthropic, AsyncAnthropic  # noqa: F401
    from openai import AsyncOpenAI, OpenAI  # noqa: F401

ClientT = TypeVar("ClientT")

__all__ = ["is_instrumented", "track_anthropic", "track_openai"]


def track_openai(client: ClientT | None = None, **context: Any) -> ClientT:
    """Track every LLM call of an ``OpenAI`` or ``AsyncOpenAI`` client (returned, same object).

    Without a client, one is made from ``FLUXGATE["PROVIDERS"]["openai"]``. Keyword
    arguments bind context fields (``feature=``, ``user=``...) to the client.
    """
    if client is None:
        client = _client_from_settings("openai", "openai", "OpenAI")
    _check(client, "openai")
    return instrument_client(client, OpenAIAdapter(), EMPTY_CONTEXT.merge(**context))


def track_anthropic(client: ClientT | None = None, **context: Any) -> ClientT:
    """Track every LLM call of an ``Anthropic`` or ``AsyncAnthropic`` client."""
    if client is None:
        client = _client_from_settings("anthropic", "anthropic", "Anthropic")
    _check(client, "anthropic")
    return instrument_client(client, AnthropicAdapter(), EMPTY_CONTEXT.merge(**context))


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
        k: v for k, v in fluxgate_settings.PROVIDERS.get(provider, {}).items() if v is not None
    }
    return getattr(module, class_name)(**options)
