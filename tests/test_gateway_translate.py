"""Cross-protocol fallback translation (issue 17 item 4): OpenAI chat ⇄ Anthropic messages.

What a gateway user relies on: a request translated for the other provider is a valid request
of that provider's SDK and is served; the translated response, stream and error parse with the
caller's own SDK and say what the upstream said (texts, tool ids and arguments, finish reason,
usage including cache tokens); a round trip keeps the conversation; a feature the other side
cannot express is refused by name before anything is sent.

Oracles: the SDKs' own request ``TypedDict``s (checked strictly by :func:`param_errors`, since
pydantic ignores unknown keys), their response models, their stream accumulators
(``messages.stream().get_final_message()``, ``chat.completions.stream().get_final_completion()``)
and FluxGate's usage normalisers (tested elsewhere). Streams travel over HTTP: the bundled fake
provider is made to answer one protocol the way the gateway will, by translating the request,
taking the fake's own stream of the other protocol for it and translating that back.
"""

from __future__ import annotations

import collections.abc
import copy
import json
import types
import typing
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pydantic
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types import message_create_params as anthropic_params
from anthropic.types.shared import ErrorResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat import completion_create_params as openai_params
from openai.types.shared import ErrorObject
from typing_extensions import get_type_hints, is_typeddict

from fluxgate_django.gateway import translate as tr
from fluxgate_django.testing import FakeReply, fake_provider
from fluxgate_django.testing.fake_provider import anthropic as anthropic_wire
from fluxgate_django.testing.fake_provider import openai as openai_wire
from fluxgate_django.testing.fake_provider.turn import _Turn
from fluxgate_django.tracking.anthropic import normalise_anthropic_usage
from fluxgate_django.tracking.openai import normalise_openai_usage

CLAUDE = "claude-sonnet-4-6"
GPT = "gpt-4o"
OPENAI_REQUEST = openai_params.CompletionCreateParams
ANTHROPIC_REQUEST = anthropic_params.MessageCreateParams
STREAM_EVENT = pydantic.TypeAdapter(RawMessageStreamEvent)
HI = [{"role": "user", "content": "hi"}]
#: Sampling parameters: the Anthropic SDK's API version (2026-10-21) has none; they exist
#: under ``anthropic-version: 2023-06-01``, which the gateway sends (see the module docstring).
SAMPLING = ("temperature", "top_p")


def without_sampling(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in SAMPLING}


# -- a strict check of a body against an SDK's request TypedDicts ---------------------------------


def _required_keys(tp: Any, hints: dict[str, Any]) -> set[str]:
    required: set[str] = set()
    inherited: set[str] = set()
    for base in getattr(tp, "__orig_bases__", ()):
        if is_typeddict(base):
            base_hints = get_type_hints(base, include_extras=True)
            required |= _required_keys(base, base_hints)
            inherited |= set(base_hints)
    for key, hint in hints.items():
        origin = typing.get_origin(hint)
        if origin is typing.Required:
            required.add(key)
        elif origin is typing.NotRequired:
            required.discard(key)
        elif key not in inherited:
            (required.add if tp.__total__ else required.discard)(key)
    return required


def param_errors(tp: Any, value: Any, path: str = "body") -> list[str]:
    """Why ``value`` is not a ``tp`` (an SDK request param type): unknown or missing keys,
    wrong literals, wrong types. ``[]`` when it is one."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any or tp is object:
        return []
    if origin in (typing.Annotated, typing.Required, typing.NotRequired):
        return param_errors(args[0], value, path)
    if origin is typing.Union or origin is types.UnionType:
        failures = [param_errors(arg, value, path) for arg in args]
        return [] if any(not f for f in failures) else min(failures, key=len)
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return []
        return [f"{path}: {value!r} is not one of {args}"]
    if tp is type(None):
        return [] if value is None else [f"{path}: not null"]
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        return [f"{path}: {tp.__name__} is a response model, not a request param"]
    if is_typeddict(tp):
        if not isinstance(value, dict):
            return [f"{path}: not an object ({tp.__name__})"]
        hints = get_type_hints(tp, include_extras=True)
        errors = [f"{path}.{k}: unknown to {tp.__name__}" for k in value if k not in hints]
        missing = _required_keys(tp, hints) - set(value)
        errors += [f"{path}.{k}: required by {tp.__name__}" for k in sorted(missing)]
        for key, item in value.items():
            if key in hints:
                errors += param_errors(hints[key], item, f"{path}.{key}")
        return errors
    if origin in (list, collections.abc.Iterable, collections.abc.Sequence):
        if not isinstance(value, list):
            return [f"{path}: not a list"]
        item_type = args[0] if args else typing.Any
        return [e for i, v in enumerate(value) for e in param_errors(item_type, v, f"{path}[{i}]")]
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            return [f"{path}: not an object"]
        return [e for k, v in value.items() for e in param_errors(args[1], v, f"{path}.{k}")]
    if tp is bool:
        return [] if isinstance(value, bool) else [f"{path}: not a bool"]
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: not an int"]
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return [] if ok else [f"{path}: not a number"]
    if tp is str:
        return [] if isinstance(value, str) else [f"{path}: not a string"]
    return []  # (file uploads and the like: not used here)


def test_the_request_shape_check_catches_what_pydantic_lets_through():
    good = {"model": CLAUDE, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    assert param_errors(ANTHROPIC_REQUEST, good) == []
    bad_key = copy.deepcopy(good)
    bad_key["messages"][0]["content"] = [{"type": "text", "text": "hi", "bogus": 1}]
    assert param_errors(ANTHROPIC_REQUEST, bad_key)
    assert param_errors(ANTHROPIC_REQUEST, {**good, "max_tokens": "5"})
    assert param_errors(ANTHROPIC_REQUEST, {"model": CLAUDE, "messages": []})  # no max_tokens
    assert param_errors(OPENAI_REQUEST, {"model": GPT, "messages": [{"role": "robot"}]})


# -- SSE and a fake that answers one protocol through the other ------------------------------


def _sse(raw: bytes) -> list[tuple[str | None, str]]:
    events = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        name, data = None, []
        for line in block.decode("utf-8").split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        if data:
            events.append((name, "\n".join(data)))
    return events


def _data_line(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _event_line(name: str, obj: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(obj).encode() + b"\n\n"


def _include_usage(body: dict[str, Any]) -> bool:
    return bool((body.get("stream_options") or {}).get("include_usage"))


def serve_openai_through_anthropic(monkeypatch, captured: list[dict[str, Any]]) -> None:
    """Streamed chat completions answered as the gateway will when it falls back to Claude:
    the request translated to Anthropic, the fake's Anthropic stream for it (whatever the
    ``messages`` builder gives) translated back chunk by chunk (kept in ``captured``)."""
    builders = fake_provider._SSE_BUILDERS

    def build(turn: _Turn) -> Iterator[bytes]:
        request = tr.openai_chat_to_anthropic(turn.body, model=CLAUDE)
        upstream = b"".join(builders["messages"](_Turn(turn.reply, request, "messages")))
        stream = tr.AnthropicToOpenAIStream(
            model=turn.body["model"], include_usage=_include_usage(turn.body)
        )
        for name, data in _sse(upstream):
            for chunk in stream.feed(name or "", json.loads(data)):
                captured.append(chunk)
                yield _data_line(chunk)
        for chunk in stream.finish():
            captured.append(chunk)
            yield _data_line(chunk)
        yield b"data: [DONE]\n\n"

    monkeypatch.setitem(builders, "chat", build)


def serve_anthropic_through_openai(monkeypatch, captured: list[tuple[str, dict[str, Any]]]) -> None:
    """Streamed Anthropic messages answered as the gateway will when it falls back to an
    OpenAI model (the fake's chat stream for the translated request, translated back)."""
    builders = fake_provider._SSE_BUILDERS

    def build(turn: _Turn) -> Iterator[bytes]:
        request = tr.anthropic_to_openai_chat(turn.body, model=GPT)
        upstream = b"".join(builders["chat"](_Turn(turn.reply, request, "chat")))
        stream = tr.OpenAIToAnthropicStream(model=turn.body["model"])
        for _, data in _sse(upstream):
            if data == "[DONE]":
                break
            for name, event in stream.feed(json.loads(data)):
                captured.append((name, event))
                yield _event_line(name, event)
        for name, event in stream.finish():
            captured.append((name, event))
            yield _event_line(name, event)

    monkeypatch.setitem(builders, "messages", build)


# -- conversations ---------------------------------------------------------------------------

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city"],
}
OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": WEATHER_SCHEMA,
        },
    },
    {"type": "function", "function": {"name": "now", "description": "The time"}},
]
ANTHROPIC_TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather for a city",
        "input_schema": WEATHER_SCHEMA,
    }
]

