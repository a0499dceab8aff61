"""Protocol translation for cross-protocol fallback: OpenAI Chat Completions ⇄ Anthropic Messages.

When a gateway route falls back across protocols (an OpenAI ``chat/completions`` request
served by Claude, or an Anthropic ``messages`` request served by an OpenAI model), the
request is translated before it is sent, and the response, stream and error translated back.
A request that cannot be expressed faithfully raises :class:`Untranslatable` (its
``feature`` names what) *before anything is sent*: nothing is dropped or approximated
silently. ``model`` is the model to put in a translated request, or the name the caller
asked for to put in a translated response. Pure: standard library only, no Django, no I/O.

Requests
========

==============================================  ===============================================
OpenAI ``chat/completions``                     Anthropic ``messages``
==============================================  ===============================================
leading ``system`` / ``developer`` messages     ``system`` (a string for one text, else text
                                                blocks: one per message / text part)
``system`` / ``developer`` after the first      a ``{"role": "system"}`` message in place (for
turn                                            models that take mid-conversation system
                                                messages)
``user`` text / text parts                      ``user`` text blocks
``image_url`` ``data:image/...;base64,...``     ``image`` block, ``base64`` source (jpeg, png,
                                                gif, webp); ``detail`` is dropped
``image_url`` ``http(s)://...``                 ``image`` block, ``url`` source
``assistant`` content / ``refusal``             ``assistant`` text blocks
``assistant.tool_calls`` (arguments: a JSON     ``tool_use`` blocks (``input``: an object; ids
string)                                         kept)
``tool`` messages (``tool_call_id``)            ``tool_result`` blocks; consecutive results (and
                                                a user message after them) merged into one
                                                user turn
``tools`` ``{type: function, function: {name,   ``tools`` ``{name, description, input_schema,
description, parameters, strict}}``             strict}`` (no parameters: an empty object
                                                schema)
``tool_choice`` auto / none / required /        ``tool_choice`` auto / none / any /
``{type: function, function: {name}}``          ``{type: tool, name}``
``parallel_tool_calls: false``                  ``tool_choice.disable_parallel_tool_use: true``
``max_completion_tokens``, else ``max_tokens``  ``max_tokens`` (required by Anthropic; absent:
                                                :data:`DEFAULT_MAX_TOKENS` = 4096, an output
                                                size every Claude model supports)
``temperature`` (0 to 1), ``top_p``             ``temperature``, ``top_p``
``stop`` (a string or a list)                   ``stop_sequences``
``user`` (else ``safety_identifier``)           ``metadata.user_id``
``stream``                                      ``stream``
``response_format`` ``json_schema``             ``output_config.format`` ``json_schema``
``response_format`` ``text``                    (nothing)
==============================================  ===============================================

``temperature`` and ``top_p`` are sent as they are although Anthropic's current API version
(``2026-10-21``, the SDK's) has no sampling parameters: they exist under
``anthropic-version: 2023-06-01`` (the gateway's default), and a model that refuses them
(Opus 4.7 and later) answers 400, so the setting is never lost silently.

Anthropic → OpenAI is the same table read right to left, plus: ``system`` becomes one
leading ``system`` message; a user turn's ``tool_result`` blocks become ``tool`` messages
placed before the rest of that turn (OpenAI wants them right after the tool calls);
``tool_result.is_error: true`` prefixes the tool message text with ``Error: `` (OpenAI has
no error flag); ``tool_use`` input is sent as a JSON string; ``max_tokens`` becomes
``max_completion_tokens``; ``stream: true`` also sets ``stream_options.include_usage`` so
the translated stream can report usage; ``output_config.format`` becomes a strict
``json_schema`` named ``response``.

Dropped because they change neither the output nor its meaning: OpenAI ``store``,
``metadata`` (stored-completion tags), ``service_tier``, ``prompt_cache_key``,
``prompt_cache_options``, ``prompt_cache_retention``, ``seed`` (best effort only),
``prediction`` (a latency hint), ``stream_options``, image ``detail``; Anthropic
``cache_control`` (OpenAI caches automatically), ``service_tier``, ``speed``,
``diagnostics``, ``workspace_id``. Both ``developer`` and ``system`` become ``system``.
Inside messages and blocks only the fields in the tables are read: block-level
``cache_control`` and the like are not carried over.

Refused (:class:`Untranslatable`): OpenAI ``n`` > 1, ``logprobs`` / ``top_logprobs``,
audio (``audio``, ``modalities`` with audio, ``input_audio`` parts, assistant audio),
``file`` parts (documents / PDF), unknown content part types, a message ``name``,
``temperature`` > 1, non-zero ``frequency_penalty`` / ``presence_penalty``, ``logit_bias``,
``reasoning_effort``, ``verbosity``, ``web_search_options``, ``moderation``, legacy
``functions`` / ``function_call`` / ``function`` messages, custom and ``allowed_tools`` tool
choices, non-function tools, ``response_format`` ``json_object`` (no faithful Anthropic
equivalent) and a ``json_schema`` with a ``description``, tool call arguments that are not a
JSON object, a final assistant message (a prefill in Anthropic, a finished turn in OpenAI),
image types Anthropic does not take. Anthropic ``thinking`` (enabled / adaptive) and
``thinking`` / ``redacted_thinking`` blocks, ``top_k``, ``document`` / ``search_result`` /
server-tool blocks, server tools (``web_search_*``, ``bash_*``...), tool
``defer_loading`` / ``input_examples`` / ``allowed_callers``, images from a ``file``
source or inside a ``tool_result``, ``citations``, ``output_config.effort``, ``container``,
``mcp_servers``, ``context_management``, ``inference_geo``, ``user_profile_id``, more than 4
``stop_sequences`` (OpenAI's limit), a final assistant message (prefill). Any other
unknown request key is refused too, and so is a body of the wrong shape (a malformed request
or response: ``Untranslatable("a malformed request body")``, never a ``TypeError``).

Responses
=========

=============================================  ===============================================
Anthropic ``message``                          OpenAI ``chat.completion``
=============================================  ===============================================
``id``                                         ``id`` (kept as is)
``model``                                      ``model`` (the name the caller asked for)
``text`` blocks                                ``message.content`` (joined; ``None`` if none)
``tool_use`` blocks                            ``message.tool_calls`` (``arguments`` JSON text)
``thinking`` / ``redacted_thinking`` blocks    dropped (chat completions do not return
                                               reasoning)
``stop_reason`` end_turn / stop_sequence /     ``finish_reason`` stop
pause_turn
max_tokens / model_context_window_exceeded     length
tool_use                                       tool_calls
refusal                                        content_filter
``usage.input_tokens`` (uncached)              ``prompt_tokens`` = input + cache read + cache
                                               write (OpenAI counts include cached tokens)
``cache_read_input_tokens``                    ``prompt_tokens_details.cached_tokens``
``cache_creation_input_tokens``                ``prompt_tokens_details.cache_write_tokens``
``output_tokens``                              ``completion_tokens``
``output_tokens_details.thinking_tokens``      ``completion_tokens_details.reasoning_tokens``
=============================================  ===============================================

OpenAI → Anthropic reverses it: ``input_tokens = prompt_tokens - cached - cache_write``;
``stop`` → ``end_turn`` (OpenAI does not say whether a stop sequence matched, so
``stop_sequence`` is never reported), ``function_call`` → ``tool_use``, a ``refusal`` →
a text block and ``stop_reason: refusal``. More than one choice, audio, custom tool calls
and unparsable tool arguments raise :class:`Untranslatable`.

Streams (:class:`AnthropicToOpenAIStream`, :class:`OpenAIToAnthropicStream`, in
:mod:`.translate_stream`) map the same events incrementally: Anthropic ``message_start`` ⇄ the
role chunk, ``text_delta`` ⇄ content deltas, ``tool_use`` start + ``input_json_delta`` ⇄
``tool_calls`` deltas (``index``, ``id``, ``function.name`` then argument fragments),
``message_delta`` (stop reason, cumulative usage) ⇄ the ``finish_reason`` chunk and the final
usage chunk (``choices == []``, sent only with ``include_usage``), ``message_stop`` ⇄
``[DONE]``, ``ping`` → nothing, ``error`` ⇄ an in-stream ``{"error": ...}``.

Errors
======

:func:`error_to_openai` / :func:`error_to_anthropic` turn an upstream error body in one
provider's format (or any other body: an HTML page from a proxy becomes the message) into
the other's, keeping the message. The status is kept, except Anthropic's non-standard 529
(overloaded) which becomes 503. Error types follow the status: Anthropic
``invalid_request_error`` (400 and other 4xx), ``authentication_error`` 401,
``billing_error`` 402, ``permission_error`` 403, ``not_found_error`` 404,
``timeout_error`` 408/504, ``rate_limit_error`` 429, ``overloaded_error`` 529, ``api_error``
(other 5xx); OpenAI ``invalid_request_error`` (4xx; 401 with code ``invalid_api_key``),
``permission_error`` 403, ``requests`` / ``rate_limit_exceeded`` 429, ``server_error`` (5xx),
with the Anthropic error type as ``code`` where OpenAI has no conventional one.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .translate_stream import (
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    Untranslatable,
    anthropic_error_body,
    anthropic_stop,
    anthropic_usage_to_openai,
    guarded,
    openai_error_object,
    openai_finish,
    openai_usage_to_anthropic,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "AnthropicToOpenAIStream",
    "OpenAIToAnthropicStream",
    "Untranslatable",
    "anthropic_message_to_openai_chat",
    "anthropic_to_openai_chat",
    "error_to_anthropic",
    "error_to_openai",
    "openai_chat_to_anthropic",
    "openai_chat_to_anthropic_message",
]

#: ``max_tokens`` sent to Anthropic when an OpenAI request sets no output limit (Anthropic
#: requires one; OpenAI's default is "up to the model's limit"). 4096 is an output size every
#: Claude model supports.
DEFAULT_MAX_TOKENS = 4096

_IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
_OPENAI_DROPPED = {
    "model", "store", "metadata", "service_tier", "prompt_cache_key", "prompt_cache_options",
    "prompt_cache_retention", "seed", "prediction", "stream_options",
}  # fmt: skip
_OPENAI_HANDLED = {
    "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
    "user", "safety_identifier", "stream", "tools", "tool_choice", "parallel_tool_calls",
    "response_format", "n", "logprobs", "top_logprobs", "frequency_penalty",
    "presence_penalty", "modalities",
}  # fmt: skip
#: OpenAI parameters refused unless they are absent / null (or empty).
_OPENAI_REFUSED = (
    "audio", "logit_bias", "reasoning_effort", "verbosity", "web_search_options",
    "moderation", "functions", "function_call",
)  # fmt: skip
_ANTHROPIC_DROPPED = {
    "model", "cache_control", "service_tier", "speed", "diagnostics", "workspace_id",
}  # fmt: skip
_ANTHROPIC_HANDLED = {
    "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
    "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "output_config",
}  # fmt: skip
_ANTHROPIC_REFUSED = (
    "container", "mcp_servers", "context_management", "inference_geo", "user_profile_id",
)
_ANTHROPIC_TOOL_KEYS = {"name", "description", "input_schema", "type", "cache_control", "strict",
                        "eager_input_streaming"}  # fmt: skip


def _refuse_unknown(body: dict[str, Any], known: set[str], refused: tuple[str, ...]) -> None:
    for key, value in body.items():
        if key in refused:
            if value not in (None, [], {}):
                raise Untranslatable(f"the {key!r} parameter")
        elif key not in known:
            raise Untranslatable(f"the {key!r} parameter", "unknown to the translation")


def _parse_arguments(arguments: Any) -> dict[str, Any]:
    if arguments in (None, ""):
        return {}
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise Untranslatable("tool call arguments that are not a JSON object", repr(arguments))
    return value


# -- OpenAI request -> Anthropic request ----------------------------------------------------------


@guarded("request body")
def openai_chat_to_anthropic(body: dict[str, Any], *, model: str) -> dict[str, Any]:
    """An OpenAI ``chat/completions`` request body as an Anthropic ``messages`` body."""
    _refuse_unknown(body, _OPENAI_HANDLED | _OPENAI_DROPPED, _OPENAI_REFUSED)
    if body.get("n") not in (None, 1):
        raise Untranslatable("n>1", "Anthropic returns one message per request")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise Untranslatable("logprobs")
    for key in ("frequency_penalty", "presence_penalty"):
        if body.get(key):
            raise Untranslatable(key)
    if any(m != "text" for m in body.get("modalities") or ()):
        raise Untranslatable("audio output (modalities)")
    system, messages = _openai_messages(body.get("messages") or [])
    out: dict[str, Any] = {"model": model}
    limit = body.get("max_completion_tokens")
    limit = body.get("max_tokens") if limit is None else limit
    out["max_tokens"] = DEFAULT_MAX_TOKENS if limit is None else limit
    out["messages"] = messages
    if system:
        out["system"] = system[0]["text"] if len(system) == 1 else system
    temperature = body.get("temperature")
    if temperature is not None:
        if temperature > 1:
            raise Untranslatable("temperature above 1", "Anthropic's range is 0-1")
        out["temperature"] = temperature
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    user = body.get("user") or body.get("safety_identifier")
    if user:
        out["metadata"] = {"user_id": user}
    if body.get("stream"):
        out["stream"] = True
    tools = body.get("tools")
    if tools:
        out["tools"] = [_openai_tool(tool) for tool in tools]
    choice = _openai_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"), tools)
    if choice is not None:
        out["tool_choice"] = choice
    output_format = _openai_response_format(body.get("response_format"))
    if output_format is not None:
        out["output_config"] = {"format": output_format}
    return out


def _openai_messages(
    messages: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if message.get("name"):
            raise Untranslatable("message names", "Anthropic messages have no name")
        if role in ("system", "developer"):
            blocks = _text_blocks(message.get("content"), f"a {role} message")
            if turns:
                _append(turns, "system", blocks)
            else:
                system.extend(blocks)
        elif role == "user":
            _append(turns, "user", _user_blocks(message.get("content")))
        elif role == "assistant":
            _append(turns, "assistant", _assistant_blocks(message))
        elif role == "tool":
            _append(turns, "user", [_tool_result(message)])
        elif role == "function":
            raise Untranslatable("legacy function messages")
        else:
            raise Untranslatable(f"messages with role {role!r}")
    if turns and turns[-1]["role"] == "assistant":
        raise Untranslatable("a final assistant message", "Anthropic would continue it (prefill)")
    return system, turns


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Add a turn, merged into the previous one when it has the same role (Anthropic wants
    alternating turns); an empty message adds nothing."""
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": list(blocks)})


