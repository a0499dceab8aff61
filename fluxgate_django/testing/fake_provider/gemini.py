"""The Gemini wire format: ``generateContent`` as a JSON body and ``streamGenerateContent``
as ``alt=sse`` chunks; ``usageMetadata``, finish / block reasons, ``countTokens`` and
Google's error bodies.

``promptTokenCount`` *includes* ``cachedContentTokenCount``, and ``candidatesTokenCount``
*excludes* ``thoughtsTokenCount`` (``FakeReply.output_tokens`` → candidates,
``reasoning_tokens`` → thoughts). Zero counts are left out, as Gemini does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .turn import _ceil4, _gemini_text_len, _Turn
from .wire import _DEFAULT_MESSAGES, _data, _new_id, _split_text

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


def _gemini_finish(t: _Turn) -> str:
    """``FinishReason`` name, or ``BLOCKED[:reason]`` for a blocked prompt."""
    finish = t.finish
    if finish is None:
        return "STOP"
    return _GEMINI_FINISH.get(finish, finish.upper())


def _gemini_usage(t: _Turn, candidates: int | None) -> dict[str, Any]:
    """``usageMetadata``; ``candidates=None`` for a blocked prompt (nothing generated)."""
    usage: dict[str, Any] = {"promptTokenCount": t.input_tokens}
    total = t.input_tokens
    if candidates is not None:
        usage["candidatesTokenCount"] = candidates
        total += candidates
        if t.reasoning:
            usage["thoughtsTokenCount"] = t.reasoning
            total += t.reasoning
    if t.cached:
        usage["cachedContentTokenCount"] = t.cached
    usage["totalTokenCount"] = total
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": t.input_tokens}]
    if t.cached:
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": t.cached}]
    return usage


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
        "usageMetadata": _gemini_usage(t, candidates),
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
        "usageMetadata": _gemini_usage(t, None),
        "modelVersion": t.model,
        "responseId": response_id,
    }


def _gemini_json(t: _Turn) -> dict[str, Any]:
    finish = _gemini_finish(t)
    response_id = _new_id("")
    blocked = _gemini_blocked(finish)
    if blocked is not None:
        return _gemini_blocked_reply(t, blocked, response_id)
    text = None if finish in _GEMINI_WITHHELD else t.text
    return _gemini_chunk(t, response_id, text, finish, t.output_tokens)


def _gemini_sse(t: _Turn) -> Iterator[bytes]:
    """``alt=sse`` chunks; each carries the running ``usageMetadata``, the last the final one."""
    finish = _gemini_finish(t)
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


def _count_tokens_json(body: dict[str, Any]) -> dict[str, Any]:
    """The reply to ``POST .../models/{model}:countTokens``."""
    n = max(1, _ceil4(_gemini_text_len(body)))
    details = [{"modality": "TEXT", "tokenCount": n}]
    return {"totalTokens": n, "promptTokensDetails": details}


def _google_error(status: int, message: str | None) -> dict[str, Any]:
    default = "INTERNAL" if status >= 500 else "FAILED_PRECONDITION"
    msg = message or _DEFAULT_MESSAGES.get(status) or f"Fake provider error {status}."
    status_name = _GOOGLE_ERRORS.get(status, default)
    return {"error": {"code": status, "message": msg, "status": status_name}}