OPENAI_CONVERSATION: dict[str, Any] = {
    "model": GPT,
    "messages": [
        {"role": "system", "content": "You are a travel assistant."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these pictures? And the weather?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"},
                },
                {"type": "image_url", "image_url": {"url": "https://example.com/eiffel.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Let me check the weather.",
            "tool_calls": [
                {
                    "id": "call_paris",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Paris", "unit": "c"}',
                    },
                },
                {
                    "id": "call_lyon",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_paris", "content": "18C, sunny"},
        {"role": "tool", "tool_call_id": "call_lyon", "content": [{"type": "text", "text": "15C"}]},
        {"role": "user", "content": "And tomorrow?"},
    ],
    "tools": OPENAI_TOOLS,
    "tool_choice": "required",
    "parallel_tool_calls": False,
    "max_completion_tokens": 300,
    "temperature": 0.3,
    "top_p": 0.9,
    "stop": "END",
    "user": "user-42",
}

ANTHROPIC_CONVERSATION: dict[str, Any] = {
    "model": CLAUDE,
    "max_tokens": 512,
    "system": [
        {"type": "text", "text": "You are a travel assistant."},
        {"type": "text", "text": "Answer in French."},
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these pictures? And the weather?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/e.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": "toolu_paris",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_lyon",
                    "name": "get_weather",
                    "input": {"city": "Lyon", "unit": "c"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_paris", "content": "18C, sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_lyon",
                    "content": [{"type": "text", "text": "15C"}],
                },
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ],
    "tools": ANTHROPIC_TOOLS,
    "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    "stop_sequences": ["END", "STOP"],
    "metadata": {"user_id": "user-42"},
}


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [block["text"] for block in content]


def openai_meaning(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What an OpenAI conversation says: (role, tool_call_id, texts / image URLs, tool calls
    with parsed arguments); ``developer`` is ``system``, adjacent system messages one."""
    out: list[tuple[Any, ...]] = []
    for m in messages:
        role = "system" if m["role"] == "developer" else m["role"]
        content = m.get("content")
        if isinstance(content, str):
            items = [content] if content else []
        else:
            items = [p.get("text") or p.get("image_url", {}).get("url") for p in content or ()]
        calls = [
            (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"] or "{}"))
            for c in m.get("tool_calls") or ()
        ]
        if out and role == "system" and out[-1][0] == "system":
            out[-1] = ("system", None, out[-1][2] + items, [])
            continue
        out.append((role, m.get("tool_call_id"), items, calls))
    return out


def anthropic_meaning(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What an Anthropic conversation says: the system texts, then per turn its blocks."""
    out: list[tuple[Any, ...]] = [("system", _texts(body.get("system") or []))]
    for m in body["messages"]:
        content = m["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        said = []
        for b in blocks:
            if b["type"] == "text":
                said.append(("text", b["text"]))
            elif b["type"] == "image":
                said.append(("image", b["source"].get("data") or b["source"].get("url")))
            elif b["type"] == "tool_use":
                said.append(("tool_use", b["id"], b["name"], b["input"]))
            elif b["type"] == "tool_result":
                said.append(("tool_result", b["tool_use_id"], _texts(b.get("content") or [])))
        out.append((m["role"], said))
    return out


# -- requests: OpenAI -> Anthropic -------------------------------------------------------------


def test_openai_request_becomes_a_valid_anthropic_request_the_provider_serves(
    fake, anthropic_client
):
    source = copy.deepcopy(OPENAI_CONVERSATION)
    assert param_errors(OPENAI_REQUEST, source) == []

    body = tr.openai_chat_to_anthropic(source, model=CLAUDE)

    assert source == OPENAI_CONVERSATION  # the caller's body is not modified
    assert param_errors(ANTHROPIC_REQUEST, without_sampling(body)) == []
    assert body["model"] == CLAUDE
    assert _texts(body["system"]) == ["You are a travel assistant.", "Answer in French."]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    question, answer, results = (m["content"] for m in body["messages"])
    assert question[1]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": "iVBORw0KGgo=",
    }
    assert question[2]["source"] == {"type": "url", "url": "https://example.com/eiffel.jpg"}
    calls = OPENAI_CONVERSATION["messages"][3]["tool_calls"]
    assert answer[0] == {"type": "text", "text": "Let me check the weather."}
    assert [(b["id"], b["name"], b["input"]) for b in answer[1:]] == [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls
    ]
    # both tool results and the next user message: one user turn, results first
    assert [b["type"] for b in results] == ["tool_result", "tool_result", "text"]
    assert [b["tool_use_id"] for b in results[:2]] == ["call_paris", "call_lyon"]
    assert _texts(results[0]["content"]) == ["18C, sunny"]
    assert _texts(results[1]["content"]) == ["15C"]
    assert results[2]["text"] == "And tomorrow?"
    assert [t["name"] for t in body["tools"]] == ["get_weather", "now"]
    assert body["tools"][0]["input_schema"] == WEATHER_SCHEMA
    assert body["tools"][0]["description"] == "Current weather for a city"
    assert body["tools"][1]["input_schema"]["type"] == "object"  # no parameters: takes none
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["max_tokens"] == 300
    assert (body["temperature"], body["top_p"]) == (0.3, 0.9)
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "user-42"}
    assert "stream" not in body

    message = anthropic_client.post("/v1/messages", body=body, cast_to=Message)

    assert fake.last_request.path == "/v1/messages"
    assert fake.last_request.body == body  # the SDK took every field as it is
    assert isinstance(message, Message)


def test_openai_request_without_a_limit_gets_the_documented_max_tokens():
    body = {"model": GPT, "messages": [{"role": "user", "content": "hi"}]}
    assert tr.openai_chat_to_anthropic(body, model=CLAUDE)["max_tokens"] == tr.DEFAULT_MAX_TOKENS
    assert tr.DEFAULT_MAX_TOKENS == 4096  # what the module documents
    legacy = tr.openai_chat_to_anthropic({**body, "max_tokens": 77}, model=CLAUDE)
    assert legacy["max_tokens"] == 77
    both = {**body, "max_tokens": 77, "max_completion_tokens": 55}
    assert tr.openai_chat_to_anthropic(both, model=CLAUDE)["max_tokens"] == 55


def test_a_system_message_later_in_an_openai_conversation_stays_in_place():
    source = {
        "model": GPT,
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "system", "content": "From now on, answer in French."},
            {"role": "user", "content": "How are you?"},
        ],
    }
    body = tr.openai_chat_to_anthropic(source, model=CLAUDE)
    assert param_errors(ANTHROPIC_REQUEST, body) == []
    assert "system" not in body
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "system", "user"]
    back = tr.anthropic_to_openai_chat(body, model=GPT)
    assert openai_meaning(back["messages"]) == openai_meaning(source["messages"])