def _text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content:
        kind = part.get("type")
        if kind != "text":
            raise Untranslatable(f"{kind!r} content in {where}")
        if part.get("text"):
            blocks.append({"type": "text", "text": part["text"]})
    return blocks


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str) or content is None:
        return _text_blocks(content, "a user message")
    blocks: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            blocks.extend(_text_blocks([part], "a user message"))
        elif kind == "image_url":
            blocks.append(_image_block(part.get("image_url") or {}))
        elif kind == "input_audio":
            raise Untranslatable("audio input")
        elif kind == "file":
            raise Untranslatable("file (document / PDF) content parts")
        else:
            raise Untranslatable(f"{kind!r} content parts")
    return blocks


def _image_block(image_url: Any) -> dict[str, Any]:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str):
        raise Untranslatable("an image without a URL")
    if url.startswith("data:"):
        header, _, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        media_type = "image/jpeg" if media_type == "image/jpg" else media_type
        if encoding != "base64" or media_type not in _IMAGE_TYPES:
            raise Untranslatable(f"{header or 'untyped'} data URL images", "Anthropic takes "
                                 "base64 JPEG, PNG, GIF and WebP")  # fmt: skip
        source = {"type": "base64", "media_type": media_type, "data": data}
    elif url.startswith(("http://", "https://")):
        source = {"type": "url", "url": url}
    else:
        raise Untranslatable("image URLs that are neither data: nor http(s)")
    return {"type": "image", "source": source}


