"""Per-request computation: the served model, text, finish reason and token counts of one
reply to one request (each wire format renders a :class:`_Turn` its own way)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .replies import FakeReply


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


def _gemini_text_len(body: dict[str, Any]) -> int:
    """Characters of text in a Gemini request's ``contents`` and ``systemInstruction``."""
    contents = body.get("contents")
    blocks = [*(contents if isinstance(contents, list) else ()), body.get("systemInstruction")]
    return sum(_text_len(block.get("parts")) for block in blocks if isinstance(block, dict))


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