@pytest.mark.parametrize(
    ("openai_choice", "anthropic_choice"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather"},
        ),
    ],
)
def test_tool_choice_maps_both_ways(openai_choice, anthropic_choice):
    source = {"model": GPT, "messages": [{"role": "user", "content": "hi"}], "tools": OPENAI_TOOLS}
    body = tr.openai_chat_to_anthropic({**source, "tool_choice": openai_choice}, model=CLAUDE)
    assert body["tool_choice"] == anthropic_choice
    assert param_errors(ANTHROPIC_REQUEST, body) == []
    back = tr.anthropic_to_openai_chat(body, model=GPT)
    assert back["tool_choice"] == openai_choice
    assert param_errors(OPENAI_REQUEST, back) == []


# -- requests: Anthropic -> OpenAI -------------------------------------------------------------


def test_anthropic_request_becomes_a_valid_openai_request_the_provider_serves(fake, openai_client):
    source = copy.deepcopy(ANTHROPIC_CONVERSATION)
    source["system"][0]["cache_control"] = {"type": "ephemeral"}  # dropped: OpenAI caches itself
    source["messages"][2]["content"][1]["is_error"] = True
    source["stream"] = True
    assert param_errors(ANTHROPIC_REQUEST, source) == []

    body = tr.anthropic_to_openai_chat(source, model=GPT)

    assert param_errors(OPENAI_REQUEST, body) == []
    assert body["model"] == GPT
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "tool", "user"]
    system, question, answer, paris, lyon, follow_up = body["messages"]
    assert [p["text"] for p in system["content"]] == [
        "You are a travel assistant.",
        "Answer in French.",
    ]
    assert question["content"][1]["image_url"]["url"] == "data:image/jpeg;base64,/9j/4AAQ"
    assert question["content"][2]["image_url"]["url"] == "https://example.com/e.jpg"
    assert answer["content"] == "Let me check."
    uses = source["messages"][1]["content"][1:]
    assert [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in answer["tool_calls"]
    ] == [(u["id"], u["name"], u["input"]) for u in uses]
    assert (paris["tool_call_id"], paris["content"]) == ("toolu_paris", "18C, sunny")
    assert lyon["tool_call_id"] == "toolu_lyon"
    assert lyon["content"].startswith("Error") and "15C" in lyon["content"]  # is_error kept
    assert follow_up["content"] == [{"type": "text", "text": "And tomorrow?"}]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": WEATHER_SCHEMA,
            },
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assert body["max_completion_tokens"] == 512
    assert body["stop"] == ["END", "STOP"]
    assert body["user"] == "user-42"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}  # so usage can be translated

    chunks = list(openai_client.chat.completions.create(**body))

    assert fake.last_request.path == "/v1/chat/completions"
    assert fake.last_request.body == body
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None