def _assistant_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    if message.get("audio"):
        raise Untranslatable("assistant audio")
    if message.get("function_call"):
        raise Untranslatable("legacy function_call")
    content = message.get("content")
    blocks: list[dict[str, Any]] = []
    if isinstance(content, list):
        for part in content:
            kind = part.get("type")
            if kind not in ("text", "refusal"):
                raise Untranslatable(f"{kind!r} content in an assistant message")
            text = part.get(kind)
            if text:
                blocks.append({"type": "text", "text": text})
    else:
        blocks.extend(_text_blocks(content, "an assistant message"))
    if message.get("refusal"):
        blocks.append({"type": "text", "text": message["refusal"]})
    for call in message.get("tool_calls") or ():
        if call.get("type", "function") != "function":
            raise Untranslatable(f"{call.get('type')!r} tool calls")
        function = call.get("function") or {}
        blocks.append({
            "type": "tool_use",
            "id": call.get("id"),
            "name": function.get("name"),
            "input": _parse_arguments(function.get("arguments")),
        })  # fmt: skip
    return blocks


def _tool_result(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif content:
        block["content"] = _text_blocks(content, "a tool message")
    return block


def _openai_tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise Untranslatable(f"{tool.get('type')!r} tools")
    function = tool.get("function") or {}
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    out: dict[str, Any] = {"name": function.get("name"), "input_schema": schema}
    if function.get("description"):
        out["description"] = function["description"]
    if function.get("strict"):
        out["strict"] = True
    return out


def _openai_tool_choice(choice: Any, parallel: Any, tools: Any) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice is None:
        out = {"type": "auto"} if parallel is False and tools else None
    elif choice in ("auto", "none"):
        out = {"type": choice}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        out = {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    else:
        kind = choice.get("type") if isinstance(choice, dict) else choice
        raise Untranslatable(f"tool_choice {kind!r}")
    if out is not None and parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def _openai_response_format(response_format: Any) -> dict[str, Any] | None:
    if not response_format or response_format.get("type") == "text":
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        if spec.get("description"):
            raise Untranslatable("a response_format json_schema description")
        if not isinstance(spec.get("schema"), dict):
            raise Untranslatable("a response_format json_schema without a schema")
        return {"type": "json_schema", "schema": spec["schema"]}
    raise Untranslatable(f"response_format {kind!r}", "Anthropic has no faithful equivalent")


# -- Anthropic request -> OpenAI request ----------------------------------------------------------


@guarded("request body")
def anthropic_to_openai_chat(body: dict[str, Any], *, model: str) -> dict[str, Any]:
    """An Anthropic ``messages`` request body as an OpenAI ``chat/completions`` body."""
    _refuse_unknown(body, _ANTHROPIC_HANDLED | _ANTHROPIC_DROPPED, _ANTHROPIC_REFUSED)
    thinking = body.get("thinking")
    if thinking and thinking.get("type") != "disabled":
        raise Untranslatable("thinking", "OpenAI chat completions do not expose reasoning")
    if body.get("top_k") is not None:
        raise Untranslatable("top_k")
    messages = _anthropic_system(body.get("system"))
    for message in body.get("messages") or ():
        messages.extend(_anthropic_message(message))
    if messages and messages[-1]["role"] == "assistant":
        raise Untranslatable("a final assistant message (prefill)", "OpenAI would not continue it")
    out: dict[str, Any] = {"model": model, "messages": messages}
    if body.get("max_tokens") is not None:
        out["max_completion_tokens"] = body["max_tokens"]
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    stops = body.get("stop_sequences")
    if stops:
        if len(stops) > 4:
            raise Untranslatable("more than 4 stop_sequences", "OpenAI takes at most 4")
        out["stop"] = list(stops)
    user = (body.get("metadata") or {}).get("user_id")
    if user:
        out["user"] = user
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    tools = body.get("tools")
    if tools:
        out["tools"] = [_anthropic_tool(tool) for tool in tools]
    choice = body.get("tool_choice")
    if choice:
        kind = choice.get("type")
        if kind in ("auto", "none"):
            out["tool_choice"] = kind
        elif kind == "any":
            out["tool_choice"] = "required"
        elif kind == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        else:
            raise Untranslatable(f"tool_choice {kind!r}")
        if choice.get("disable_parallel_tool_use") and tools and kind != "none":
            out["parallel_tool_calls"] = False
    config = body.get("output_config") or {}
    if config.get("effort") is not None:
        raise Untranslatable("output_config.effort")
    output_format = config.get("format")
    if output_format:
        if output_format.get("type") != "json_schema":
            raise Untranslatable(f"output_config.format {output_format.get('type')!r}")
        spec = {"name": "response", "schema": output_format.get("schema"), "strict": True}
        out["response_format"] = {"type": "json_schema", "json_schema": spec}
    return out


def _anthropic_texts(blocks: Any, where: str) -> list[str]:
    if isinstance(blocks, str):
        return [blocks] if blocks else []
    texts = []
    for block in blocks or ():
        if block.get("type") != "text":
            raise Untranslatable(f"{block.get('type')!r} blocks in {where}")
        if block.get("citations"):
            raise Untranslatable("citations")
        if block.get("text"):
            texts.append(block["text"])
    return texts


def _openai_content(texts: list[str]) -> Any:
    """One text as a string, several as text parts (their boundaries kept)."""
    if len(texts) == 1:
        return texts[0]
    return [{"type": "text", "text": text} for text in texts]


def _anthropic_system(system: Any) -> list[dict[str, Any]]:
    texts = _anthropic_texts(system, "the system prompt")
    return [{"role": "system", "content": _openai_content(texts)}] if texts else []


def _anthropic_message(message: dict[str, Any]) -> list[dict[str, Any]]:
    role = message.get("role")
    content = message.get("content")
    if role == "system":
        return _anthropic_system(content)
    if isinstance(content, str):
        return [{"role": role, "content": content}] if content else []
    if role == "assistant":
        return _anthropic_assistant(content or [])
    if role != "user":
        raise Untranslatable(f"messages with role {role!r}")
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content or ():
        kind = block.get("type")
        if kind == "text":
            texts = _anthropic_texts([block], "a user turn")
            parts.extend({"type": "text", "text": text} for text in texts)
        elif kind == "image":
            parts.append(_image_part(block.get("source") or {}))
        elif kind == "tool_result":
            tools.append(_tool_message(block))
        elif kind == "document":
            raise Untranslatable("document (PDF / text) content blocks")
        else:
            raise Untranslatable(f"{kind!r} content blocks")
    return tools + ([{"role": "user", "content": parts}] if parts else [])


def _image_part(source: dict[str, Any]) -> dict[str, Any]:
    kind = source.get("type")
    url: Any
    if kind == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif kind == "url":
        url = source.get("url")
    else:
        raise Untranslatable(f"images from a {kind!r} source")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_message(block: dict[str, Any]) -> dict[str, Any]:
    content = block.get("content")
    if isinstance(content, list) and any(part.get("type") == "image" for part in content):
        raise Untranslatable("images in a tool_result", "OpenAI tool messages take text only")
    texts = _anthropic_texts(content, "a tool_result")
    if block.get("is_error"):
        texts = ["Error: " + (texts[0] if texts else ""), *texts[1:]]
    text: Any = _openai_content(texts) if texts else ""
    return {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}


def _anthropic_assistant(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            texts.extend(_anthropic_texts([block], "an assistant turn"))
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            function = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
        elif kind in ("thinking", "redacted_thinking"):
            raise Untranslatable("thinking", "OpenAI chat completions do not take reasoning")
        else:
            raise Untranslatable(f"{kind!r} content blocks")
    if not texts and not calls:
        return []
    content = _openai_content(texts) if texts else None
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _anthropic_tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") not in (None, "custom"):
        raise Untranslatable(f"server tool {tool.get('type')!r}")
    for key, value in tool.items():
        if key not in _ANTHROPIC_TOOL_KEYS and value not in (None, False, []):
            raise Untranslatable(f"tool {key!r}")
    function: dict[str, Any] = {"name": tool.get("name"), "parameters": tool.get("input_schema")}
    if tool.get("description"):
        function["description"] = tool["description"]
    if tool.get("strict"):
        function["strict"] = True
    return {"type": "function", "function": function}


# -- responses ---------------------------------------------------------------------------------


@guarded("response body")
def anthropic_message_to_openai_chat(response: dict[str, Any], *, model: str) -> dict[str, Any]:
    """An Anthropic ``message`` response as an OpenAI ``chat.completion``."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in response.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            function = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
        elif kind not in ("thinking", "redacted_thinking"):
            raise Untranslatable(f"{kind!r} content blocks in a response")
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
        "annotations": [],
    }
    if calls:
        message["tool_calls"] = calls
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": openai_finish(response.get("stop_reason")),
    }
    return {
        "id": response.get("id"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": anthropic_usage_to_openai(response.get("usage")),
    }


@guarded("response body")
def openai_chat_to_anthropic_message(response: dict[str, Any], *, model: str) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` response as an Anthropic ``message``."""
    choices = response.get("choices") or []
    if len(choices) != 1:
        raise Untranslatable(f"a response with {len(choices)} choices", "Anthropic has one message")
    choice = choices[0]
    message = choice.get("message") or {}
    if message.get("audio"):
        raise Untranslatable("audio")
    if message.get("function_call"):
        raise Untranslatable("legacy function_call")
    blocks: list[dict[str, Any]] = []
    if message.get("content"):
        blocks.append({"type": "text", "text": message["content"]})
    refused = bool(message.get("refusal"))
    if refused:
        blocks.append({"type": "text", "text": message["refusal"]})
    for call in message.get("tool_calls") or ():
        if call.get("type", "function") != "function":
            raise Untranslatable(f"{call.get('type')!r} tool calls")
        function = call.get("function") or {}
        blocks.append({
            "type": "tool_use",
            "id": call.get("id"),
            "name": function.get("name"),
            "input": _parse_arguments(function.get("arguments")),
        })  # fmt: skip
    return {
        "id": response.get("id"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": anthropic_stop(choice.get("finish_reason"), refused=refused),
        "stop_sequence": None,
        "usage": openai_usage_to_anthropic(response.get("usage")),
    }


# -- errors ------------------------------------------------------------------------------------


def _error_parts(status: int, body: bytes) -> tuple[str, str | None]:
    """(message, the source error type) from an error body in any provider's format."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and error.get("message"):
        source = error.get("type")
        return str(error["message"]), source if isinstance(source, str) else None
    if isinstance(error, str) and error:
        return error, None
    text = body.decode("utf-8", "replace").strip()[:1000]
    return text or f"upstream error (HTTP {status})", None


def error_to_openai(status: int, body: bytes) -> tuple[int, dict[str, Any]]:
    """An upstream error (Anthropic's ``{"type": "error", "error": {...}}`` or any body) as
    an OpenAI error ``(status, {"error": {message, type, param, code}})``."""
    message, source = _error_parts(status, body)
    status = 503 if status == 529 else status
    return status, {"error": openai_error_object(status, message, source)}


def error_to_anthropic(status: int, body: bytes) -> tuple[int, dict[str, Any]]:
    """An upstream error (OpenAI's ``{"error": {...}}`` or any body) as an Anthropic error
    ``(status, {"type": "error", "error": {type, message}})``."""
    message, _ = _error_parts(status, body)
    return status, anthropic_error_body(status, message)
