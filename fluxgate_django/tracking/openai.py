"""OpenAI: which calls are tracked and how to read their usage.

OpenAI's ``prompt_tokens`` already include cached tokens and ``completion_tokens`` include
reasoning tokens, which is FluxGate's own convention, so counts are taken as they are.
"""

from __future__ import annotations

import functools
from typing import Any

from ..outcomes import error_status, read_responses_outcome, reported_cost, set_finish
from ..records import CallInfo, Status, Usage
from .stainless import SdkTypes

_OPERATIONS = {
    "/chat/completions": "chat",
    "/completions": "completion",
    "/responses": "responses",
    "/embeddings": "embeddings",
}


def normalise_openai_usage(usage: Any) -> Usage | None:
    """Chat/completions (``prompt_tokens``...) or Responses (``input_tokens``...) usage
    (an SDK model, or the gateway's view of the JSON, where an absent field reads None)."""
    if usage is None:
        return None
    if getattr(usage, "prompt_tokens", None) is not None:
        input_tokens = usage.prompt_tokens or 0
        output_tokens = getattr(usage, "completion_tokens", 0) or 0
        input_details = getattr(usage, "prompt_tokens_details", None)
        output_details = getattr(usage, "completion_tokens_details", None)
    else:
        input_tokens = getattr(usage, "input_tokens", 0) or 0
        output_tokens = getattr(usage, "output_tokens", 0) or 0
        input_details = getattr(usage, "input_tokens_details", None)
        output_details = getattr(usage, "output_tokens_details", None)
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=getattr(input_details, "cached_tokens", 0) or 0,
        cache_write_tokens=getattr(input_details, "cache_write_tokens", 0) or 0,
        reasoning_tokens=getattr(output_details, "reasoning_tokens", 0) or 0,
    )


def _finish(info: CallInfo, reason: str | None) -> None:
    set_finish(info, "openai", reason)


def _read_choices(response: Any, info: CallInfo) -> None:
    choices = getattr(response, "choices", None) or ()
    if choices:
        choice = choices[0]
        _finish(info, choice.finish_reason)
        message = getattr(choice, "message", None)
        if getattr(message, "refusal", None):
            info.status = Status.CONTENT_FILTER


#: The operations whose streams report usage only when asked (``stream_options``).
_USAGE_ON_REQUEST = frozenset({"chat", "completion"})


class OpenAIAdapter:
    """OpenAI, or any OpenAI-compatible endpoint (OpenRouter, vLLM...) under its own name.

    ``stream_usage``: a chat or completion stream the caller started without
    ``stream_options={"include_usage": True}`` is sent with it (its usage is the only way
    to price it), and the usage-only chunk it adds is not shown to the caller."""

    def __init__(self, provider: str = "openai", *, stream_usage: bool = True) -> None:
        self.provider = provider
        self.stream_usage = stream_usage

    def prepare_stream(self, operation: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """The request body with ``include_usage`` added, when FluxGate must ask for it
        (None: send the caller's body as it is)."""
        if not self.stream_usage or operation not in _USAGE_ON_REQUEST:
            return None
        options = body.get("stream_options")
        if options is None:
            options = {}
        elif not isinstance(options, dict) or "include_usage" in options:
            return None  # (the caller decided, either way)
        return {**body, "stream_options": {**options, "include_usage": True}}

    @staticmethod
    def added_event(event: Any) -> bool:
        """The chunk ``include_usage`` adds at the end of a stream: usage, no choices."""
        return getattr(event, "usage", None) is not None and not getattr(event, "choices", None)

    def operation(self, method: str, url: str) -> str | None:
        if method.lower() != "post":
            return None
        return _OPERATIONS.get(url)

    def read_response(self, operation: str, response: Any, info: CallInfo) -> Usage | None:
        info.model = getattr(response, "model", None) or info.requested_model
        info.service_tier = getattr(response, "service_tier", None) or ""
        if operation == "responses":
            read_responses_outcome(response, info)
        else:
            _read_choices(response, info)
        usage = getattr(response, "usage", None)
        info.reported_cost = reported_cost(usage)
        return normalise_openai_usage(usage)

    def stream_accumulator(self, operation: str) -> Any:
        if operation == "responses":
            return _ResponsesStream(self)
        return _ChunkStream()

    @functools.cache  # noqa: B019  (one adapter instance per client; the types never change)
    def sdk_types(self) -> SdkTypes:
        from openai import AsyncStream, Stream
        from openai._legacy_response import LegacyAPIResponse

        return SdkTypes(stream=(Stream, AsyncStream), raw_response=(LegacyAPIResponse,))

    def helper_stream_classes(self) -> tuple[type, ...]:
        from openai.lib.streaming.chat import AsyncChatCompletionStream, ChatCompletionStream
        from openai.lib.streaming.responses import AsyncResponseStream, ResponseStream

        return (
            ChatCompletionStream,
            AsyncChatCompletionStream,
            ResponseStream,
            AsyncResponseStream,
        )

    def status_for_error(self, error: BaseException) -> Status:
        return error_status("openai", error)


class _ChunkStream:
    """Chat / legacy completion chunks; usage only on the last chunk with include_usage."""

    __slots__ = ("finish_reason", "model", "service_tier", "usage")

    def __init__(self) -> None:
        self.model = ""
        self.finish_reason: str | None = None
        self.usage: Any = None
        self.service_tier = ""

    def observe(self, chunk: Any) -> None:
        if not self.model:
            self.model = getattr(chunk, "model", "") or ""
            self.service_tier = getattr(chunk, "service_tier", "") or ""
        for choice in getattr(chunk, "choices", None) or ():
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.usage = usage

    def result(self, info: CallInfo) -> Usage | None:
        info.model = self.model or info.requested_model
        info.service_tier = self.service_tier
        _finish(info, self.finish_reason)
        if self.usage is None:
            _warn_no_stream_usage(info.operation)
        info.reported_cost = reported_cost(self.usage)
        return normalise_openai_usage(self.usage)


class _ResponsesStream:
    """Responses API events: the final ``response.completed|incomplete|failed`` has usage."""

    __slots__ = ("adapter", "final", "model")

    def __init__(self, adapter: OpenAIAdapter) -> None:
        self.adapter = adapter
        self.final: Any = None
        self.model = ""

    def observe(self, event: Any) -> None:
        kind = getattr(event, "type", "")
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            self.final = event.response
        elif kind == "response.created" and not self.model:
            self.model = getattr(event.response, "model", "") or ""

    def result(self, info: CallInfo) -> Usage | None:
        if self.final is None:
            info.model = self.model or info.requested_model
            return None
        return self.adapter.read_response("responses", self.final, info)


_warned_stream_usage = False


def _warn_no_stream_usage(operation: str) -> None:
    global _warned_stream_usage
    if not _warned_stream_usage:
        _warned_stream_usage = True
        import logging

        logging.getLogger("fluxgate").warning(
            "An OpenAI %s stream reported no usage, so its event has cost=None "
            "(cost_source='usage-missing'). Pass stream_options={'include_usage': True} "
            "to create(..., stream=True) to have it priced.",
            operation,
        )
