"""The OpenAI wire format: Chat Completions, legacy Completions and the Responses API, as
JSON bodies and SSE streams; usage, finish reasons and error bodies.

``prompt_tokens`` / ``input_tokens`` *include* cached (and cache-write) tokens and
``completion_tokens`` / ``output_tokens`` *include* reasoning tokens.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from .turn import _Turn
from .wire import _DEFAULT_MESSAGES, _data, _event, _new_id, _split_text

_OPENAI_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    409: ("invalid_request_error", "conflict"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "timeout"),
}

_CHAT_FINISH = {
    "max_tokens": "length",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
}


# -- usage and finish reasons -------------------------------------------------------------


def _openai_usage(t: _Turn) -> dict[str, Any]:
    """``usage`` of a chat completion / completion (with ``FakeReply.usage_extra``)."""
    prompt_details: dict[str, Any] = {"cached_tokens": t.cached, "audio_tokens": 0}
    cache_write = t.cache_write + t.cache_write_1h
    if cache_write:
        prompt_details["cache_write_tokens"] = cache_write
    return {
        "prompt_tokens": t.input_tokens,
        "completion_tokens": t.output_tokens,
        "total_tokens": t.input_tokens + t.output_tokens,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {
            "reasoning_tokens": t.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
        **t.reply.usage_extra,
    }


def _chat_finish(t: _Turn) -> tuple[str, bool]:
    """(finish_reason, is_refusal) for chat completions."""
    finish = t.finish
    if finish is None:
        return "stop", False
    if finish == "refusal":
        return "stop", True
    return _CHAT_FINISH.get(finish, finish), False


def _completion_finish(t: _Turn) -> str:
    finish = t.finish
    if finish in ("length", "max_tokens"):
        return "length"
    if finish == "content_filter":
        return "content_filter"
    return "stop" if finish in (None, "end_turn", "stop_sequence", "refusal") else finish


def _responses_usage(t: _Turn) -> dict[str, Any]:
    return {
        "input_tokens": t.input_tokens,
        "input_tokens_details": {
            "cached_tokens": t.cached,
            "cache_write_tokens": t.cache_write + t.cache_write_1h,
        },
        "output_tokens": t.output_tokens,
        "output_tokens_details": {"reasoning_tokens": t.reasoning},
        "total_tokens": t.input_tokens + t.output_tokens,
    }


def _responses_status(t: _Turn) -> tuple[str, dict[str, Any] | None]:
    finish = t.finish
    if finish in ("length", "max_tokens", "max_output_tokens"):
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


# -- chat completions and completions ---------------------------------------------------


def _chat_json(t: _Turn) -> dict[str, Any]:
    finish, refusal = _chat_finish(t)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if refusal else t.text,
        "refusal": t.text if refusal else None,
        "annotations": [],
    }
    return {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": t.model,
        "choices": [
            {"index": i, "message": message, "logprobs": None, "finish_reason": finish}
            for i in range(t.n)
        ],
        "usage": _openai_usage(t),
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


def _chat_sse(t: _Turn) -> Iterator[bytes]:
    finish, refusal = _chat_finish(t)
    include_usage = _include_usage(t.body)
    base = {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": t.model,
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }
    if include_usage:
        base["usage"] = None
    key = "refusal" if refusal else "content"
    pieces = _split_text(t.text, t.reply.chunks)
    for i in range(t.n):
        first = {"role": "assistant", "content": "" if not refusal else None, "refusal": None}
        yield _data({**base, "choices": [_chunk_choice(i, first, None)]})
        for piece in pieces:
            yield _data({**base, "choices": [_chunk_choice(i, {key: piece}, None)]})
        yield _data({**base, "choices": [_chunk_choice(i, {}, finish)]})
    if include_usage:
        yield _data({**base, "choices": [], "usage": _openai_usage(t)})
    yield b"data: [DONE]\n\n"


def _chunk_choice(index: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


def _include_usage(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and bool(opts.get("include_usage"))


def _completion_json(t: _Turn) -> dict[str, Any]:
    return {
        "id": _new_id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": t.model,
        "choices": [
            {"text": t.text, "index": 0, "logprobs": None, "finish_reason": _completion_finish(t)}
        ],
        "usage": _openai_usage(t),
        "system_fingerprint": "fp_fake",
    }


def _completion_sse(t: _Turn) -> Iterator[bytes]:
    include_usage = _include_usage(t.body)
    base: dict[str, Any] = {
        "id": _new_id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": t.model,
        "system_fingerprint": "fp_fake",
    }
    if include_usage:
        base["usage"] = None
    for piece in _split_text(t.text, t.reply.chunks):
        choice = {"text": piece, "index": 0, "logprobs": None, "finish_reason": None}
        yield _data({**base, "choices": [choice]})
    choice = {"text": "", "index": 0, "logprobs": None, "finish_reason": _completion_finish(t)}
    yield _data({**base, "choices": [choice]})
    if include_usage:
        yield _data({**base, "choices": [], "usage": _openai_usage(t)})
    yield b"data: [DONE]\n\n"


# -- Responses API ------------------------------------------------------------------------


def _responses_parts(t: _Turn) -> tuple[dict[str, Any], str]:
    """(final content part, part key) for the Responses API output message."""
    if t.finish == "refusal":
        return {"type": "refusal", "refusal": t.text}, "refusal"
    return {"type": "output_text", "text": t.text, "annotations": [], "logprobs": []}, "text"


def _response_object(
    t: _Turn,
    resp_id: str,
    created: int,
    *,
    status: str,
    incomplete: dict[str, Any] | None,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    body = t.body
    text_cfg = body.get("text")
    if not isinstance(text_cfg, dict) or "format" not in text_cfg:
        text_cfg = {"format": {"type": "text"}, **(text_cfg if isinstance(text_cfg, dict) else {})}
    return {
        "id": resp_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "completed_at": int(time.time()) if status in ("completed", "incomplete") else None,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": t.model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": text_cfg,
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": usage,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def _responses_json(t: _Turn) -> dict[str, Any]:
    status, incomplete = _responses_status(t)
    part, _ = _responses_parts(t)
    message = {
        "id": _new_id("msg_"),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [part],
    }
    return _response_object(
        t,
        _new_id("resp_"),
        int(time.time()),
        status=status,
        incomplete=incomplete,
        output=[message],
        usage=_responses_usage(t),
    )


def _responses_sse(t: _Turn) -> Iterator[bytes]:
    status, incomplete = _responses_status(t)
    resp_id = _new_id("resp_")
    msg_id = _new_id("msg_")
    created = int(time.time())
    part, key = _responses_parts(t)
    seq = 0

    def event(payload: dict[str, Any]) -> bytes:
        nonlocal seq
        payload["sequence_number"] = seq
        seq += 1
        return _event(payload["type"], payload)

    initial = _response_object(
        t, resp_id, created, status="in_progress", incomplete=None, output=[], usage=None
    )
    yield event({"type": "response.created", "response": initial})
    yield event({"type": "response.in_progress", "response": initial})
    item = {"id": msg_id, "type": "message", "status": "in_progress", "role": "assistant"}
    yield event(
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "content": []}}
    )
    empty_part = {**part, key: ""}
    where = {"item_id": msg_id, "output_index": 0, "content_index": 0}
    yield event({"type": "response.content_part.added", **where, "part": empty_part})
    if key == "text":
        for piece in _split_text(t.text, t.reply.chunks):
            yield event(
                {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
            )
        yield event({"type": "response.output_text.done", **where, "text": t.text, "logprobs": []})
    else:
        for piece in _split_text(t.text, t.reply.chunks):
            yield event({"type": "response.refusal.delta", **where, "delta": piece})
        yield event({"type": "response.refusal.done", **where, "refusal": t.text})
    yield event({"type": "response.content_part.done", **where, "part": part})
    done_item = {**item, "status": status, "content": [part]}
    yield event({"type": "response.output_item.done", "output_index": 0, "item": done_item})
    final = _response_object(
        t,
        resp_id,
        created,
        status=status,
        incomplete=incomplete,
        output=[done_item],
        usage=_responses_usage(t),
    )
    kind = "response.completed" if status == "completed" else "response.incomplete"
    yield event({"type": kind, "response": final})


# -- errors -------------------------------------------------------------------------------


def _openai_error(status: int, message: str | None) -> dict[str, Any]:
    default = ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    err_type, code = _OPENAI_ERRORS.get(status, default)
    msg = message or _DEFAULT_MESSAGES.get(status) or f"Fake provider error {status}."
    return {"error": {"message": msg, "type": err_type, "param": None, "code": code}}
