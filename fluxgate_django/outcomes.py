"""How a call's finish reason or error becomes a :class:`~fluxgate_django.Status`.

One table per provider, used by the tracked clients, the LangChain handler and the
ingest API alike, so the same outcome has the same status whichever way it arrived.
Django-free (``fluxgate_langchain`` imports it without a configured site).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from .records import CallInfo, CostSource, Status, Usage

OPENAI_FINISH = {
    "length": Status.MAX_TOKENS,
    "max_output_tokens": Status.MAX_TOKENS,
    "content_filter": Status.CONTENT_FILTER,
}

ANTHROPIC_STOP = {
    "max_tokens": Status.MAX_TOKENS,
    "model_context_window_exceeded": Status.MAX_TOKENS,
    "refusal": Status.CONTENT_FILTER,
}

#: Gemini finish reasons. MALFORMED_FUNCTION_CALL is ERROR, not MALFORMED_REQUEST: the
#: request was accepted and billed; the model's output is what's unusable.
GEMINI_FINISH = {
    "MAX_TOKENS": Status.MAX_TOKENS,
    "SAFETY": Status.CONTENT_FILTER,
    "BLOCKLIST": Status.CONTENT_FILTER,
    "PROHIBITED_CONTENT": Status.CONTENT_FILTER,
    "SPII": Status.CONTENT_FILTER,
    "LANGUAGE": Status.CONTENT_FILTER,
    "IMAGE_SAFETY": Status.CONTENT_FILTER,
    "IMAGE_PROHIBITED_CONTENT": Status.CONTENT_FILTER,
    "MODEL_ARMOR": Status.CONTENT_FILTER,
    "ESCALATION": Status.CONTENT_FILTER,
    "RECITATION": Status.RECITATION,
    "IMAGE_RECITATION": Status.RECITATION,
    "PUP_LIMITED_DISABLED": Status.BLOCKED,
    "MISSING_THOUGHT_SIGNATURE": Status.MALFORMED_REQUEST,
    "MALFORMED_FUNCTION_CALL": Status.ERROR,
    "UNEXPECTED_TOOL_CALL": Status.ERROR,
    "TOO_MANY_TOOL_CALLS": Status.ERROR,
    "MALFORMED_RESPONSE": Status.ERROR,
    "NO_IMAGE": Status.ERROR,
    "OTHER": Status.ERROR,
    "IMAGE_OTHER": Status.ERROR,
}

_BY_PROVIDER = {"openai": OPENAI_FINISH, "anthropic": ANTHROPIC_STOP, "gemini": GEMINI_FINISH}


def finish_status(provider: str, reason: str | None) -> Status:
    """The status of a call that finished with ``reason`` (unknown providers: any table)."""
    if not reason:
        return Status.SUCCESS
    table = _BY_PROVIDER.get(provider)
    if table is not None:
        return table.get(reason, Status.SUCCESS)
    for table in _BY_PROVIDER.values():
        if reason in table:
            return table[reason]
    return Status.SUCCESS


def set_finish(info: CallInfo, provider: str, reason: str | None) -> None:
    """Record ``reason`` on ``info`` with its status."""
    if reason:
        info.finish_reason = reason
        info.status = finish_status(provider, reason)


def read_responses_outcome(response: Any, info: CallInfo) -> None:
    """Finish reason and status of an OpenAI Responses API response."""
    status = getattr(response, "status", None)
    if status == "incomplete":
        details = getattr(response, "incomplete_details", None)
        set_finish(info, "openai", getattr(details, "reason", None) or "incomplete")
    elif status == "failed":
        info.finish_reason = "failed"
        info.status = Status.ERROR
    elif status:
        info.finish_reason = status


def error_status(provider: str, error: BaseException) -> Status:
    """The status of a call that raised ``error``: 400s are MALFORMED_REQUEST (OpenAI's
    content-policy rejections CONTENT_FILTER), anything else ERROR."""
    if not isinstance(error, Exception):  # KeyboardInterrupt, CancelledError...
        return Status.ERROR
    if provider == "openai" and getattr(error, "code", None) in (
        "content_filter",
        "content_policy_violation",
    ):
        return Status.CONTENT_FILTER
    status = getattr(error, "status_code", None)
    if status is None and provider == "gemini":
        status = getattr(error, "code", None)
    return Status.MALFORMED_REQUEST if status == 400 else Status.ERROR


def end_of_stream(info: CallInfo, usage: Usage | None, *, completed: bool) -> dict[str, Any] | None:
    """Apply the rules of a stream's end to ``info``; returns metadata for the event.

    No usage seen: the event has no cost (``info.usage_missing_reason`` says why). A stream
    that did not complete is marked ``stream_completed: False``; if it also ended before
    the provider's finish reason, its counts are partial, and a partial count must not
    pass for the call's cost (``stream-incomplete``). Every path that observes streams —
    tracked clients and the LangChain handler — ends them here.
    """
    if usage is None:
        info.usage_reported = False
    if completed:
        return None
    if not info.finish_reason:
        info.usage_reported = False
        info.usage_missing_reason = CostSource.STREAM_INCOMPLETE.value
    return {"stream_completed": False}


# -- OpenAI-compatible gateways ------------------------------------------------------------

#: Hosts of OpenAI-compatible gateways → the provider name their events carry (and that
#: genai-prices keys their models under: ``openrouter`` prices ``openai/gpt-4o``...).
_GATEWAY_HOSTS = {"openrouter.ai": "openrouter"}


def openai_compatible_provider(base_url: Any, default: str = "openai") -> str:
    """The provider an OpenAI-format client at ``base_url`` talks to: a known gateway's
    name (``https://openrouter.ai/api/v1`` → ``"openrouter"``), else ``default``.

    Shared by every path that sees an OpenAI-format client (``track_openai``, the
    LangChain handler reading a ``ChatOpenAI``'s base URL), so the same call is named —
    and priced — the same way.
    """
    if not base_url:
        return default
    try:
        host = (urlsplit(str(base_url)).hostname or "").lower()
    except ValueError:
        return default
    for gateway, name in _GATEWAY_HOSTS.items():
        if host == gateway or host.endswith("." + gateway):
            return name
    return default


def reported_cost(usage: Any) -> Decimal | None:
    """The cost in USD that OpenRouter (and some other OpenAI-compatible gateways) report
    as ``usage.cost``; ``usage`` is the SDK's model or its dict form (LangChain's
    ``token_usage``). None when there is none or it is not a number."""
    if usage is None:
        return None
    cost = usage.get("cost") if isinstance(usage, Mapping) else getattr(usage, "cost", None)
    if isinstance(cost, (int, float, str)) and not isinstance(cost, bool):
        try:
            return Decimal(str(cost))
        except ArithmeticError:
            return None
    return None