def test_structured_output_maps_both_ways():
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    source = {
        "model": GPT,
        "messages": [{"role": "user", "content": "Which city?"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": True},
        },
    }
    body = tr.openai_chat_to_anthropic(source, model=CLAUDE)
    assert param_errors(ANTHROPIC_REQUEST, body) == []
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    back = tr.anthropic_to_openai_chat(body, model=GPT)
    assert param_errors(OPENAI_REQUEST, back) == []
    assert back["response_format"]["type"] == "json_schema"
    assert back["response_format"]["json_schema"]["schema"] == schema
    assert back["response_format"]["json_schema"]["strict"] is True


# -- round trips -------------------------------------------------------------------------------


def test_openai_conversation_survives_a_round_trip_through_anthropic():
    there = tr.openai_chat_to_anthropic(OPENAI_CONVERSATION, model=CLAUDE)
    assert param_errors(ANTHROPIC_REQUEST, without_sampling(there)) == []
    back = tr.anthropic_to_openai_chat(there, model=GPT)

    assert param_errors(OPENAI_REQUEST, back) == []
    assert openai_meaning(back["messages"]) == openai_meaning(OPENAI_CONVERSATION["messages"])
    names = [(t["function"]["name"], t["function"].get("description")) for t in back["tools"]]
    assert names == [(t["function"]["name"], t["function"]["description"]) for t in OPENAI_TOOLS]
    assert back["tools"][0]["function"]["parameters"] == WEATHER_SCHEMA
    assert back["tool_choice"] == "required"
    assert back["parallel_tool_calls"] is False
    assert back["max_completion_tokens"] == OPENAI_CONVERSATION["max_completion_tokens"]
    assert back["stop"] == [OPENAI_CONVERSATION["stop"]]
    assert back["user"] == OPENAI_CONVERSATION["user"]
    assert (back["temperature"], back["top_p"]) == (0.3, 0.9)


def test_anthropic_conversation_survives_a_round_trip_through_openai():
    there = tr.anthropic_to_openai_chat(ANTHROPIC_CONVERSATION, model=GPT)
    back = tr.openai_chat_to_anthropic(there, model=CLAUDE)

    assert param_errors(ANTHROPIC_REQUEST, back) == []
    assert anthropic_meaning(back) == anthropic_meaning(ANTHROPIC_CONVERSATION)
    assert back["tools"] == ANTHROPIC_TOOLS
    assert back["tool_choice"] == ANTHROPIC_CONVERSATION["tool_choice"]
    for key in ("max_tokens", "stop_sequences", "metadata"):
        assert back[key] == ANTHROPIC_CONVERSATION[key], key


def test_sampling_parameters_are_kept_both_ways():
    anthropic_body = tr.openai_chat_to_anthropic(
        {"model": GPT, "messages": HI, "temperature": 0.3, "top_p": 0.9}, model=CLAUDE
    )
    assert (anthropic_body["temperature"], anthropic_body["top_p"]) == (0.3, 0.9)
    openai_body = tr.anthropic_to_openai_chat(
        {"model": CLAUDE, "max_tokens": 5, "messages": HI, "temperature": 0.2, "top_p": 0.8},
        model=GPT,
    )
    assert param_errors(OPENAI_REQUEST, openai_body) == []
    assert (openai_body["temperature"], openai_body["top_p"]) == (0.2, 0.8)


# -- responses ---------------------------------------------------------------------------------

CACHED_USAGE = {"cached_tokens": 2000, "cache_write_tokens": 300}


def test_anthropic_message_becomes_a_chat_completion_with_the_same_text_and_usage(
    fake, anthropic_client
):
    fake.enqueue(FakeReply(text="Bonjour !", input_tokens=120, output_tokens=7, **CACHED_USAGE))
    message = anthropic_client.messages.create(
        model=CLAUDE, max_tokens=50, messages=[{"role": "user", "content": "Salut"}]
    )

    completion = ChatCompletion.model_validate(
        tr.anthropic_message_to_openai_chat(message.model_dump(), model=GPT)
    )

    assert completion.model == GPT  # the name the caller asked for
    assert completion.id == message.id
    assert completion.choices[0].message.content == "Bonjour !"
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    # Anthropic's input_tokens exclude cache reads and writes; OpenAI's prompt_tokens include them
    assert usage.prompt_tokens == 120 + 2000 + 300
    assert usage.prompt_tokens_details.cached_tokens == 2000
    assert usage.prompt_tokens_details.cache_write_tokens == 300
    assert (usage.completion_tokens, usage.total_tokens) == (7, 2420 + 7)
    assert normalise_openai_usage(usage) == normalise_anthropic_usage(message.usage)


def test_chat_completion_becomes_an_anthropic_message_with_the_same_text_and_usage(
    fake, openai_client
):
    fake.enqueue(
        FakeReply(
            text="Hello!", input_tokens=2400, output_tokens=50, reasoning_tokens=10, **CACHED_USAGE
        )
    )
    completion = openai_client.chat.completions.create(
        model=GPT, messages=[{"role": "user", "content": "Hi"}]
    )

    message = Message.model_validate(
        tr.openai_chat_to_anthropic_message(completion.model_dump(), model=CLAUDE)
    )

    assert message.model == CLAUDE
    assert message.id == completion.id
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", "Hello!")]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 2400 - 2000 - 300
    assert message.usage.cache_read_input_tokens == 2000
    assert message.usage.cache_creation_input_tokens == 300
    assert message.usage.output_tokens == 50
    assert message.usage.output_tokens_details is not None
    assert message.usage.output_tokens_details.thinking_tokens == 10
    ours, theirs = (
        normalise_anthropic_usage(message.usage),
        normalise_openai_usage(completion.usage),
    )
    assert ours is not None and theirs is not None
    assert (
        ours.input_tokens,
        ours.output_tokens,
        ours.cache_read_tokens,
        ours.cache_write_tokens,
    ) == (
        theirs.input_tokens,
        theirs.output_tokens,
        theirs.cache_read_tokens,
        theirs.cache_write_tokens,
    )


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reason_becomes_finish_reason(fake, anthropic_client, stop_reason, finish_reason):
    fake.enqueue(FakeReply(finish_reason=stop_reason))
    message = anthropic_client.messages.create(
        model=CLAUDE, max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
    )
    assert message.stop_reason == stop_reason
    completion = ChatCompletion.model_validate(
        tr.anthropic_message_to_openai_chat(message.model_dump(), model=GPT)
    )
    assert completion.choices[0].finish_reason == finish_reason


@pytest.mark.parametrize(
    ("reply_finish", "stop_reason"),
    [
        (None, "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        ("refusal", "refusal"),  # OpenAI: finish_reason stop with message.refusal
    ],
)
def test_finish_reason_becomes_stop_reason(fake, openai_client, reply_finish, stop_reason):
    fake.enqueue(FakeReply(text="I can't help with that.", finish_reason=reply_finish))
    completion = openai_client.chat.completions.create(
        model=GPT, messages=[{"role": "user", "content": "Hi"}]
    )
    message = Message.model_validate(
        tr.openai_chat_to_anthropic_message(completion.model_dump(), model=CLAUDE)
    )
    assert message.stop_reason == stop_reason
    assert [getattr(b, "text", None) for b in message.content] == ["I can't help with that."]


ANTHROPIC_TOOL_MESSAGE: dict[str, Any] = {
    "id": "msg_01tools",
    "type": "message",
    "role": "assistant",
    "model": CLAUDE,
    "content": [
        {"type": "thinking", "thinking": "Two lookups.", "signature": "c2ln"},
        {"type": "text", "text": "Checking both cities."},
        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
        {
            "type": "tool_use",
            "id": "toolu_01B",
            "name": "get_weather",
            "input": {"city": "Lyon", "unit": "c"},
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 40,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 200,
        "output_tokens": 90,
    },
}


def test_tool_use_response_round_trips_through_openai():
    original = Message.model_validate(ANTHROPIC_TOOL_MESSAGE)

    as_openai = tr.anthropic_message_to_openai_chat(original.model_dump(), model=GPT)
    completion = ChatCompletion.model_validate(as_openai)
    back = Message.model_validate(tr.openai_chat_to_anthropic_message(as_openai, model=CLAUDE))

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking both cities."  # the thinking is not shown
    uses = [b for b in original.content if b.type == "tool_use"]
    assert [
        (c.id, c.function.name, json.loads(c.function.arguments))
        for c in choice.message.tool_calls or ()
    ] == [(u.id, u.name, u.input) for u in uses]
    visible = [b.model_dump(exclude_none=True) for b in original.content if b.type != "thinking"]
    assert [b.model_dump(exclude_none=True) for b in back.content] == visible
    assert back.stop_reason == "tool_use"
    assert normalise_anthropic_usage(back.usage) == normalise_anthropic_usage(original.usage)


def test_every_text_block_of_a_message_reaches_the_openai_content():
    source = {
        **ANTHROPIC_TOOL_MESSAGE,
        "content": [{"type": "text", "text": "Part one. "}, {"type": "text", "text": "Part two."}],
        "stop_reason": "end_turn",
    }
    original = Message.model_validate(source)
    completion = ChatCompletion.model_validate(
        tr.anthropic_message_to_openai_chat(original.model_dump(), model=GPT)
    )
    assert completion.choices[0].message.content == "".join(b.text for b in original.content)


def test_openai_tool_calls_response_becomes_tool_use_blocks():
    source = {
        "id": "chatcmpl-tools",
        "object": "chat.completion",
        "created": 1700000000,
        "model": GPT,
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "logprobs": None,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_A",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        },
                        {
                            "id": "call_B",
                            "type": "function",
                            "function": {"name": "now", "arguments": ""},
                        },
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42},
    }
    completion = ChatCompletion.model_validate(source)

    message = Message.model_validate(tr.openai_chat_to_anthropic_message(source, model=CLAUDE))

    assert message.stop_reason == "tool_use"
    assert [(b.type, b.id, b.name, b.input) for b in message.content if b.type == "tool_use"] == [
        ("tool_use", c.id, c.function.name, json.loads(c.function.arguments or "{}"))
        for c in completion.choices[0].message.tool_calls or ()
    ]
    assert len(message.content) == 2  # no empty text block for content: null
    assert (message.usage.input_tokens, message.usage.output_tokens) == (30, 12)


# -- streams -----------------------------------------------------------------------------------

STREAM_REPLY = FakeReply(
    text="Paris is sunny today, Lyon is rainy.", input_tokens=50, output_tokens=9, **CACHED_USAGE
)


@pytest.mark.parametrize("include_usage", [True, False])
def test_anthropic_stream_served_as_openai_chunks(
    fake, openai_client, anthropic_client, monkeypatch, include_usage
):
    fake.default_reply = STREAM_REPLY
    with anthropic_client.messages.stream(
        model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "Weather?"}]
    ) as upstream:
        original = upstream.get_final_message()
    chunks: list[dict[str, Any]] = []
    serve_openai_through_anthropic(monkeypatch, chunks)

    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    with openai_client.chat.completions.stream(
        model=GPT, messages=[{"role": "user", "content": "Weather?"}], **options
    ) as stream:
        final = stream.get_final_completion()

    parsed = [ChatCompletionChunk.model_validate(c) for c in chunks]  # every chunk is valid
    assert parsed[0].choices[0].delta.role == "assistant"
    finishes = [
        c.choices[0].finish_reason for c in parsed if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    assert final.choices[0].message.content == original.content[0].text  # type: ignore[union-attr]
    assert final.choices[0].finish_reason == "stop"
    assert final.model == GPT
    if include_usage:
        assert [c.choices for c in parsed].count([]) == 1 and parsed[-1].choices == []
        assert all(c.usage is None for c in parsed[:-1])
        assert normalise_openai_usage(final.usage) == normalise_anthropic_usage(original.usage)
    else:
        assert all(c.choices and c.usage is None for c in parsed)
        assert final.usage is None


THINKING_START = {"type": "thinking", "thinking": "", "signature": ""}


def anthropic_tool_stream(turn: _Turn) -> Iterator[bytes]:
    """A streamed Anthropic tool-use reply, as the API sends one (thinking, text, two tool
    calls with their input in fragments), for the ``messages`` builder."""
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": {
            **ANTHROPIC_TOOL_MESSAGE, "content": [], "stop_reason": None,
            "usage": {**ANTHROPIC_TOOL_MESSAGE["usage"], "output_tokens": 1},
        }}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": THINKING_START}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "Two lookups."}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "signature_delta", "signature": "c2ln"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1,
                                 "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "text_delta", "text": "Checking "}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "text_delta", "text": "both cities."}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ]  # fmt: skip
    for index, (tool_id, fragments) in enumerate(
        [
            ("toolu_01A", ["", '{"city": "Pa', 'ris"}']),
            ("toolu_01B", ['{"city": "Lyon",', ' "unit": "c"}']),
        ],
        start=2,
    ):
        block = {"type": "tool_use", "id": tool_id, "name": "get_weather", "input": {}}
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        )
        for fragment in fragments:
            delta = {"type": "input_json_delta", "partial_json": fragment}
            events.append(
                (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                                     "usage": {"output_tokens": 90}}))  # fmt: skip
    events.append(("message_stop", {"type": "message_stop"}))
    for name, data in events:
        if name != "ping":  # (not a RawMessageStreamEvent: the SDK skips it)
            STREAM_EVENT.validate_python(data)  # what the Anthropic SDK takes
        yield _event_line(name, data)


