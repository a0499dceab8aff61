"""Gemini (``google-genai``): the transport hook.

google-genai is not a Stainless SDK, so there is no single ``client.request`` to wrap.
Every model call goes ``Models.generate_content`` → (automatic function calling and
automatic continuation loops) → ``Models._generate_content`` → one HTTP request; streams
the same way through ``_generate_content_stream``. The transport puts the core's
:func:`~.core.tracked_method` on those two methods *of the client's own* ``Models`` and
``AsyncModels`` instances (``client.models``, ``client.aio.models``):

* one event per HTTP request, i.e. per billed call — each round of automatic function
  calling and each continuation hop is its own event, as the provider bills them;
* the typed ``GenerateContentResponse`` is read as the SDK parsed it (no second parse),
  and gets ``.fluxgate``;
* ``genai.Client`` stays a ``genai.Client``; everything else on it (files, caches,
  ``count_tokens``, ``embed_content``, live...) passes through untouched; ``client.chats``
  goes through the tracked ``models`` and is tracked.

The SDK's streams are bare generators, which cannot carry ``.fluxgate``, so the public
``generate_content_stream`` returns the generator wrapped in a thin iterator
(:class:`GeminiStream` / :class:`AsyncGeminiStream`) that shows the result of the request
behind it once the stream is consumed, closed or dropped. How usage, finish reasons and
statuses are read: ``gemini_reader.py``.
"""

from __future__ import annotations

import functools
import inspect
from contextvars import ContextVar
from typing import Any

from ..conf import fluxgate_settings
from ..context import current_context
from ..errors import capture_internal_exceptions
from ..guard import might_apply
from .core import _STATE_ATTR, ClientState, TrackedCall, tracked_method
from .gemini_reader import (
    OPERATION,
    GeminiAdapter,
    GeminiReader,
    model_name,
    normalise_gemini_usage,
    request_body,
)
from .streams import observe

__all__ = [
    "OPERATION",
    "AsyncGeminiStream",
    "GeminiAdapter",
    "GeminiReader",
    "GeminiStream",
    "GeminiTransport",
    "model_name",
    "normalise_gemini_usage",
    "request_body",
]


class _Sink:
    """Where a stream's TrackingResult lands (kept apart from the stream: no ref cycle)."""

    __slots__ = ("fluxgate",)

    def __init__(self) -> None:
        self.fluxgate: Any = None


#: The sink of the public stream being iterated, for the request(s) started inside it.
_stream_sink: ContextVar[_Sink | None] = ContextVar("fluxgate_gemini_stream", default=None)


class _TrackedGenerator:
    """The SDK's (async) generator, plus ``.fluxgate`` once it has ended; every other
    attribute is the generator's."""

    __slots__ = ("_chunks", "_sink")

    def __init__(self, chunks: Any) -> None:
        self._chunks = chunks
        self._sink = _Sink()

    @property
    def fluxgate(self) -> Any:
        """FluxGate's TrackingResult, once the stream is consumed, closed or dropped."""
        return self._sink.fluxgate

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chunks, name)


class GeminiStream(_TrackedGenerator):
    """``generate_content_stream()``'s generator, plus ``.fluxgate`` once it has ended.

    With automatic function calling a stream spans several requests: ``.fluxgate`` is the
    last one's.
    """

    __slots__ = ()

    def __iter__(self) -> GeminiStream:
        return self

    def __next__(self) -> Any:
        token = _stream_sink.set(self._sink)
        try:
            return next(self._chunks)
        finally:
            _stream_sink.reset(token)

    def close(self) -> None:
        self._chunks.close()


class AsyncGeminiStream(_TrackedGenerator):
    """``aio.models.generate_content_stream()``'s async generator, plus ``.fluxgate``."""

    __slots__ = ()

    def __aiter__(self) -> AsyncGeminiStream:
        return self

    async def __anext__(self) -> Any:
        token = _stream_sink.set(self._sink)
        try:
            return await self._chunks.__anext__()
        finally:
            _stream_sink.reset(token)

    async def aclose(self) -> None:
        await self._chunks.aclose()


