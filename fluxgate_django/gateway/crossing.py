"""A route's fallback across protocols: an OpenAI chat call answered by an Anthropic model,
or an Anthropic messages call by an OpenAI one, through ``translate.py``'s functions.

Only ``chat/completions`` and ``messages`` cross (the other endpoints have no
counterpart: a route that would send them across is refused with a 400). What can't be
translated (``translate.Untranslatable``) is a 400 naming it, before anything is sent.
The upstream's own answer is what is read for usage and cost; the caller gets it in its
own protocol. An answer the caller's protocol can't express (an Anthropic
``server_tool_use`` block, tool arguments that are not JSON, a malformed body) is a 502
naming it (:func:`untranslatable_answer`), mid-stream an error event in the caller's
protocol: its event is still recorded with the upstream's usage and cost.
"""

from __future__ import annotations

from typing import Any

from . import translate
from .protocols import ENDPOINTS, Endpoint, GatewayError
from .wire import SseEvent, sse_data, sse_named


def counterpart(endpoint: Endpoint, protocol: str) -> Endpoint:
    """The endpoint of ``protocol`` a call to ``endpoint`` goes to (GatewayError: none)."""
    if endpoint.protocol == protocol:
        return endpoint
    if endpoint.counterpart is None:
        raise GatewayError(
            400,
            "invalid_request",
            f"FluxGate: the {endpoint.protocol} {endpoint.name} endpoint can't fall back to a "
            f"{protocol} model (only chat/completions and messages cross protocols).",
        )
    return ENDPOINTS[(protocol, endpoint.counterpart)]


def request_body(caller: str, body: dict[str, Any], *, model: str) -> dict[str, Any]:
    """The upstream request of the other protocol for a caller's ``body``."""
    convert = (
        translate.openai_chat_to_anthropic
        if caller == "openai"
        else translate.anthropic_to_openai_chat
    )
    try:
        return dict(convert(body, model=model))
    except translate.Untranslatable as exc:
        raise GatewayError(
            400,
            "invalid_request",
            f"FluxGate: this request can't be sent to {model!r} in the other protocol: "
            f"{exc.feature} can't be translated.",
        ) from exc


_PROTOCOL_NAMES = {"openai": "OpenAI", "anthropic": "Anthropic"}


def untranslatable_answer(caller: str, source: str, exc: translate.Untranslatable) -> GatewayError:
    """The 502 of an upstream answer (from ``source``, a model) that can't be given in
    the ``caller``'s protocol. Not to be retried by the caller's SDK: the answer was
    served, and billed."""
    return GatewayError(
        502,
        "bad_gateway",
        f"FluxGate: the answer of {source!r} can't be given in the "
        f"{_PROTOCOL_NAMES.get(caller, caller)} protocol: {exc.feature} can't be translated.",
        headers={"x-should-retry": "false"},
    )


def response_body(
    caller: str, response: Any, *, model: str, source: str = "the upstream"
) -> dict[str, Any]:
    """The upstream's answer in the caller's protocol (GatewayError 502: it can't be)."""
    try:
        if caller == "openai":
            return dict(translate.anthropic_message_to_openai_chat(response, model=model))
        return dict(translate.openai_chat_to_anthropic_message(response, model=model))
    except translate.Untranslatable as exc:
        raise untranslatable_answer(caller, source, exc) from exc


def error(caller: str, status: int, content: bytes) -> tuple[int, dict[str, Any]]:
    """The upstream's error (status and body) in the caller's protocol."""
    if caller == "openai":
        return translate.error_to_openai(status, content)
    return translate.error_to_anthropic(status, content)


class StreamTranslator:
    """The upstream's stream events in the caller's protocol, as SSE bytes (an event the
    caller's protocol can't express: GatewayError 502, see :func:`untranslatable_answer`)."""

    def __init__(
        self, caller: str, *, model: str, include_usage: bool, source: str = "the upstream"
    ) -> None:
        self.caller = caller
        self.source = source
        self.to_openai: translate.AnthropicToOpenAIStream | None = None
        self.to_anthropic: translate.OpenAIToAnthropicStream | None = None
        if caller == "openai":
            self.to_openai = translate.AnthropicToOpenAIStream(
                model=model, include_usage=include_usage
            )
        else:
            self.to_anthropic = translate.OpenAIToAnthropicStream(model=model)

    def feed(self, event: SseEvent) -> list[bytes]:
        if event.data is None:  # OpenAI's [DONE] (the caller's end is written by finish())
            return []
        try:
            if self.to_openai is not None:
                return [sse_data(chunk) for chunk in self.to_openai.feed(event.event, event.data)]
            assert self.to_anthropic is not None
            return [sse_named(name, data) for name, data in self.to_anthropic.feed(event.data)]
        except translate.Untranslatable as exc:
            raise untranslatable_answer(self.caller, self.source, exc) from exc

    def finish(self) -> list[bytes]:
        if self.to_openai is not None:
            return [*(sse_data(chunk) for chunk in self.to_openai.finish()), b"data: [DONE]\n\n"]
        assert self.to_anthropic is not None
        return [sse_named(name, data) for name, data in self.to_anthropic.finish()]