def test_anthropic_tool_use_stream_served_as_openai_tool_call_chunks(
    fake, openai_client, anthropic_client, monkeypatch
):
    monkeypatch.setitem(fake_provider._SSE_BUILDERS, "messages", anthropic_tool_stream)
    with anthropic_client.messages.stream(
        model=CLAUDE,
        max_tokens=200,
        tools=ANTHROPIC_TOOLS,
        messages=[{"role": "user", "content": "Weather?"}],
    ) as upstream:
        original = upstream.get_final_message()
    chunks: list[dict[str, Any]] = []
    serve_openai_through_anthropic(monkeypatch, chunks)

    with openai_client.chat.completions.stream(
        model=GPT,
        messages=[{"role": "user", "content": "Weather?"}],
        tools=OPENAI_TOOLS[:1],
        stream_options={"include_usage": True},
    ) as stream:
        final = stream.get_final_completion()

    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    starts = [
        (call["index"], call["id"], call["function"]["name"])
        for c in chunks if c["choices"]
        for call in c["choices"][0]["delta"].get("tool_calls") or () if "id" in call
    ]  # fmt: skip
    assert starts == [(0, "toolu_01A", "get_weather"), (1, "toolu_01B", "get_weather")]
    assert final.id == original.id == ANTHROPIC_TOOL_MESSAGE["id"]
    message = final.choices[0].message
    assert message.content == "Checking both cities."
    uses = [b for b in original.content if b.type == "tool_use"]
    assert [
        (c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or ()
    ] == [(u.id, u.name, u.input) for u in uses]
    assert final.choices[0].finish_reason == "tool_calls"
    assert normalise_openai_usage(final.usage) == normalise_anthropic_usage(original.usage)
    assert final.usage is not None and final.usage.prompt_tokens == 40 + 1000 + 200


def test_openai_stream_served_as_anthropic_events(
    fake, openai_client, anthropic_client, monkeypatch
):
    fake.default_reply = FakeReply(
        text="Paris is sunny today.", input_tokens=2400, output_tokens=6, **CACHED_USAGE
    )
    with openai_client.chat.completions.stream(
        model=GPT,
        messages=[{"role": "user", "content": "Weather?"}],
        stream_options={"include_usage": True},
    ) as upstream:
        original = upstream.get_final_completion()
    events: list[tuple[str, dict[str, Any]]] = []
    serve_anthropic_through_openai(monkeypatch, events)

    with anthropic_client.messages.stream(
        model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "Weather?"}]
    ) as stream:
        final = stream.get_final_message()

    for name, data in events:
        assert STREAM_EVENT.validate_python(data).type == name
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert [getattr(b, "text", None) for b in final.content] == [
        original.choices[0].message.content
    ]
    assert final.stop_reason == "end_turn"
    assert final.model == CLAUDE
    assert final.usage.input_tokens == 2400 - 2000 - 300
    assert normalise_anthropic_usage(final.usage) == normalise_openai_usage(original.usage)


