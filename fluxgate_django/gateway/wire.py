"""The gateway's wire: upstream JSON read through the tracked clients' usage readers, and
server-sent events split into the provider's own frames.

The usage readers of ``tracking/openai.py`` and ``tracking/anthropic.py`` read SDK model
objects by attribute; :class:`JsonView` shows a decoded JSON object the same way (a field
the JSON leaves out reads as None, as an SDK model's unset field does), so the gateway
reads usage, served model and finish reason with the very same code, at a fraction of
the cost of building the SDK's models for every stream chunk.

:func:`sse_events` splits an upstream event stream into its events without re-encoding
them: each :class:`SseEvent` keeps the bytes the provider sent, forwarded as they are.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

_SEPARATORS = (b"\n\n", b"\r\n\r\n")


class JsonView:
    """A decoded JSON object read by attribute: ``view.usage.prompt_tokens``."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return as_view(self._data.get(name))

    def model_dump(self, **_: Any) -> dict[str, Any]:
        """The JSON itself (what ``STORE_CONTENT`` keeps of a response)."""
        return self._data


def as_view(value: Any) -> Any:
    """``value`` with its JSON objects (also inside lists) shown as :class:`JsonView`."""
    if value.__class__ is dict:
        return JsonView(value)
    if value.__class__ is list:
        return [as_view(item) for item in value]
    return value


class SseEvent(JsonView):
    """One server-sent event: its bytes as sent (``raw``, the blank line included), its
    ``event:`` name, and its ``data:`` JSON (``data``: None for ``[DONE]`` or anything
    that is not a JSON object), whose fields read by attribute."""

    __slots__ = ("data", "event", "raw")

    def __init__(self, raw: bytes, event: str, data: dict[str, Any] | None) -> None:
        super().__init__(data if data is not None else {})
        self.raw = raw
        self.event = event
        self.data = data


def parse_event(raw: bytes) -> SseEvent:
    """An :class:`SseEvent` of one event's bytes."""
    name = ""
    lines: list[bytes] = []
    for line in raw.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(b" ") else value)
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
    data: Any = None
    payload = b"\n".join(lines)
    if payload and payload != b"[DONE]":
        try:
            data = json.loads(payload)
        except ValueError:
            data = None
    return SseEvent(raw, name, data if isinstance(data, dict) else None)


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[SseEvent]:
    """The events of an SSE body arriving as ``chunks`` (any split), in order; a last
    event without its blank line is given as it came."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        start = 0
        while True:
            end, width = _next_boundary(buffer, start)
            if end < 0:
                break
            yield parse_event(buffer[start : end + width])
            start = end + width
        buffer = buffer[start:]
    if buffer.strip():
        yield parse_event(buffer)


def _next_boundary(buffer: bytes, start: int) -> tuple[int, int]:
    """(index, width) of the first blank line at or after ``start``; (-1, 0) if none."""
    found, width = -1, 0
    for separator in _SEPARATORS:
        index = buffer.find(separator, start)
        if index >= 0 and (found < 0 or index < found):
            found, width = index, len(separator)
    return found, width


def sse_data(payload: dict[str, Any]) -> bytes:
    """A ``data:`` event (OpenAI's format), for a stream FluxGate writes itself."""
    return b"data: " + _dumps(payload) + b"\n\n"


def sse_named(name: str, payload: dict[str, Any]) -> bytes:
    """A named event (Anthropic's format), for a stream FluxGate writes itself."""
    return b"event: " + name.encode() + b"\ndata: " + _dumps(payload) + b"\n\n"


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
