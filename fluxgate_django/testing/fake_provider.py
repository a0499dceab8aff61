"""A loopback fake LLM provider speaking the OpenAI, Anthropic and Gemini wire formats.

Real SDK clients (``openai.OpenAI`` / ``AsyncOpenAI``, ``anthropic.Anthropic`` /
``AsyncAnthropic``, ``google.genai.Client``) talk to it over HTTP, so every code path of the
SDKs (typed models, SSE streaming, ``parse()`` helpers, error mapping, timeouts) is exercised
for real::

    with FakeProvider() as fake:
        client = openai.OpenAI(api_key="sk-test", base_url=fake.openai_base_url, max_retries=0)
        fake.enqueue(FakeReply(text="hi", input_tokens=1000, cached_tokens=200, output_tokens=5))
        client.chat.completions.create(model="gpt-4o", messages=[...])

Usage is reported exactly the way each provider reports it:

* OpenAI ``prompt_tokens`` / ``input_tokens`` *include* cached (and cache-write) tokens and
  ``completion_tokens`` / ``output_tokens`` *include* reasoning tokens.
* Anthropic ``input_tokens`` *excludes* cache reads and writes, which are reported separately.
* Gemini ``promptTokenCount`` *includes* ``cachedContentTokenCount``, and
  ``candidatesTokenCount`` *excludes* ``thoughtsTokenCount`` (``FakeReply.output_tokens`` →
  candidates, ``reasoning_tokens`` → thoughts). Zero counts are left out, as Gemini does.

``FakeReply.input_tokens`` / ``output_tokens`` are put verbatim into the provider's input /
output field. When left ``None`` they are derived from the request / reply text (about four
characters a token); a derived OpenAI or Gemini prompt count also adds ``cached_tokens``
(and OpenAI's ``cache_write_tokens``) so that it always includes them.

Pure standard library: importable without Django and without the SDKs.
Run ``python -m fluxgate_django.testing.fake_provider --port 8765`` to serve by hand.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import uuid
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from types import TracebackType
from typing import Any

__all__ = ["DEFAULT_TEXT", "FakeProvider", "FakeReply", "FakeRequest", "main"]

DEFAULT_TEXT = "Hello from the fake provider."


@dataclass
class FakeReply:
    """What the fake provider answers to one request.

    Token fields are reported verbatim in the provider's own fields; ``None`` means "derive
    from the text" (ceil(chars / 4), at least 1 for input). Derived output tokens include
    ``reasoning_tokens`` and are capped by the request's ``max_tokens`` /
    ``max_completion_tokens`` / ``max_output_tokens``.

    ``finish_reason`` ``None`` means the provider default (``stop`` / ``end_turn`` /
    ``completed``). Aliases are translated per provider: ``length`` and ``max_tokens`` are
    the same thing, ``content_filter`` makes a Responses API reply ``incomplete``,
    ``refusal`` makes an OpenAI reply a refusal (``message.refusal`` / a ``refusal`` part).
    Gemini takes its own ``FinishReason`` names (``"SAFETY"``, ``"RECITATION"``,
    ``"MAX_TOKENS"``...; ``length`` / ``content_filter`` are translated), and
    ``"BLOCKED"`` (or ``"BLOCKED:<BlockedReason>"``) answers a blocked prompt:
    ``promptFeedback.blockReason`` (default ``SAFETY``) and no candidates.

    ``status`` outside 2xx answers with an error body in the provider's format (Google's
    ``{"error": {"code", "message", "status"}}`` for Gemini).
    """

    text: str = DEFAULT_TEXT
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    finish_reason: str | None = None
    served_model: str | None = None
    status: int = 200
    error_message: str | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0
    drop_connection: bool = False
    chunks: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Extra fields merged into an OpenAI-format ``usage`` (e.g. OpenRouter's ``cost``).
    usage_extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FakeRequest:
    """One request received by the fake provider (``headers`` keys are lowercased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    query: str = ""

    @property
    def model(self) -> str | None:
        """The ``model`` named in the JSON body (or, for Gemini, in the path), if any."""
        if isinstance(self.body, dict):
            model = self.body.get("model")
            if isinstance(model, str):
                return model
        gemini = _GEMINI_PATH.match(self.path)
        return gemini.group("model") if gemini else None

    @property
    def stream(self) -> bool:
        """Whether the request asked for a streamed (SSE) reply."""
        if self.path.endswith(":streamGenerateContent"):
            return True
        return isinstance(self.body, dict) and bool(self.body.get("stream"))


# --------------------------------------------------------------------------------------
# helpers


_OPENAI_ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
}
_ANTHROPIC_ROUTES = {
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "count_tokens",
}
_ROUTES = {**_OPENAI_ROUTES, **_ANTHROPIC_ROUTES}
#: Gemini API: ``POST /v1beta/models/{model}:{method}`` (also ``v1``, ``v1alpha``, tuned models).
_GEMINI_PATH = re.compile(
    r"^/v1(?:beta|alpha)?/(?:models|tunedModels)/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)$"
)
_GEMINI_ROUTES = {
    "generateContent": "gemini",
    "streamGenerateContent": "gemini_stream",
    "countTokens": "gemini_count_tokens",
}
_HEALTH_PATHS = frozenset({"/health", "/healthz", "/v1/health"})

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
_GOOGLE_ERRORS: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_DEFAULT_MESSAGES: dict[int, str] = {
    400: "Invalid request (fake provider).",
    401: "Invalid API key (fake provider).",
    403: "Permission denied (fake provider).",
    404: "Not found (fake provider).",
    429: "Rate limit reached (fake provider).",
    500: "The server had an error while processing your request (fake provider).",
    503: "Service unavailable (fake provider).",
    529: "Overloaded",
}
_EXTRA_PHRASES = {529: "Overloaded"}

