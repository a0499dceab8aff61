"""How the LLM service judges a failed attempt: try the next model, or give up."""

from __future__ import annotations

import sys

from ..model_refs import ModelRef
from .types import Attempt

_CONTEXT_PHRASES = ("context length", "context window", "prompt is too long", "too many tokens")


class AllProvidersFailed(Exception):
    """Every model of the route failed (or was skipped); ``attempts`` says how."""

    def __init__(self, message: str, attempts: list[Attempt], last_error: Exception | None):
        super().__init__(message)
        self.attempts = attempts
        self.last_error = last_error


def _transport_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """``(timeouts, connection failures)``: the classes of the SDKs and HTTP client loaded
    (an SDK that is not imported raised nothing)."""
    timeouts: list[type] = [TimeoutError]
    failures: list[type] = [ConnectionError]
    httpx = sys.modules.get("httpx")
    if httpx is not None:
        timeouts.append(httpx.TimeoutException)
        failures += [httpx.NetworkError, httpx.RemoteProtocolError]
    for name in ("openai", "anthropic"):
        sdk = sys.modules.get(name)
        if sdk is not None:
            timeouts.append(sdk.APITimeoutError)
            failures.append(sdk.APIConnectionError)  # timeouts included
    return tuple(timeouts), tuple(timeouts + failures)


def is_timeout(error: BaseException) -> bool:
    return isinstance(error, _transport_errors()[0])


def classify(error: BaseException) -> str:
    """``"retry"`` (timeout, connection, 429, 5xx), ``"context"`` (prompt too long for the
    model: try one with a larger window) or ``"fatal"`` (the caller's own 4xx)."""
    if isinstance(error, _transport_errors()[1]):
        return "retry"
    status = getattr(error, "status_code", None)  # OpenAI, Anthropic
    if not isinstance(status, int):
        status = getattr(error, "code", None)  # google-genai
    if not isinstance(status, int):
        return "fatal"
    if status == 429 or status >= 500:
        return "retry"
    text = str(error).lower()
    if getattr(error, "code", None) == "context_length_exceeded" or any(
        phrase in text for phrase in _CONTEXT_PHRASES
    ):
        return "context"
    return "fatal"


def context_window(ref: ModelRef) -> int | None:
    """The model's context window from genai-prices' data, when it knows it (the price
    book's cached entry: not a price calculation per routing step)."""
    from ..pricing import price_book

    return price_book.context_window(ref.provider, ref.model)