class GeminiTransport:
    """Wraps a google-genai client's model modules (see the module doc)."""

    def install(self, client: Any, state: ClientState) -> None:
        for models in _model_modules(client):
            _instrument_models(models, state)

    def copy(self, client: Any) -> Any:
        """A shallow copy of a ``Client`` / ``AsyncClient`` with its own model modules.

        It shares the original's API client (connections, credentials). ``Client`` closes
        its API client when closed or garbage-collected, which would break the original: a
        copy's ``close()`` therefore leaves the shared connections to the original.
        """
        new = object.__new__(type(client))
        new.__dict__.update(
            (k, v) for k, v in vars(client).items() if k not in (_STATE_ATTR, "with_context")
        )
        api_client = client._api_client
        new._models = type(client._models)(api_client)
        aio = client.__dict__.get("_aio")
        if aio is not None:
            new._aio = type(aio)(api_client)
            new.close = _close_shared
        return new

    def start(
        self, state: ClientState, args: tuple[Any, ...], kwargs: dict[str, Any], stream: bool
    ) -> TrackedCall | None:
        endpoint = "streamGenerateContent" if stream else "generateContent"
        operation = state.reader.operation("post", endpoint)
        if operation is None:
            return None
        # The request's text is only looked at when a budget needs an estimate or content
        # is stored: walking the contents is not free.
        ctx = current_context().overlay(state.bound)
        full = fluxgate_settings.STORE_CONTENT or might_apply(ctx)
        model = model_name(kwargs.get("model"))
        body = request_body(model, kwargs.get("contents"), kwargs.get("config"), full=full)
        return TrackedCall(state.reader, operation, body, ctx, streamed=stream)

    def unwrap(self, call: TrackedCall, result: Any) -> Any:
        return result

    def deliver(self, call: TrackedCall, result: Any, response: Any, stream: bool) -> Any:
        if stream:
            # The SDK calls _generate_content_stream from inside the public stream as it is
            # first iterated: that stream's sink is current. (Sync: a generator, whose
            # request goes out, and whose errors come, as it is iterated.)
            with capture_internal_exceptions("observing a stream"):
                return observe(call, result, _stream_sink.get())
            return result
        with capture_internal_exceptions("recording a response"):
            call.succeed(response)
        return result


def _model_modules(client: Any) -> list[Any]:
    aio = client.__dict__.get("_aio")
    return [client._models] if aio is None else [client._models, aio._models]


def _close_shared() -> None:
    """A ``with_context`` copy's ``close()``: the connections belong to the original client."""


def _instrument_models(models: Any, state: ClientState) -> None:
    if "_generate_content" in vars(models):
        return  # already tracked (e.g. track_gemini(client.aio) of a tracked client)
    cls = type(models)
    if not (hasattr(cls, "_generate_content") and hasattr(cls, "_generate_content_stream")):
        raise TypeError(
            f"track_gemini() does not support this google-genai version: {cls.__name__} has "
            "no _generate_content / _generate_content_stream"
        )
    is_async = inspect.iscoroutinefunction(cls._generate_content)
    models._generate_content = tracked_method(models._generate_content, state, is_async=is_async)
    models._generate_content_stream = tracked_method(
        models._generate_content_stream, state, is_async=is_async, stream=True
    )
    public_stream = models.generate_content_stream
    if is_async:

        async def generate_content_stream(*args: Any, **kwargs: Any) -> AsyncGeminiStream:
            return AsyncGeminiStream(await public_stream(*args, **kwargs))

    else:

        def generate_content_stream(*args: Any, **kwargs: Any) -> GeminiStream:  # type: ignore[misc]
            return GeminiStream(public_stream(*args, **kwargs))

    functools.update_wrapper(generate_content_stream, public_stream)
    models.generate_content_stream = generate_content_stream