_CHAT_FINISH = {
    "max_tokens": "length",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
}
_ANTHROPIC_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

_GEMINI_FINISH = {
    "stop": "STOP",
    "end_turn": "STOP",
    "stop_sequence": "STOP",
    "length": "MAX_TOKENS",
    "max_tokens": "MAX_TOKENS",
    "max_output_tokens": "MAX_TOKENS",
    "content_filter": "SAFETY",
    "refusal": "SAFETY",
    "tool_use": "STOP",
    "tool_calls": "STOP",
}
#: Finish reasons whose candidate carries no content (the output was withheld).
_GEMINI_WITHHELD = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
)

_JSON_CT = "application/json"
_SSE_CT = "text/event-stream; charset=utf-8"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _ceil4(n: int) -> int:
    return (n + 3) // 4


def _text_len(obj: Any) -> int:
    """Characters of message text in a request fragment (content / text / output fields)."""
    if isinstance(obj, str):
        return len(obj)
    if isinstance(obj, list):
        return sum(_text_len(x) for x in obj)
    if isinstance(obj, dict):
        n = 0
        for key in ("text", "content", "output", "arguments"):
            value = obj.get(key)
            if value is not None:
                n += _text_len(value)
        return n
    return 0


def _split_text(text: str, chunks: int | None) -> list[str]:
    """Split text into deltas: one per word (with its leading whitespace) or ``chunks``."""
    if not text:
        return []
    if chunks is None:
        pieces: list[str] = []
        start = 0
        length = len(text)
        i = 0
        while i < length:
            while i < length and text[i].isspace():
                i += 1
            while i < length and not text[i].isspace():
                i += 1
            pieces.append(text[start:i])
            start = i
        return pieces
    n = max(1, min(chunks, len(text)))
    length = len(text)
    return [text[i * length // n : (i + 1) * length // n] for i in range(n)]


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _embedding_inputs(value: Any) -> list[tuple[str, int]]:
    """(seed text, token count) for each embedding input."""
    if isinstance(value, str):
        return [(value, max(1, _ceil4(len(value))))]
    if isinstance(value, list):
        if not value:
            return []
        if all(isinstance(x, int) for x in value):
            return [(repr(value), max(1, len(value)))]
        out: list[tuple[str, int]] = []
        for item in value:
            if isinstance(item, str):
                out.append((item, max(1, _ceil4(len(item)))))
            elif isinstance(item, list):
                out.append((repr(item), max(1, len(item))))
        return out
    return [("", 1)]


def _embedding_vector(seed_text: str, dims: int) -> list[float]:
    """A deterministic vector in [-1, 1); values are exact in float32."""
    state = zlib.crc32(seed_text.encode("utf-8")) or 1
    vec = []
    for _ in range(dims):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        vec.append(((state >> 10) % 2048) / 1024.0 - 1.0)
    return vec


# --------------------------------------------------------------------------------------
# per-request computation


class _Turn:
    """Everything computed once per request: model, text, finish reason and usage."""

    __slots__ = (
        "body",
        "cache_write",
        "cache_write_1h",
        "cached",
        "finish",
        "input_tokens",
        "model",
        "n",
        "output_tokens",
        "reasoning",
        "reply",
        "text",
    )

    def __init__(
        self, reply: FakeReply, body: dict[str, Any], kind: str, model: str | None = None
    ) -> None:
        self.reply = reply
        self.body = body
        self.text = reply.text
        self.model = reply.served_model or model or body.get("model") or "fake-model"
        self.finish = reply.finish_reason
        self.cached = reply.cached_tokens
        self.cache_write = reply.cache_write_tokens
        self.cache_write_1h = reply.cache_write_1h_tokens
        self.reasoning = reply.reasoning_tokens
        n = body.get("n") if kind == "chat" else 1
        self.n = n if isinstance(n, int) and n > 0 else 1

        if reply.input_tokens is not None:
            self.input_tokens = reply.input_tokens
        else:
            if kind == "chat":
                chars = _text_len(body.get("messages"))
            elif kind == "completions":
                chars = _text_len(body.get("prompt"))
            elif kind == "responses":
                chars = _text_len(body.get("input")) + _text_len(body.get("instructions"))
            elif kind == "gemini":
                chars = _gemini_text_len(body)
            else:  # messages
                chars = _text_len(body.get("messages")) + _text_len(body.get("system"))
            derived = max(1, _ceil4(chars))
            if kind != "messages":  # OpenAI / Gemini prompt counts include cache tokens
                derived += self.cached + self.cache_write + self.cache_write_1h
            self.input_tokens = derived

        if reply.output_tokens is not None:
            self.output_tokens = reply.output_tokens
        elif kind == "gemini":  # candidatesTokenCount excludes thoughts
            out = _ceil4(len(self.text))
            config = body.get("generationConfig")
            cap = config.get("maxOutputTokens") if isinstance(config, dict) else None
            self.output_tokens = min(out, cap) if isinstance(cap, int) else out
        else:
            out = (_ceil4(len(self.text)) + self.reasoning) * self.n
            cap = None
            for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
                value = body.get(key)
                if isinstance(value, int):
                    cap = value
                    break
            self.output_tokens = min(out, cap) if cap is not None else out

    # OpenAI chat / completions ---------------------------------------------------------

    def openai_usage(self) -> dict[str, Any]:
        prompt_details: dict[str, Any] = {"cached_tokens": self.cached, "audio_tokens": 0}
        cache_write = self.cache_write + self.cache_write_1h
        if cache_write:
            prompt_details["cache_write_tokens"] = cache_write
        return {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
            "prompt_tokens_details": prompt_details,
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
            **self.reply.usage_extra,
        }

    def chat_finish(self) -> tuple[str, bool]:
        """(finish_reason, is_refusal) for chat completions."""
        finish = self.finish
        if finish is None:
            return "stop", False
        if finish == "refusal":
            return "stop", True
        return _CHAT_FINISH.get(finish, finish), False

    def completion_finish(self) -> str:
        finish = self.finish
        if finish in ("length", "max_tokens"):
            return "length"
        if finish == "content_filter":
            return "content_filter"
        return "stop" if finish in (None, "end_turn", "stop_sequence", "refusal") else finish

    # OpenAI responses ------------------------------------------------------------------

    def responses_usage(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {
                "cached_tokens": self.cached,
                "cache_write_tokens": self.cache_write + self.cache_write_1h,
            },
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning},
            "total_tokens": self.input_tokens + self.output_tokens,
        }

    def responses_status(self) -> tuple[str, dict[str, Any] | None]:
        finish = self.finish
        if finish in ("length", "max_tokens", "max_output_tokens"):
            return "incomplete", {"reason": "max_output_tokens"}
        if finish == "content_filter":
            return "incomplete", {"reason": "content_filter"}
        return "completed", None

    # Anthropic -------------------------------------------------------------------------

    def anthropic_stop(self) -> str:
        finish = self.finish
        if finish is None:
            return "end_turn"
        return _ANTHROPIC_STOP.get(finish, finish)

    # Gemini ------------------------------------------------------------------------------

    def gemini_finish(self) -> str:
        """``FinishReason`` name, or ``BLOCKED[:reason]`` for a blocked prompt."""
        finish = self.finish
        if finish is None:
            return "STOP"
        return _GEMINI_FINISH.get(finish, finish.upper())

    def gemini_usage(self, candidates: int | None) -> dict[str, Any]:
        """``usageMetadata``; ``candidates=None`` for a blocked prompt (nothing generated)."""
        usage: dict[str, Any] = {"promptTokenCount": self.input_tokens}
        total = self.input_tokens
        if candidates is not None:
            usage["candidatesTokenCount"] = candidates
            total += candidates
            if self.reasoning:
                usage["thoughtsTokenCount"] = self.reasoning
                total += self.reasoning
        if self.cached:
            usage["cachedContentTokenCount"] = self.cached
        usage["totalTokenCount"] = total
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": self.input_tokens}]
        if self.cached:
            usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": self.cached}]
        return usage

    def anthropic_usage(self, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_write + self.cache_write_1h,
            "cache_read_input_tokens": self.cached,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_write,
                "ephemeral_1h_input_tokens": self.cache_write_1h,
            },
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }


# --------------------------------------------------------------------------------------
# reply builders: each returns (json body) or an iterator of SSE event bytes


def _chat_json(t: _Turn) -> dict[str, Any]:
    finish, refusal = t.chat_finish()
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
        "usage": t.openai_usage(),
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


def _chat_sse(t: _Turn) -> Iterator[bytes]:
    finish, refusal = t.chat_finish()
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
        yield _data({**base, "choices": [], "usage": t.openai_usage()})
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
            {"text": t.text, "index": 0, "logprobs": None, "finish_reason": t.completion_finish()}
        ],
        "usage": t.openai_usage(),
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
    choice = {"text": "", "index": 0, "logprobs": None, "finish_reason": t.completion_finish()}
    yield _data({**base, "choices": [choice]})
    if include_usage:
        yield _data({**base, "choices": [], "usage": t.openai_usage()})
    yield b"data: [DONE]\n\n"


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
    status, incomplete = t.responses_status()
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
        usage=t.responses_usage(),
    )


def _responses_sse(t: _Turn) -> Iterator[bytes]:
    status, incomplete = t.responses_status()
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
        usage=t.responses_usage(),
    )
    kind = "response.completed" if status == "completed" else "response.incomplete"
    yield event({"type": kind, "response": final})


def _messages_json(t: _Turn) -> dict[str, Any]:
    return {
        "id": _new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": t.model,
        "content": [{"type": "text", "text": t.text}] if t.text else [],
        "stop_reason": t.anthropic_stop(),
        "stop_sequence": None,
        "usage": t.anthropic_usage(t.output_tokens),
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
        "usage": t.anthropic_usage(min(1, t.output_tokens)),
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
    usage = t.anthropic_usage(t.output_tokens)
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
            "delta": {"stop_reason": t.anthropic_stop(), "stop_sequence": None},
            "usage": delta_usage,
        },
    )
    yield _event("message_stop", {"type": "message_stop"})