def test_a_streamed_openai_refusal_is_an_anthropic_refusal(fake, anthropic_client, monkeypatch):
    fake.default_reply = FakeReply(text="I can't help with that.", finish_reason="refusal")
    serve_anthropic_through_openai(monkeypatch, [])

    with anthropic_client.messages.stream(model=CLAUDE, max_tokens=100, messages=HI) as stream:
        final = stream.get_final_message()

    assert final.stop_reason == "refusal"
    assert [getattr(b, "text", None) for b in final.content] == ["I can't help with that."]


OPENAI_TOOL_CHUNKS: list[dict[str, Any]] = [
    {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": "Checking."}, "finish_reason": None}]},
    {"choices": [{"index": 0, "finish_reason": None, "delta": {"tool_calls": [
        {"index": 0, "id": "call_A", "type": "function",
         "function": {"name": "get_weather", "arguments": ""}}
    ]}}]},
    {"choices": [{"index": 0, "finish_reason": None, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": '{"city"'}}
    ]}}]},
    {"choices": [{"index": 0, "finish_reason": None, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": ': "Paris"}'}}
    ]}}]},
    {"choices": [{"index": 0, "finish_reason": None, "delta": {"tool_calls": [
        {"index": 1, "id": "call_B", "type": "function",
         "function": {"name": "now", "arguments": "{}"}}
    ]}}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {"choices": [], "usage": {
        "prompt_tokens": 1300, "completion_tokens": 40, "total_tokens": 1340,
        "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 200},
        "completion_tokens_details": {"reasoning_tokens": 12},
    }},
]  # fmt: skip


def openai_tool_stream(turn: _Turn) -> Iterator[bytes]:
    """A streamed OpenAI tool-calls reply (text, then two calls, arguments in fragments)."""
    base = {
        "id": "chatcmpl-tools",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": GPT,
    }
    for chunk in OPENAI_TOOL_CHUNKS:
        data = {**base, **chunk}
        ChatCompletionChunk.model_validate(data)  # what the OpenAI SDK takes
        yield _data_line(data)
    yield b"data: [DONE]\n\n"


def test_openai_tool_call_stream_served_as_anthropic_tool_use_events(
    fake, openai_client, anthropic_client, monkeypatch
):
    monkeypatch.setitem(fake_provider._SSE_BUILDERS, "chat", openai_tool_stream)
    with openai_client.chat.completions.stream(
        model=GPT, messages=[{"role": "user", "content": "Weather?"}], tools=OPENAI_TOOLS
    ) as upstream:
        original = upstream.get_final_completion()
    events: list[tuple[str, dict[str, Any]]] = []
    serve_anthropic_through_openai(monkeypatch, events)

    with anthropic_client.messages.stream(
        model=CLAUDE,
        max_tokens=200,
        tools=ANTHROPIC_TOOLS,
        messages=[{"role": "user", "content": "Weather?"}],
    ) as stream:
        final = stream.get_final_message()

    for _, data in events:
        STREAM_EVENT.validate_python(data)
    starts = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert starts == ["text", "tool_use", "tool_use"]
    assert final.content[0].type == "text" and final.content[0].text == "Checking."
    calls = original.choices[0].message.tool_calls or []
    assert [(b.id, b.name, b.input) for b in final.content[1:] if b.type == "tool_use"] == [
        (c.id, c.function.name, json.loads(c.function.arguments)) for c in calls
    ]
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (1300 - 1000 - 200, 40)
    assert final.usage.cache_read_input_tokens == 1000
    assert final.usage.cache_creation_input_tokens == 200


def test_an_error_inside_an_anthropic_stream_reaches_the_openai_client(
    fake, openai_client, monkeypatch
):
    def overloaded(turn: _Turn) -> Iterator[bytes]:
        start = {**ANTHROPIC_TOOL_MESSAGE, "content": [], "stop_reason": None}
        yield _event_line("message_start", {"type": "message_start", "message": start})
        error = {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded now"},
        }
        yield _event_line("error", error)

    monkeypatch.setitem(fake_provider._SSE_BUILDERS, "messages", overloaded)
    serve_openai_through_anthropic(monkeypatch, [])
    with pytest.raises(openai.APIError, match="Overloaded now"):
        list(
            openai_client.chat.completions.create(
                model=GPT, messages=[{"role": "user", "content": "x"}], stream=True
            )
        )


def test_an_error_inside_an_openai_stream_reaches_the_anthropic_client(
    fake, anthropic_client, monkeypatch
):
    def broken(turn: _Turn) -> Iterator[bytes]:
        yield _data_line({**OPENAI_TOOL_CHUNKS[0], "id": "c", "object": "chat.completion.chunk",
                          "created": 1, "model": GPT})  # fmt: skip
        yield _data_line({"error": {"message": "The server had an error", "type": "server_error"}})

    monkeypatch.setitem(fake_provider._SSE_BUILDERS, "chat", broken)
    serve_anthropic_through_openai(monkeypatch, [])
    with pytest.raises(anthropic.APIStatusError, match="The server had an error"):
        list(anthropic_client.messages.create(
            model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "x"}], stream=True
        ))  # fmt: skip


