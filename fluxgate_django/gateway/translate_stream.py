"""Streamed protocol translation, and the pieces shared with :mod:`.translate`.

The mapping is documented in :mod:`fluxgate_django.gateway.translate` (import everything
from there: it re-exports this module's public names). This module holds what both
directions share: :class:`Untranslatable`, the stop/finish reason and usage conversions,
the error objects, and the two stream translators:

* :class:`AnthropicToOpenAIStream` — Anthropic Messages SSE events in, OpenAI
  ``chat.completion.chunk`` dicts out (the gateway writes each as ``data: {json}`` and
  ends with ``data: [DONE]``).
* :class:`OpenAIToAnthropicStream` — OpenAI chunks (the parsed JSON of each ``data:``
  line, ``[DONE]`` excluded) in, ``(event name, data)`` pairs out (the gateway writes
  ``event: NAME`` / ``data: {json}``).

Call ``feed`` for each upstream event and ``finish()`` once the upstream stream has ended;
``finish()`` returns nothing more when the upstream stream stopped before its end (no
``message_stop`` / no ``finish_reason``): the translated stream is left unfinished, as the
upstream one was, and the gateway reports the failure. Pure standard library: no Django,
no I/O.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

__all__ = ["AnthropicToOpenAIStream", "OpenAIToAnthropicStream", "Untranslatable"]


class Untranslatable(ValueError):
    """A request (or response) uses a feature the other protocol cannot express faithfully.

    Raised before anything is sent; ``feature`` names what could not be translated.
    """

    def __init__(self, feature: str, detail: str | None = None) -> None:
        self.feature = feature
        self.detail = detail
        message = f"cannot translate {feature}"
        super().__init__(f"{message}: {detail}" if detail else message)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def guarded(what: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Make a body of the wrong shape (a string where an object belongs...) an
    :class:`Untranslatable` naming ``what``, rather than a ``TypeError`` deep inside."""

    def decorate(function: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(function)
        def translate(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return function(*args, **kwargs)
            except (AttributeError, IndexError, KeyError, TypeError) as exc:
                detail = f"{type(exc).__name__}: {exc}"
                raise Untranslatable(f"a malformed {what}", detail) from exc

        return translate

    return decorate


# -- stop / finish reasons -------------------------------------------------------------------

ANTHROPIC_STOP_TO_OPENAI: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
OPENAI_FINISH_TO_ANTHROPIC: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def openai_finish(stop_reason: Any) -> str:
    """The OpenAI ``finish_reason`` for an Anthropic ``stop_reason`` (``None``: ``stop``)."""
    return ANTHROPIC_STOP_TO_OPENAI.get(stop_reason, "stop") if stop_reason else "stop"


def anthropic_stop(finish_reason: Any, *, refused: bool = False) -> str:
    """The Anthropic ``stop_reason`` for an OpenAI ``finish_reason`` (a refusal: ``refusal``)."""
    if refused:
        return "refusal"
    if not finish_reason:
        return "end_turn"
    return OPENAI_FINISH_TO_ANTHROPIC.get(finish_reason, "end_turn")


# -- usage -------------------------------------------------------------------------------------


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def anthropic_usage_to_openai(usage: dict[str, Any] | None) -> dict[str, Any]:
    """Anthropic usage as OpenAI chat usage.

    Anthropic's ``input_tokens`` *exclude* cache reads and writes; OpenAI's
    ``prompt_tokens`` *include* them, with ``cached_tokens`` / ``cache_write_tokens`` as
    subsets: ``prompt_tokens = input + cache_read + cache_creation``.
    """
    usage = usage or {}
    uncached = _count(usage.get("input_tokens"))
    read = _count(usage.get("cache_read_input_tokens"))
    write = _count(usage.get("cache_creation_input_tokens"))
    output = _count(usage.get("output_tokens"))
    prompt = uncached + read + write
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": write},
    }
    details = usage.get("output_tokens_details")
    if isinstance(details, dict) and "thinking_tokens" in details:
        out["completion_tokens_details"] = {"reasoning_tokens": _count(details["thinking_tokens"])}
    return out


def openai_usage_to_anthropic(usage: dict[str, Any] | None) -> dict[str, Any]:
    """OpenAI chat usage as Anthropic usage: ``input_tokens = prompt - cached - cache_write``."""
    usage = usage or {}
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    read = _count(details.get("cached_tokens"))
    write = _count(details.get("cache_write_tokens"))
    out: dict[str, Any] = {
        "input_tokens": max(0, _count(usage.get("prompt_tokens")) - read - write),
        "output_tokens": _count(usage.get("completion_tokens")),
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": write,
    }
    output_details = usage.get("completion_tokens_details")
    if isinstance(output_details, dict) and _count(output_details.get("reasoning_tokens")):
        out["output_tokens_details"] = {
            "thinking_tokens": _count(output_details["reasoning_tokens"])
        }
    return out


# -- error objects -----------------------------------------------------------------------------

#: Anthropic error ``type`` by HTTP status (only types the Anthropic SDK knows).
ANTHROPIC_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
#: OpenAI error (``type``, ``code``) by HTTP status.
OPENAI_ERROR_TYPES: dict[int, tuple[str, str | None]] = {
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    429: ("requests", "rate_limit_exceeded"),
}


def anthropic_error_type(status: int) -> str:
    default = "api_error" if status >= 500 else "invalid_request_error"
    return ANTHROPIC_ERROR_TYPES.get(status, default)


def openai_error_object(status: int, message: str, source_type: str | None) -> dict[str, Any]:
    """The ``error`` object of an OpenAI error body (``code``: OpenAI's conventional code for
    the status, else the other provider's error type)."""
    default = ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    err_type, code = OPENAI_ERROR_TYPES.get(status, default)
    return {"message": message, "type": err_type, "param": None, "code": code or source_type}


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}