def _gemini_text_len(body: dict[str, Any]) -> int:
    """Characters of text in a Gemini request's ``contents`` and ``systemInstruction``."""
    contents = body.get("contents")
    blocks = [*(contents if isinstance(contents, list) else ()), body.get("systemInstruction")]
    return sum(_text_len(block.get("parts")) for block in blocks if isinstance(block, dict))


def _gemini_blocked(finish: str) -> str | None:
    """The ``blockReason`` when ``finish`` asks for a blocked prompt, else None."""
    if finish == "BLOCKED":
        return "SAFETY"
    if finish.startswith("BLOCKED:"):
        return finish.split(":", 1)[1] or "SAFETY"
    return None


def _gemini_chunk(
    t: _Turn,
    response_id: str,
    text: str | None,
    finish: str | None,
    candidates: int,
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"index": 0}
    if text is not None:
        candidate["content"] = {"parts": [{"text": text}], "role": "model"}
    if finish is not None:
        candidate["finishReason"] = finish
    return {
        "candidates": [candidate],
        "usageMetadata": t.gemini_usage(candidates),
        "modelVersion": t.model,
        "responseId": response_id,
    }


def _gemini_blocked_reply(t: _Turn, reason: str, response_id: str) -> dict[str, Any]:
    return {
        "promptFeedback": {
            "blockReason": reason,
            "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}
            ],
        },
        "usageMetadata": t.gemini_usage(None),
        "modelVersion": t.model,
        "responseId": response_id,
    }