# -- refusals ----------------------------------------------------------------------------------


def _user(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(parts)}]


# (extra fields on a minimal request, the feature the refusal must name, is it a valid request)
OPENAI_REFUSED = [
    ({"n": 3}, "n>1", True),
    ({"logprobs": True, "top_logprobs": 2}, "logprobs", True),
    ({"audio": {"voice": "alloy", "format": "mp3"}, "modalities": ["text", "audio"]},
     "audio", True),
    ({"modalities": ["text", "audio"]}, "audio", True),
    ({"messages": _user({"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}})},
     "audio", True),
    ({"messages": _user({"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE",
                                                  "filename": "a.pdf"}})}, "file", True),
    ({"messages": _user({"type": "video_url", "video_url": {"url": "https://x/v.mp4"}})},
     "video_url", False),
    ({"messages": _user({"type": "image_url",
                         "image_url": {"url": "data:image/svg+xml;base64,PHN2"}})},
     "svg", True),
    ({"response_format": {"type": "json_object"}}, "json_object", True),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "a", "description": "An answer", "schema": {"type": "object"}}}},
     "description", True),
    ({"temperature": 1.5}, "temperature", True),
    ({"frequency_penalty": 0.5}, "frequency_penalty", True),
    ({"presence_penalty": -1.0}, "presence_penalty", True),
    ({"logit_bias": {"50256": -100}}, "logit_bias", True),
    ({"reasoning_effort": "high"}, "reasoning_effort", True),
    ({"functions": [{"name": "f", "parameters": {"type": "object"}}]}, "functions", True),
    ({"tools": OPENAI_TOOLS, "tool_choice": {"type": "allowed_tools", "allowed_tools": {
        "mode": "auto", "tools": [{"type": "function", "function": {"name": "now"}}]}}},
     "allowed_tools", True),
    ({"tools": [{"type": "custom", "custom": {"name": "sql"}}]}, "custom", True),
    ({"messages": [{"role": "user", "content": "hi", "name": "alice"}]}, "name", True),
    ({"messages": [*HI, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
        "function": {"name": "f", "arguments": "{not json"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "ok"}]}, "JSON object", True),
    ({"messages": [*HI, {"role": "assistant", "content": "Sure, here"}]}, "final assistant", True),
    ({"frobnicate": True}, "frobnicate", False),
]  # fmt: skip

ANTHROPIC_REFUSED = [
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking", True),
    ({"messages": [*HI, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "c2ln"},
        {"type": "text", "text": "Hello"}]}, *HI]}, "thinking", True),
    ({"messages": _user({"type": "document", "source": {"type": "base64",
                                                        "media_type": "application/pdf",
                                                        "data": "JVBE"}})}, "document", True),
    ({"messages": _user({"type": "search_result", "source": "https://x", "title": "t",
                         "content": [{"type": "text", "text": "x"}]})}, "search_result", True),
    ({"messages": _user({"type": "image", "source": {"type": "file", "file_id": "file_1"}})},
     "'file'", True),
    ({"messages": [*HI, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}}]}]}]},
     "image", True),
    ({"top_k": 5}, "top_k", False),  # (under anthropic-version 2023-06-01 only)
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "web_search", True),
    ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences", True),
    ({"output_config": {"effort": "high"}}, "effort", True),
    ({"inference_geo": "eu"}, "inference_geo", True),
    ({"messages": [*HI, {"role": "assistant", "content": "The answer is"}]}, "prefill", True),
    ({"bogus_key": 1}, "bogus_key", False),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "feature", "valid"), OPENAI_REFUSED)
