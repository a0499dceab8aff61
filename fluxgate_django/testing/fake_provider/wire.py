"""Encoding shared by the wire formats: JSON, SSE framing, ids, text deltas, error texts."""

from __future__ import annotations

import json
import uuid
from typing import Any

_JSON_CT = "application/json"
_SSE_CT = "text/event-stream; charset=utf-8"

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


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _data(obj: dict[str, Any], end: bytes = b"\n\n") -> bytes:
    """An SSE ``data:`` event."""
    return b"data: " + _dumps(obj) + end


def _event(name: str, obj: dict[str, Any]) -> bytes:
    """A named SSE event (``event:`` then ``data:``)."""
    return b"event: " + name.encode("ascii") + b"\ndata: " + _dumps(obj) + b"\n\n"


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


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