def _gemini_json(t: _Turn) -> dict[str, Any]:
    finish = t.gemini_finish()
    response_id = _new_id("")
    blocked = _gemini_blocked(finish)
    if blocked is not None:
        return _gemini_blocked_reply(t, blocked, response_id)
    text = None if finish in _GEMINI_WITHHELD else t.text
    return _gemini_chunk(t, response_id, text, finish, t.output_tokens)


def _gemini_sse(t: _Turn) -> Iterator[bytes]:
    """``alt=sse`` chunks; each carries the running ``usageMetadata``, the last the final one."""
    finish = t.gemini_finish()
    response_id = _new_id("")
    blocked = _gemini_blocked(finish)
    if blocked is not None:
        yield _data(_gemini_blocked_reply(t, blocked, response_id), b"\r\n\r\n")
        return
    pieces = [] if finish in _GEMINI_WITHHELD else _split_text(t.text, t.reply.chunks)
    if not pieces:
        chunk = _gemini_chunk(t, response_id, None, finish, t.output_tokens)
        yield _data(chunk, b"\r\n\r\n")
        return
    sent = 0
    for i, piece in enumerate(pieces):
        sent += len(piece)
        last = i == len(pieces) - 1
        running = t.output_tokens if last else t.output_tokens * sent // len(t.text)
        chunk = _gemini_chunk(t, response_id, piece, finish if last else None, running)
        yield _data(chunk, b"\r\n\r\n")


def _google_error(status: int, message: str | None) -> dict[str, Any]:
    default = "INTERNAL" if status >= 500 else "FAILED_PRECONDITION"
    msg = message or _DEFAULT_MESSAGES.get(status) or f"Fake provider error {status}."
    status_name = _GOOGLE_ERRORS.get(status, default)
    return {"error": {"code": status, "message": msg, "status": status_name}}


def _data(obj: dict[str, Any], end: bytes = b"\n\n") -> bytes:
    return b"data: " + _dumps(obj) + end


def _event(name: str, obj: dict[str, Any]) -> bytes:
    return b"event: " + name.encode("ascii") + b"\ndata: " + _dumps(obj) + b"\n\n"


_JSON_BUILDERS = {
    "chat": _chat_json,
    "completions": _completion_json,
    "responses": _responses_json,
    "messages": _messages_json,
    "gemini": _gemini_json,
}
_SSE_BUILDERS = {
    "chat": _chat_sse,
    "completions": _completion_sse,
    "responses": _responses_sse,
    "messages": _messages_sse,
    "gemini": _gemini_sse,
}


