"""Gemini (``google-genai``): where calls are intercepted and how their usage is read.

google-genai is not a Stainless SDK, so there is no single ``client.request`` to wrap.
Every model call goes ``Models.generate_content`` → (automatic function calling and
automatic continuation loops) → ``Models._generate_content`` → one HTTP request; streams
the same way through ``_generate_content_stream``. FluxGate wraps those two methods *on the
client's own* ``Models`` and ``AsyncModels`` instances (``client.models``,
``client.aio.models``):

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
behind it once the stream is consumed, closed or dropped.

Usage: ``prompt_token_count`` includes cached tokens and ``candidates_token_count``
excludes thinking tokens, which are billed as output; tool-use prompt tokens (results of
built-in tools fed back to the model) are billed as input. Statuses from finish reasons:

=====================================================================  =================
``STOP``, ``CONTINUATION`` (an intermediate hop), unspecified          SUCCESS
``MAX_TOKENS``                                                         MAX_TOKENS
``SAFETY``, ``BLOCKLIST``, ``PROHIBITED_CONTENT``, ``SPII``,           CONTENT_FILTER
``LANGUAGE``, ``IMAGE_SAFETY``, ``IMAGE_PROHIBITED_CONTENT``,
``MODEL_ARMOR``, ``ESCALATION``
``RECITATION``, ``IMAGE_RECITATION``                                   RECITATION
``prompt_feedback.block_reason`` (prompt refused), ``PUP_LIMITED_...`` BLOCKED
``MISSING_THOUGHT_SIGNATURE`` (the request omitted them)               MALFORMED_REQUEST
``MALFORMED_FUNCTION_CALL``, ``UNEXPECTED_TOOL_CALL``,                 ERROR
``TOO_MANY_TOOL_CALLS``, ``MALFORMED_RESPONSE``, ``NO_IMAGE``,
``OTHER``, ``IMAGE_OTHER``
=====================================================================  =================

``MALFORMED_FUNCTION_CALL`` is ERROR, not MALFORMED_REQUEST: the request was accepted and
billed and it is the *model's* output that is unusable (a retry may well succeed), whereas
MALFORMED_REQUEST means "the provider rejected what you sent" (HTTP 400). The finish
reason is kept on the event for finer filtering. A blocked prompt's finish reason is
``BLOCKED:<block_reason>``.
"""

from __future__ import annotations

import functools
import inspect
from contextvars import ContextVar
from typing import Any

from ..budgets import might_apply
from ..conf import fluxgate_settings
from ..context import TrackingContext, current_context
from ..errors import capture_internal_exceptions
from ..outcomes import set_finish
from ..records import CallInfo, Status, Usage
from .core import _STATE_ATTR, SdkTypes, TrackedCall

OPERATION = "generate_content"


_NO_SDK_TYPES = SdkTypes(stream=(), raw_response=())


def normalise_gemini_usage(usage: Any) -> Usage | None:
    """``usage_metadata`` in FluxGate's convention (total input, total output)."""
    if usage is None:
        return None
    thoughts = getattr(usage, "thoughts_token_count", None) or 0
    return Usage(
        input_tokens=(usage.prompt_token_count or 0)
        + (getattr(usage, "tool_use_prompt_token_count", None) or 0),
        output_tokens=(usage.candidates_token_count or 0) + thoughts,
        reasoning_tokens=thoughts,
        cache_read_tokens=usage.cached_content_token_count or 0,
    )


def _name(value: Any) -> str:
    """An SDK enum member (or an unknown value passed through as a string) → its name."""
    return str(getattr(value, "value", value))


def model_name(model: Any) -> str:
    """``models/gemini-2.5-flash``, ``publishers/google/models/...`` → ``gemini-2.5-flash``."""
    name = str(model or "")
    if "/" in name and not name.startswith("tunedModels/"):
        name = name.rsplit("/", 1)[-1]
    return name


class _Chunks:
    """Reads model, finish reason, block reason and usage off responses or stream chunks.

    Within one streamed request every chunk's ``usage_metadata`` is the running total
    (google-genai's ``StreamContinuation`` relies on the same), so the last one is final.
    """

    __slots__ = ("block_reason", "finish_reason", "model", "usage")

    def __init__(self) -> None:
        self.model = ""
        self.finish_reason: Any = None
        self.block_reason: Any = None
        self.usage: Any = None

    def observe(self, chunk: Any) -> None:
        if not self.model:
            self.model = chunk.model_version or ""
        if chunk.usage_metadata is not None:
            self.usage = chunk.usage_metadata
        candidates = chunk.candidates
        if candidates and candidates[0].finish_reason is not None:
            self.finish_reason = candidates[0].finish_reason
        feedback = chunk.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            self.block_reason = feedback.block_reason

    def result(self, info: CallInfo) -> Usage | None:
        info.model = model_name(self.model) or info.requested_model
        if self.block_reason is not None:
            info.finish_reason = f"BLOCKED:{_name(self.block_reason)}"
            info.status = Status.BLOCKED
        elif self.finish_reason is not None:
            set_finish(info, "gemini", _name(self.finish_reason))
        return normalise_gemini_usage(self.usage)


