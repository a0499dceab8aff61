"""The Anthropic wire format: Messages as a JSON body and as SSE events; usage, stop
reasons, ``count_tokens`` and error bodies.

``input_tokens`` *excludes* cache reads and writes, which are reported separately.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .turn import _ceil4, _text_len, _Turn
from .wire import _DEFAULT_MESSAGES, _event, _new_id, _split_text

_ANTHROPIC_ERRORS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_ANTHROPIC_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def _anthropic_stop(t: _Turn) -> str:
    finish = t.finish
    if finish is None:
        return "end_turn"
    return _ANTHROPIC_STOP.get(finish, finish)


def _anthropic_usage(t: _Turn, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": t.input_tokens,
        "cache_creation_input_tokens": t.cache_write + t.cache_write_1h,
        "cache_read_input_tokens": t.cached,
        "cache_creation": {
            "ephemeral_5m_input_tokens": t.cache_write,
            "ephemeral_1h_input_tokens": t.cache_write_1h,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _messages_json(t: _Turn) -> dict[str, Any]:
    return {
        "id": _new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": t.model,
        "content": [{"type": "text", "text": t.text}] if t.text else [],
        "stop_reason": _anthropic_stop(t),
        "stop_sequence": None,
        "usage": _anthropic_usage(t, t.output_tokens),
    }


def _messages_sse(t: _Turn) -> Iterator[bytes]:
    start: dict[str, Any] = {
        "id": _new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": t.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _anthropic_usage(t, min(1, t.output_tokens)),
    }
    yield _event("message_start", {"type": "message_start", "message": start})
    if t.text:
        block = {"type": "content_block_start", "index": 0}
        yield _event(
            "content_block_start", {**block, "content_block": {"type": "text", "text": ""}}
        )
        yield _event("ping", {"type": "ping"})
        for piece in _split_text(t.text, t.reply.chunks):
            delta = {"type": "text_delta", "text": piece}
            yield _event(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
    usage = _anthropic_usage(t, t.output_tokens)
    delta_usage = {
        "input_tokens": usage["input_tokens"],
        "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
        "cache_read_input_tokens": usage["cache_read_input_tokens"],
        "output_tokens": usage["output_tokens"],
    }
    yield _event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": _anthropic_stop(t), "stop_sequence": None},
            "usage": delta_usage,
        },
    )
    yield _event("message_stop", {"type": "message_stop"})


def _count_tokens_json(body: dict[str, Any]) -> dict[str, Any]:
    """The reply to ``POST /v1/messages/count_tokens``."""
    chars = _text_len(body.get("messages")) + _text_len(body.get("system"))
    return {"input_tokens": max(1, _ceil4(chars))}


def _anthropic_error(status: int, message: str | None, request_id: str) -> dict[str, Any]:
    default = "api_error" if status >= 500 else "invalid_request_error"
    err_type = _ANTHROPIC_ERRORS.get(status, default)
    msg = message or _DEFAULT_MESSAGES.get(status) or f"Fake provider error {status}."
    return {"type": "error", "error": {"type": err_type, "message": msg}, "request_id": request_id}