def _openai_error(status: int, message: str | None) -> dict[str, Any]:
    default = ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    err_type, code = _OPENAI_ERRORS.get(status, default)
    msg = message or _DEFAULT_MESSAGES.get(status) or f"Fake provider error {status}."
    return {"error": {"message": msg, "type": err_type, "param": None, "code": code}}


def _anthropic_error(status: int, message: str | None, request_id: str) -> dict[str, Any]:
    default = "api_error" if status >= 500 else "invalid_request_error"
    err_type = _ANTHROPIC_ERRORS.get(status, default)
    msg = message or _DEFAULT_MESSAGES.get(status) or f"Fake provider error {status}."
    return {"type": "error", "error": {"type": err_type, "message": msg}, "request_id": request_id}


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return _EXTRA_PHRASES.get(status, "Error")


# --------------------------------------------------------------------------------------
# HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], fake: FakeProvider) -> None:
        self.fake = fake
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a DNS lookup: skip it.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._conns_lock:
            self._conns.add(sock)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_all_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, ValueError)):  # client went away, socket closed...
            return
        traceback.print_exc()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FluxGateFakeProvider/1.0"
    sys_version = ""
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self._handle()

    do_GET = do_POST
    do_HEAD = do_POST
    do_PUT = do_POST
    do_PATCH = do_POST
    do_DELETE = do_POST

    # -- I/O --------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length:
            return self.rfile.read(int(length))
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        return b""

    def _head(self, status: int, content_type: str, headers: dict[str, str]) -> list[str]:
        lines = [
            f"HTTP/1.1 {status} {_reason(status)}\r\n",
            f"Server: {self.server_version}\r\n",
            f"Content-Type: {content_type}\r\n",
        ]
        lines.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        return lines

    def _send(
        self, status: int, body: bytes, headers: dict[str, str], content_type: str = _JSON_CT
    ) -> None:
        lines = self._head(status, content_type, headers)
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        head = "".join(lines).encode("latin-1")
        self.wfile.write(head if self.command == "HEAD" else head + body)

    def _send_sse(self, events: Iterable[bytes], headers: dict[str, str], gap: float) -> None:
        base = {"Cache-Control": "no-cache", **headers}
        if gap <= 0:
            self._send(200, b"".join(events), base, _SSE_CT)
            return
        lines = self._head(200, _SSE_CT, base)
        lines.append("Transfer-Encoding: chunked\r\n\r\n")
        pending = "".join(lines).encode("latin-1")
        stopping = self.server.fake._stopping
        first = True
        for ev in events:
            if not first and stopping.wait(gap):
                self.close_connection = True
                return
            first = False
            self.wfile.write(pending + b"%x\r\n" % len(ev) + ev + b"\r\n")
            pending = b""
        self.wfile.write(pending + b"0\r\n\r\n")

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- dispatch -----------------------------------------------------------------------

    def _handle(self) -> None:
        fake = self.server.fake
        raw_path, _, query = self.path.partition("?")
        method = self.command
        if raw_path in _HEALTH_PATHS and method in ("GET", "HEAD"):
            self._send(200, b'{"status":"ok"}', {})
            return
        raw = self._read_body()
        path = raw_path
        if path not in _ROUTES and "/v1" + path in _ROUTES:
            path = "/v1" + path
        headers = {k.lower(): v for k, v in self.headers.items()}
        gemini = _GEMINI_PATH.match(raw_path)
        if gemini is not None:
            route = _GEMINI_ROUTES.get(gemini.group("method")) if method == "POST" else None
        else:
            route = _ROUTES.get(path) if method == "POST" else None
        google = gemini is not None or (
            route is None and ("x-goog-api-key" in headers or raw_path.startswith("/v1beta/"))
        )
        anthropic = not google and (
            path.startswith("/v1/messages") or (route is None and "anthropic-version" in headers)
        )
        request_id = _new_id("req_")
        base_headers = {"request-id" if anthropic else "x-request-id": request_id}

        body: Any = None
        bad_json = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                bad_json = True
        fake._record(FakeRequest(method, raw_path, headers, body, query))

        def error(status: int, message: str | None, extra: dict[str, str] | None = None) -> None:
            if google:
                payload = _google_error(status, message)
            elif anthropic:
                payload = _anthropic_error(status, message, request_id)
            else:
                payload = _openai_error(status, message)
            self._send(status, _dumps(payload), {**base_headers, **(extra or {})})

        if route is None:
            error(404, f"Invalid URL ({method} {raw_path})" if not anthropic else "Not Found")
            return
        if bad_json or not isinstance(body, dict):
            error(400, "We could not parse the JSON body of your request.")
            return
        if route == "count_tokens":
            chars = _text_len(body.get("messages")) + _text_len(body.get("system"))
            self._send(200, _dumps({"input_tokens": max(1, _ceil4(chars))}), base_headers)
            return
        path_model = gemini.group("model") if gemini is not None else None
        if route == "gemini_count_tokens":
            n = max(1, _ceil4(_gemini_text_len(body)))
            details = [{"modality": "TEXT", "tokenCount": n}]
            counted = {"totalTokens": n, "promptTokensDetails": details}
            self._send(200, _dumps(counted), base_headers)
            return

        reply = fake._pick_reply(path_model or body.get("model"))
        if reply.delay > 0 and fake._stopping.wait(reply.delay):
            self._drop()
            return
        if reply.drop_connection:
            self._drop()
            return
        out_headers = {**base_headers, **reply.headers}
        if not 200 <= reply.status < 300:
            error(reply.status, reply.error_message, out_headers)
            return
        try:
            if route == "embeddings":
                payload = fake._embeddings_json(reply, body)
                self._send(reply.status, _dumps(payload), out_headers)
                return
            kind = "gemini" if gemini is not None else route
            turn = _Turn(reply, body, kind, path_model)
            streamed = route == "gemini_stream" if gemini is not None else body.get("stream")
            if streamed:
                self._send_sse(_SSE_BUILDERS[kind](turn), out_headers, reply.chunk_delay)
            else:
                self._send(reply.status, _dumps(_JSON_BUILDERS[kind](turn)), out_headers)
        except (OSError, ValueError):
            self.close_connection = True
        except Exception as exc:  # a bug in the fake: answer 500 rather than hang
            error(500, f"fake provider failure: {exc!r}")