class GeminiAdapter:
    """The :class:`~fluxgate_django.tracking.core.ProviderAdapter` for google-genai."""

    provider = "gemini"

    def operation(self, method: str, url: str) -> str | None:
        return None  # calls are intercepted per method, not per URL (see the module doc)

    def read_response(self, operation: str, response: Any, info: CallInfo) -> Usage | None:
        chunks = _Chunks()
        chunks.observe(response)
        return chunks.result(info)

    def stream_accumulator(self, operation: str) -> _Chunks:
        return _Chunks()

    def sdk_types(self) -> SdkTypes:
        return _NO_SDK_TYPES

    def helper_stream_classes(self) -> tuple[type, ...]:
        return ()

    def status_for_error(self, error: BaseException) -> Status:
        if isinstance(error, _api_error()) and getattr(error, "code", None) == 400:
            return Status.MALFORMED_REQUEST
        return Status.ERROR


@functools.cache
def _api_error() -> type:
    from google.genai.errors import APIError

    return APIError


# -- request view: for budget estimates and STORE_CONTENT only ----------------------------


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _part_view(part: Any) -> dict[str, Any]:
    if isinstance(part, str):
        return {"text": part}
    text = _get(part, "text")
    if text is not None:
        return {"text": text}
    call = _get(part, "function_call")
    if call is not None:
        return {"function_call": {"name": _get(call, "name"), "args": _get(call, "args")}}
    response = _get(part, "function_response")
    if response is not None:
        return {
            "function_response": {
                "name": _get(response, "name"),
                "response": _get(response, "response"),
            }
        }
    # Media and files: their kind only (never their bytes, which are not text to count).
    blob = _get(part, "inline_data") or _get(part, "file_data")
    kind = _get(blob, "mime_type") if blob is not None else _get(part, "mime_type")
    return {"type": str(kind or type(part).__name__)}


def _contents_view(contents: Any) -> list[dict[str, Any]]:
    """``contents`` in any form the SDK takes, as JSON: roles and text parts, media kinds."""
    items = contents if isinstance(contents, (list, tuple)) else [contents]
    view: list[dict[str, Any]] = []
    loose: list[dict[str, Any]] = []  # bare parts: the SDK makes them one user turn
    for item in items:
        parts = None if isinstance(item, str) else _get(item, "parts")
        if parts is None:
            loose.append(_part_view(item))
            continue
        if loose:
            view.append({"role": "user", "parts": loose})
            loose = []
        view.append({"role": _get(item, "role") or "user", "parts": [_part_view(p) for p in parts]})
    if loose:
        view.append({"role": "user", "parts": loose})
    return view


def _config_value(config: Any, name: str) -> Any:
    return None if config is None else _get(config, name)


def request_body(model: str, contents: Any, config: Any, *, full: bool) -> dict[str, Any]:
    """What TrackedCall reads of a request: model, output cap and (``full``) the text."""
    body: dict[str, Any] = {"model": model}
    limit = _config_value(config, "max_output_tokens")
    if isinstance(limit, int):
        body["max_output_tokens"] = limit
    if full:
        body["contents"] = _contents_view(contents)
        system = _config_value(config, "system_instruction")
        if system is not None:
            body["system"] = [p for c in _contents_view(system) for p in c["parts"]]
    return body


# -- instrumentation -----------------------------------------------------------------------


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


class _GeminiState:
    __slots__ = ("adapter", "bound")

    def __init__(self, adapter: GeminiAdapter, bound: TrackingContext) -> None:
        self.adapter = adapter
        self.bound = bound


def instrument_gemini_client(client: Any, adapter: GeminiAdapter, bound: TrackingContext) -> Any:
    """Track ``client``'s model calls (a ``genai.Client`` or ``client.aio``); returns it.

    Adds ``client.with_context(**fields)``: a tracked copy sharing the client's connections,
    with attribution bound. Instrumenting twice is a no-op.
    """
    if _STATE_ATTR in vars(client):
        return client
    state = _GeminiState(adapter, bound)
    for models in _model_modules(client):
        _instrument_models(models, state)
    client.__dict__[_STATE_ATTR] = state

    def with_context(**fields: Any) -> Any:
        """A tracked copy of this client whose calls carry these context fields."""
        return instrument_gemini_client(_fresh_copy(client), adapter, state.bound.merge(**fields))

    client.with_context = with_context
    return client