# -- streams -------------------------------------------------------------------------------------


class AnthropicToOpenAIStream:
    """Anthropic Messages SSE events → OpenAI ``chat.completion.chunk`` dicts.

    ``message_start`` gives the role chunk, text deltas content chunks, each ``tool_use``
    block a ``tool_calls`` delta (``index``, ``id``, ``function.name``) then one per
    ``input_json_delta`` fragment, ``message_delta`` the ``finish_reason`` chunk and, with
    ``include_usage``, ``message_stop`` the usage chunk (``choices == []``; every other chunk
    then carries ``"usage": null``, as OpenAI's do). ``thinking`` blocks are dropped;
    ``ping`` gives nothing; an ``error`` event gives OpenAI's in-stream error object
    (``{"error": {...}}``, which the OpenAI SDK raises as ``APIError``).
    """

    def __init__(self, *, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.id = "chatcmpl-gateway"
        self.created = int(time.time())
        #: Anthropic usage so far (message_start, overwritten by message_delta's totals).
        self.usage: dict[str, Any] = {}
        self.finish_reason: str | None = None
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool call index
        self._skipped: set[int] = set()  # thinking blocks
        self._finished = False  # the finish_reason chunk was sent
        self._done = False  # the usage chunk (if any) was sent

    def _chunk(self, delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
        choices = [] if delta is None else [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        ]
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _tool_delta(self, index: int, **fields: Any) -> dict[str, Any]:
        return self._chunk({"tool_calls": [{"index": index, **fields}]})

    def _take_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.usage.update({k: v for k, v in usage.items() if v is not None})

    @guarded("stream event")
    def feed(self, event: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        kind = data.get("type") or event
        if kind == "message_start":
            message = data.get("message") or {}
            self.id = message.get("id") or self.id
            self._take_usage(message.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(int(data.get("index", 0)), data.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(int(data.get("index", 0)), data.get("delta") or {})
        if kind == "message_delta":
            delta = data.get("delta") or {}
            self._take_usage(data.get("usage"))
            if delta.get("stop_reason"):
                self.finish_reason = openai_finish(delta["stop_reason"])
            return self._finish_chunk()
        if kind == "message_stop":
            out = self._finish_chunk()
            return out + self._usage_chunk()
        if kind == "error":
            error = data.get("error") or {}
            status = next(
                (s for s, t in ANTHROPIC_ERROR_TYPES.items() if t == error.get("type")), 500
            )
            status = 503 if status == 529 else status
            message = str(error.get("message") or "upstream stream error")
            return [{"error": openai_error_object(status, message, error.get("type"))}]
        return []  # ping, content_block_stop, anything new and empty

    def _block_start(self, index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
        kind = block.get("type")
        if kind == "text":
            text = block.get("text") or ""
            return [self._chunk({"content": text})] if text else []
        if kind == "tool_use":
            tool_index = len(self._tools)
            self._tools[index] = tool_index
            function = {"name": block.get("name") or "", "arguments": ""}
            start = {"id": block.get("id"), "type": "function", "function": function}
            out = [self._tool_delta(tool_index, **start)]
            if block.get("input"):  # (normally {} with the input streamed as deltas)
                arguments = json.dumps(block["input"], ensure_ascii=False)
                out.append(self._tool_delta(tool_index, function={"arguments": arguments}))
            return out
        if kind in ("thinking", "redacted_thinking"):
            self._skipped.add(index)
            return []
        raise Untranslatable(f"{kind!r} content blocks", "OpenAI chat has no equivalent")

    def _block_delta(self, index: int, delta: dict[str, Any]) -> list[dict[str, Any]]:
        kind = delta.get("type")
        if index in self._skipped or kind in ("thinking_delta", "signature_delta"):
            return []
        if kind == "text_delta":
            text = delta.get("text") or ""
            return [self._chunk({"content": text})] if text else []
        if kind == "input_json_delta":
            fragment = delta.get("partial_json") or ""
            if not fragment or index not in self._tools:
                return []
            return [self._tool_delta(self._tools[index], function={"arguments": fragment})]
        if kind == "citations_delta":
            return []
        raise Untranslatable(f"{kind!r} stream deltas", "OpenAI chat has no equivalent")

    def _finish_chunk(self) -> list[dict[str, Any]]:
        if self._finished:
            return []
        self._finished = True
        return [self._chunk({}, self.finish_reason or "stop")]

    def _usage_chunk(self) -> list[dict[str, Any]]:
        if self._done:
            return []
        self._done = True
        if not self.include_usage:
            return []
        chunk = self._chunk(None)
        chunk["usage"] = anthropic_usage_to_openai(self.usage)
        return [chunk]

    def finish(self) -> list[dict[str, Any]]:
        """What is still owed once the upstream stream has ended (the usage chunk when the
        stream ended after its ``message_delta`` but without ``message_stop``)."""
        return self._usage_chunk() if self._finished else []


class _ToolCall:
    __slots__ = ("block", "buffered", "id", "name")

    def __init__(self) -> None:
        self.id: str | None = None
        self.name: str | None = None
        self.buffered = ""
        self.block: int | None = None  # its Anthropic content block index, once started


class OpenAIToAnthropicStream:
    """OpenAI ``chat.completion.chunk`` dicts → Anthropic Messages SSE ``(event, data)``.

    The first chunk gives ``message_start`` (its usage is zero: OpenAI reports usage only at
    the end, so the real input and cache counts come in ``message_delta.usage``, which the
    Anthropic SDK's accumulator reads). Content deltas become a ``text`` block, each tool
    call a ``tool_use`` block (started once its id and name are known) with its argument
    fragments as ``input_json_delta``; ``finish_reason`` closes the open block; the usage
    chunk (or :meth:`finish`, without one) gives ``message_delta`` then ``message_stop``.
    An in-stream ``{"error": ...}`` gives an Anthropic ``error`` event.
    """

    def __init__(self, *, model: str) -> None:
        self.model = model
        self.id = "msg_gateway"
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self._started = False
        self._stopped = False
        self._refused = False
        self._index = -1  # the last Anthropic content block started
        self._open: tuple[str, int] | None = None  # ("text", -1) or ("tool", tool index)
        self._tools: dict[int, _ToolCall] = {}

    @guarded("stream chunk")
    def feed(self, chunk: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        error = chunk.get("error")
        if self._stopped and not error:
            return []
        if error:
            message = error.get("message") if isinstance(error, dict) else str(error)
            return [("error", anthropic_error_body(500, str(message or "upstream error")))]
        out: list[tuple[str, dict[str, Any]]] = []
        if not self._started:
            self._started = True
            self.id = chunk.get("id") or self.id
            message = {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }
            out.append(("message_start", {"type": "message_start", "message": message}))
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                raise Untranslatable("n>1 choices", "Anthropic returns one message")
            out.extend(self._delta(choice.get("delta") or {}))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
                out.extend(self._flush_tools())
                out.extend(self._close())
        if self.finish_reason and self.usage is not None:
            out.extend(self._stop())
        return out

    def _delta(self, delta: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        if delta.get("audio") or delta.get("function_call"):
            raise Untranslatable("audio" if delta.get("audio") else "legacy function_call")
        out: list[tuple[str, dict[str, Any]]] = []
        if delta.get("content"):
            out.extend(self._text(delta["content"]))
        if delta.get("refusal"):
            self._refused = True
            out.extend(self._text(delta["refusal"]))
        for call in delta.get("tool_calls") or ():
            out.extend(self._tool(call))
        return out

    def _start(
        self, block: dict[str, Any], opened: tuple[str, int]
    ) -> list[tuple[str, dict[str, Any]]]:
        out = self._close()
        self._index += 1
        self._open = opened
        data = {"type": "content_block_start", "index": self._index, "content_block": block}
        out.append(("content_block_start", data))
        return out

    def _close(self) -> list[tuple[str, dict[str, Any]]]:
        if self._open is None:
            return []
        self._open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def _block_delta(self, delta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        data = {"type": "content_block_delta", "index": self._index, "delta": delta}
        return ("content_block_delta", data)

    def _text(self, text: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        if self._open != ("text", -1):
            out = self._start({"type": "text", "text": ""}, ("text", -1))
        out.append(self._block_delta({"type": "text_delta", "text": text}))
        return out

    def _tool(self, call: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        if call.get("type") not in (None, "function"):
            raise Untranslatable(f"{call.get('type')!r} tool calls")
        index = int(call.get("index", 0))
        state = self._tools.setdefault(index, _ToolCall())
        state.id = state.id or call.get("id")
        function = call.get("function") or {}
        state.name = state.name or function.get("name")
        fragment = function.get("arguments") or ""
        if state.block is None:
            state.buffered += fragment
            return self._start_tool(index, state) if state.id and state.name else []
        if not fragment:
            return []
        if self._open != ("tool", index):
            raise Untranslatable("interleaved tool call argument streams")
        return [self._block_delta({"type": "input_json_delta", "partial_json": fragment})]

    def _start_tool(self, index: int, state: _ToolCall) -> list[tuple[str, dict[str, Any]]]:
        block = {
            "type": "tool_use",
            "id": state.id or f"toolu_{self.id}_{index}",
            "name": state.name or "",
            "input": {},
        }
        out = self._start(block, ("tool", index))
        state.block = self._index
        if state.buffered:
            delta = {"type": "input_json_delta", "partial_json": state.buffered}
            out.append(self._block_delta(delta))
            state.buffered = ""
        return out

    def _flush_tools(self) -> list[tuple[str, dict[str, Any]]]:
        """Start tool calls still waiting for their id (a server that never sent one)."""
        out: list[tuple[str, dict[str, Any]]] = []
        for index, state in sorted(self._tools.items()):
            if state.block is None and state.name:
                out.extend(self._start_tool(index, state))
        return out

    def _stop(self) -> list[tuple[str, dict[str, Any]]]:
        self._stopped = True
        out = self._close()
        delta = {
            "stop_reason": anthropic_stop(self.finish_reason, refused=self._refused),
            "stop_sequence": None,
        }
        usage = openai_usage_to_anthropic(self.usage)
        out.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        out.append(("message_stop", {"type": "message_stop"}))
        return out

    def finish(self) -> list[tuple[str, dict[str, Any]]]:
        """The closing events once the upstream stream has ended: ``message_delta`` (usage
        zero if the upstream sent none) and ``message_stop``; nothing if the upstream never
        sent a ``finish_reason`` (it stopped early)."""
        if self._stopped or not self.finish_reason:
            return []
        return self._stop()