# --------------------------------------------------------------------------------------
# public API


class FakeProvider:
    """A loopback HTTP server speaking the OpenAI, Anthropic and Gemini APIs, for tests and demos.

    Point ``openai.OpenAI(base_url=fake.openai_base_url)``,
    ``anthropic.Anthropic(base_url=fake.anthropic_base_url)`` or
    ``genai.Client(api_key=..., http_options=HttpOptions(base_url=fake.gemini_base_url))``
    at it. Replies are chosen in
    this order: the FIFO queue (``enqueue``), the per-model reply (``on_model``), then
    ``default_reply``. Every request is recorded in ``requests``. All methods are
    thread-safe.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        default_reply: FakeReply | None = None,
        embedding_dimensions: int = 8,
    ) -> None:
        self.host = host
        self.port = port
        self.embedding_dimensions = embedding_dimensions
        self._initial_default = default_reply or FakeReply()
        self._default_reply = self._initial_default
        self._lock = threading.Lock()
        self._queue: deque[FakeReply] = deque()
        self._by_model: dict[str, FakeReply] = {}
        self._requests: list[FakeRequest] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeProvider:
        """Bind and serve from a daemon thread; returns ``self``."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server((self.host, self.port), self)
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"FakeProvider:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection (idempotent)."""
        server = self._server
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_all_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    @property
    def running(self) -> bool:
        """Whether the server is started."""
        return self._server is not None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (the provider must be started)."""
        if self._server is None:
            raise RuntimeError("FakeProvider is not started; call start() first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """Base URL for ``openai.OpenAI(base_url=...)``: ``url + "/v1"``."""
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        """Base URL for ``anthropic.Anthropic(base_url=...)``: ``url``."""
        return self.url

    @property
    def gemini_base_url(self) -> str:
        """Base URL for ``genai.Client(http_options=HttpOptions(base_url=...))``: ``url``.

        The SDK adds the API version (``/v1beta``) and ``/models/{model}:generateContent``.
        """
        return self.url

    # -- control ------------------------------------------------------------------------

    @property
    def default_reply(self) -> FakeReply:
        """The reply used when the queue is empty and no per-model reply matches."""
        with self._lock:
            return self._default_reply

    @default_reply.setter
    def default_reply(self, reply: FakeReply) -> None:
        with self._lock:
            self._default_reply = reply

    def enqueue(self, *replies: FakeReply) -> None:
        """Queue replies for the next requests (FIFO, whatever the endpoint)."""
        with self._lock:
            self._queue.extend(replies)

    def on_model(self, model: str, reply: FakeReply) -> None:
        """Answer every request naming ``model`` with ``reply`` (when the queue is empty)."""
        with self._lock:
            self._by_model[model] = reply

    def reset(self) -> None:
        """Clear the queue, per-model replies and recorded requests; restore the default."""
        with self._lock:
            self._queue.clear()
            self._by_model.clear()
            self._requests.clear()
            self._default_reply = self._initial_default

    @property
    def pending(self) -> int:
        """How many queued replies are still unused."""
        with self._lock:
            return len(self._queue)

    @property
    def requests(self) -> list[FakeRequest]:
        """A snapshot of the requests received so far (health checks excluded)."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        """How many requests were received (health checks excluded)."""
        with self._lock:
            return len(self._requests)

    @property
    def last_request(self) -> FakeRequest | None:
        """The most recent request, or ``None``."""
        with self._lock:
            return self._requests[-1] if self._requests else None

    # -- internals ----------------------------------------------------------------------

    def _record(self, request: FakeRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _pick_reply(self, model: Any) -> FakeReply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            if isinstance(model, str) and model in self._by_model:
                return self._by_model[model]
            return self._default_reply

    def _embeddings_json(self, reply: FakeReply, body: dict[str, Any]) -> dict[str, Any]:
        dims = body.get("dimensions")
        if not isinstance(dims, int) or dims <= 0:
            dims = self.embedding_dimensions
        b64 = body.get("encoding_format") == "base64"
        data = []
        total = 0
        for index, (seed, tokens) in enumerate(_embedding_inputs(body.get("input"))):
            total += tokens
            vec = _embedding_vector(seed, dims)
            emb: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if b64 else vec
            data.append({"object": "embedding", "index": index, "embedding": emb})
        prompt = reply.input_tokens if reply.input_tokens is not None else max(1, total)
        return {
            "object": "list",
            "data": data,
            "model": reply.served_model or body.get("model") or "fake-embedding",
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }


def main(argv: list[str] | None = None) -> int:
    """Serve a fake provider until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m fluxgate_django.testing.fake_provider",
        description="Fake OpenAI/Anthropic/Gemini API server for tests and demos.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--text", default=DEFAULT_TEXT, help="reply text")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between SSE events")
    args = parser.parse_args(argv)
    reply = FakeReply(text=args.text, delay=args.delay, chunk_delay=args.chunk_delay)

    def _on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # Before announcing the URL: a caller may send SIGTERM as soon as it has read it.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_term)
    fake = FakeProvider(args.host, args.port, default_reply=reply).start()
    print(f"Fake LLM provider listening on {fake.url}", flush=True)
    print(f"  OpenAI base_url:    {fake.openai_base_url}", flush=True)
    print(f"  Anthropic base_url: {fake.anthropic_base_url}", flush=True)
    print(f"  Gemini base_url:    {fake.gemini_base_url}", flush=True)
    print("Press Ctrl-C to stop.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