def _model_modules(client: Any) -> list[Any]:
    aio = client.__dict__.get("_aio")
    return [client._models] if aio is None else [client._models, aio._models]


def _fresh_copy(client: Any) -> Any:
    """A shallow copy of a ``Client`` / ``AsyncClient`` with its own model modules.

    It shares the original's API client (connections, credentials). ``Client`` closes its
    API client when closed or garbage-collected, which would break the original: a copy's
    ``close()`` therefore leaves the shared connections to the original.
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


def _close_shared() -> None:
    """A ``with_context`` copy's ``close()``: the connections belong to the original client."""


def _instrument_models(models: Any, state: _GeminiState) -> None:
    if "_generate_content" in vars(models):
        return  # already tracked (e.g. track_gemini(client.aio) of a tracked client)
    cls = type(models)
    if not (hasattr(cls, "_generate_content") and hasattr(cls, "_generate_content_stream")):
        raise TypeError(
            f"track_gemini() does not support this google-genai version: {cls.__name__} has "
            "no _generate_content / _generate_content_stream"
        )
    generate = models._generate_content
    stream = models._generate_content_stream
    public_stream = models.generate_content_stream
    if inspect.iscoroutinefunction(cls._generate_content):
        models._generate_content = _async_generate(state, generate)
        models._generate_content_stream = _async_stream(state, stream)

        async def generate_content_stream(*args: Any, **kwargs: Any) -> AsyncGeminiStream:
            return AsyncGeminiStream(await public_stream(*args, **kwargs))

    else:
        models._generate_content = _sync_generate(state, generate)
        models._generate_content_stream = _sync_stream(state, stream)

        def generate_content_stream(*args: Any, **kwargs: Any) -> GeminiStream:  # type: ignore[misc]
            return GeminiStream(public_stream(*args, **kwargs))

    functools.update_wrapper(generate_content_stream, public_stream)
    models.generate_content_stream = generate_content_stream


def _start(state: _GeminiState, kwargs: dict[str, Any], streamed: bool) -> TrackedCall | None:
    with capture_internal_exceptions("starting a tracked call"):
        ctx = current_context().overlay(state.bound)
        # The request's text is only looked at when a budget needs an estimate or content
        # is stored: walking the contents is not free.
        full = fluxgate_settings.STORE_CONTENT or might_apply(ctx)
        body = request_body(
            model_name(kwargs.get("model")), kwargs.get("contents"), kwargs.get("config"), full=full
        )
        return TrackedCall(state.adapter, OPERATION, body, ctx, streamed=streamed)
    return None


def _sync_generate(state: _GeminiState, original: Any) -> Any:
    def _generate_content(*args: Any, **kwargs: Any) -> Any:
        call = _start(state, kwargs, streamed=False)
        if call is None:
            return original(*args, **kwargs)
        if might_apply(call.ctx):
            call.reserve_budget()  # raises BudgetExceeded before anything is sent
        try:
            response = original(*args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        return call.succeed(response)

    return _generate_content


def _async_generate(state: _GeminiState, original: Any) -> Any:
    async def _generate_content(*args: Any, **kwargs: Any) -> Any:
        call = _start(state, kwargs, streamed=False)
        if call is None:
            return await original(*args, **kwargs)
        if might_apply(call.ctx):
            # One database round trip, which must not run on the event loop.
            await call.areserve_budget()
        try:
            response = await original(*args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        return call.succeed(response)

    return _generate_content


def _sync_stream(state: _GeminiState, original: Any) -> Any:
    # Called by the SDK's stream generator when the caller first iterates it, just before
    # the request is sent: the same moment the SDK itself raises its errors.
    def _generate_content_stream(*args: Any, **kwargs: Any) -> Any:
        call = _start(state, kwargs, streamed=True)
        if call is None:
            return original(*args, **kwargs)
        if might_apply(call.ctx):
            call.reserve_budget()
        # A generator: the request goes out, and its errors come, when it is iterated.
        return call.observe_iterator(original(*args, **kwargs), _stream_sink.get())

    return _generate_content_stream


def _async_stream(state: _GeminiState, original: Any) -> Any:
    async def _generate_content_stream(*args: Any, **kwargs: Any) -> Any:
        call = _start(state, kwargs, streamed=True)
        if call is None:
            return await original(*args, **kwargs)
        if might_apply(call.ctx):
            await call.areserve_budget()
        try:
            chunks = await original(*args, **kwargs)  # sends the request
        except BaseException as exc:
            call.fail(exc)
            raise
        return call.observe_iterator(chunks, _stream_sink.get())

    return _generate_content_stream