def test_openai_features_anthropic_cannot_express_are_refused_by_name(extra, feature, valid):
    body = {"model": GPT, "messages": HI, **extra}
    assert (param_errors(OPENAI_REQUEST, body) == []) is valid  # a request users can send
    with pytest.raises(tr.Untranslatable) as info:
        tr.openai_chat_to_anthropic(body, model=CLAUDE)
    assert feature in info.value.feature
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("extra", "feature", "valid"), ANTHROPIC_REFUSED)
def test_anthropic_features_openai_cannot_express_are_refused_by_name(extra, feature, valid):
    body = {"model": CLAUDE, "max_tokens": 10, "messages": HI, **extra}
    assert (param_errors(ANTHROPIC_REQUEST, body) == []) is valid
    with pytest.raises(tr.Untranslatable) as info:
        tr.anthropic_to_openai_chat(body, model=GPT)
    assert feature in info.value.feature


@pytest.mark.parametrize(
    ("translate", "body"),
    [
        (tr.openai_chat_to_anthropic, {"model": GPT, "messages": ["hi"]}),
        (tr.openai_chat_to_anthropic, {"model": GPT, "messages": HI, "temperature": "warm"}),
        (
            tr.anthropic_to_openai_chat,
            {"model": CLAUDE, "max_tokens": 5, "messages": [{"role": "user", "content": [7]}]},
        ),
        (tr.anthropic_message_to_openai_chat, {"content": "not blocks"}),
        (tr.openai_chat_to_anthropic_message, {"choices": [{"message": "hi"}]}),
    ],
)
def test_a_malformed_body_is_refused_not_crashed_on(translate, body):
    model = (
        CLAUDE
        if translate in (tr.openai_chat_to_anthropic, tr.openai_chat_to_anthropic_message)
        else GPT
    )
    with pytest.raises(tr.Untranslatable) as info:
        translate(body, model=model)
    assert info.value.feature.startswith("a malformed")


def test_responses_and_streams_that_cannot_be_expressed_are_refused():
    two = {
        "id": "x",
        "choices": [{"index": i, "message": {"role": "assistant", "content": "a"}} for i in (0, 1)],
    }
    with pytest.raises(tr.Untranslatable, match="2 choices"):
        tr.openai_chat_to_anthropic_message(two, model=CLAUDE)
    search = {**ANTHROPIC_TOOL_MESSAGE, "content": [
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
         "input": {"query": "x"}}]}  # fmt: skip
    Message.model_validate(search)
    with pytest.raises(tr.Untranslatable, match="server_tool_use"):
        tr.anthropic_message_to_openai_chat(search, model=GPT)
    stream = tr.OpenAIToAnthropicStream(model=CLAUDE)
    second = {
        "id": "c",
        "choices": [{"index": 1, "delta": {"content": "b"}, "finish_reason": None}],
    }
    with pytest.raises(tr.Untranslatable, match="n>1"):
        stream.feed(second)


# -- errors ------------------------------------------------------------------------------------

STATUS_ERRORS = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
}


@pytest.mark.parametrize("status", [*STATUS_ERRORS, 529])
def test_anthropic_error_reaches_an_openai_client_as_an_openai_error(
    fake, anthropic_client, openai_client, monkeypatch, status
):
    fake.enqueue(FakeReply(status=status, error_message=f"upstream says {status}"))
    with pytest.raises(anthropic.APIStatusError) as upstream:
        anthropic_client.messages.create(model=CLAUDE, max_tokens=5, messages=HI)
    response = upstream.value.response

    new_status, body = tr.error_to_openai(response.status_code, response.content)

    assert new_status == (503 if status == 529 else status)  # 529 is Anthropic's own
    error = ErrorObject.model_validate(body["error"])
    assert error.message == f"upstream says {status}"
    assert error.type == openai_wire._openai_error(new_status, None)["error"]["type"]
    # served to a real OpenAI client, it raises the exception it raises for that status
    monkeypatch.setattr(openai_wire, "_openai_error", lambda s, m: body)
    fake.enqueue(FakeReply(status=new_status))
    with pytest.raises(openai.APIStatusError) as served:
        openai_client.chat.completions.create(model=GPT, messages=HI)
    assert type(served.value).__name__ == STATUS_ERRORS.get(status, "InternalServerError")
    assert f"upstream says {status}" in served.value.message


@pytest.mark.parametrize("status", [*STATUS_ERRORS, 503])
def test_openai_error_reaches_an_anthropic_client_as_an_anthropic_error(
    fake, anthropic_client, openai_client, monkeypatch, status
):
    fake.enqueue(FakeReply(status=status, error_message=f"upstream says {status}"))
    with pytest.raises(openai.APIStatusError) as upstream:
        openai_client.chat.completions.create(model=GPT, messages=HI)
    response = upstream.value.response

    new_status, body = tr.error_to_anthropic(response.status_code, response.content)

    assert new_status == status
    parsed = ErrorResponse.model_validate(body)
    assert parsed.error.message == f"upstream says {status}"
    assert parsed.error.type == anthropic_wire._anthropic_error(status, None, "r")["error"]["type"]
    monkeypatch.setattr(anthropic_wire, "_anthropic_error", lambda s, m, r: body)
    fake.enqueue(FakeReply(status=new_status))
    with pytest.raises(anthropic.APIStatusError) as served:
        anthropic_client.messages.create(model=CLAUDE, max_tokens=5, messages=HI)
    assert isinstance(
        served.value, getattr(anthropic, STATUS_ERRORS.get(status, "InternalServerError"))
    )
    assert f"upstream says {status}" in str(served.value)


def test_an_error_body_in_no_known_format_keeps_its_text():
    status, body = tr.error_to_anthropic(502, b"<html><body>502 Bad Gateway</body></html>")
    assert status == 502
    assert "502 Bad Gateway" in ErrorResponse.model_validate(body).error.message
    status, body = tr.error_to_openai(504, b"")
    assert status == 504
    assert "504" in ErrorObject.model_validate(body["error"]).message
    # a body already in the caller's format keeps its message
    native = json.dumps({"error": {"message": "Bad key", "type": "invalid_request_error"}}).encode()
    assert tr.error_to_openai(401, native)[1]["error"]["message"] == "Bad key"
