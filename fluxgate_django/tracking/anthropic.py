"""Anthropic: which calls are tracked and how to read their usage.

Anthropic's ``input_tokens`` *exclude* cache reads and writes, which are reported
separately; FluxGate's ``Usage.input_tokens`` is the total input, so they are added here
(and nowhere else). Writes to the 1-hour cache are priced apart from 5-minute ones.
"""

from __future__ import annotations

import functools
from typing import Any

from ..outcomes import error_status, set_finish
from ..records import CallInfo, Status, Usage
from .stainless import SdkTypes


def normalise_anthropic_usage(usage: Any) -> Usage | None:
    if usage is None:
        return None
    uncached = getattr(usage, "input_tokens", 0) or 0
    cache_write = getattr(usage, "cache_creation_input_tokens", 0) or 0
    cache_read = getattr(usage, "cache_read_input_tokens", 0) or 0
    breakdown = getattr(usage, "cache_creation", None)
    writes_1h = getattr(breakdown, "ephemeral_1h_input_tokens", 0) or 0
    return Usage(
        input_tokens=uncached + cache_write + cache_read,
        output_tokens=getattr(usage, "output_tokens", 0) or 0,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=writes_1h,
    )


def served_tier(usage: Any) -> str:
    """The tier Anthropic served a call on (``usage.service_tier``: ``standard``,
    ``priority``, ``batch``), read the same way from a message and a stream's
    ``message_start``; "" when not reported."""
    tier = getattr(usage, "service_tier", None)
    return tier if isinstance(tier, str) else ""


def _stop(info: CallInfo, reason: str | None) -> None:
    set_finish(info, "anthropic", reason)


class AnthropicAdapter:
    provider = "anthropic"

    def operation(self, method: str, url: str) -> str | None:
        if method.lower() == "post" and url == "/v1/messages":
            return "messages"
        return None

    def read_response(self, operation: str, response: Any, info: CallInfo) -> Usage | None:
        info.model = getattr(response, "model", None) or info.requested_model
        _stop(info, getattr(response, "stop_reason", None))
        usage = getattr(response, "usage", None)
        info.service_tier = served_tier(usage)
        return normalise_anthropic_usage(usage)

    def stream_accumulator(self, operation: str) -> Any:
        return _MessageStream()

    @functools.cache  # noqa: B019  (one adapter instance per client; the types never change)
    def sdk_types(self) -> SdkTypes:
        from anthropic import AsyncStream, Stream
        from anthropic._response import APIResponse, AsyncAPIResponse

        return SdkTypes(
            stream=(Stream, AsyncStream),
            raw_response=(APIResponse,),
            async_raw_response=(AsyncAPIResponse,),
        )

    def helper_stream_classes(self) -> tuple[type, ...]:
        from anthropic.lib.streaming import AsyncMessageStream, MessageStream

        return (MessageStream, AsyncMessageStream)

    def status_for_error(self, error: BaseException) -> Status:
        return error_status("anthropic", error)


class _MessageStream:
    """``message_start`` carries input and cache counts; ``message_delta`` the cumulative
    output count and stop reason (and, on some API versions, final input counts too)."""

    __slots__ = ("model", "service_tier", "stop_reason", "usage")

    _COUNTS = (
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "output_tokens",
    )

    def __init__(self) -> None:
        self.model = ""
        self.stop_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.service_tier = ""

    def observe(self, event: Any) -> None:
        kind = getattr(event, "type", "")
        if kind == "message_start":
            message = event.message
            self.model = message.model
            self.usage = {}
            self._merge(message.usage)
        elif kind == "message_delta":
            self.stop_reason = getattr(event.delta, "stop_reason", None) or self.stop_reason
            if self.usage is None:
                self.usage = {}
            self._merge(event.usage)

    def _merge(self, usage: Any) -> None:
        assert self.usage is not None
        for name in self._COUNTS:
            value = getattr(usage, name, None)
            if value is not None:
                self.usage[name] = value
        breakdown = getattr(usage, "cache_creation", None)
        if breakdown is not None:
            self.usage["cache_creation"] = breakdown
        # (On ``message_start``'s usage, as on a whole message's: the same value either way.)
        self.service_tier = served_tier(usage) or self.service_tier

    def result(self, info: CallInfo) -> Usage | None:
        info.model = self.model or info.requested_model
        info.service_tier = self.service_tier
        _stop(info, self.stop_reason)
        if self.usage is None:
            return None
        return normalise_anthropic_usage(_Counts(self.usage))


class _Counts:
    """Attribute view of merged stream counts, for ``normalise_anthropic_usage``."""

    def __init__(self, counts: dict[str, Any]) -> None:
        self.__dict__.update(counts)

    def __getattr__(self, name: str) -> Any:
        return None
