"""The one tracking core shared by every provider SDK.

A tracked client is made of two parts, and the core does everything else (timing,
context, budgets, streams, errors, the record) once:

* a **usage reader** per provider (``protocols.UsageReader``: ``openai.py``,
  ``anthropic.py``, ``gemini_reader.py``): which operation a request is, and how to read
  usage, served model and finish reason off a response or a stream's events, and a
  status off an error;
* a **transport hook** per SDK family (``protocols.Transport``: ``stainless.py`` wraps
  ``client.request()`` of the OpenAI and Anthropic SDKs; ``gemini.py`` wraps google-genai's
  ``Models._generate_content`` / ``_generate_content_stream``): where calls are
  intercepted and what a request and a result look like there.

:func:`instrument` puts a transport on one client instance (the client keeps its type,
every other attribute is untouched) with one state and one ``with_context``;
:func:`tracked_method` is the one wrapper, for sync and async, plain and streamed calls;
:class:`TrackedCall` is one call in flight.

Only the provider call itself sits inside try/re-raise. FluxGate's own bookkeeping runs
inside ``capture_internal_exceptions`` so it can never break the caller's call.
"""

from __future__ import annotations

import contextlib
import time
import types
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from ..conf import fluxgate_settings
from ..context import TrackingContext
from ..errors import capture_internal_exceptions
from ..estimate import choices, input_tokens_bound, max_output_tokens
from ..exceptions import CallRefused
from ..guard import Reservation, acheck_budget, aresolve_context, check_budget, might_apply
from ..outcomes import end_of_stream
from ..pipeline import make_record, service_attempt, submit
from ..records import CallInfo, EventRecord, Usage
from .protocols import StreamAccumulator, Transport, UsageReader

_STATE_ATTR = "_fluxgate_state"

#: What a transport's ``unwrap`` returns for a body FluxGate can't read (a raw streaming
#: response): the call is recorded without usage.
UNREADABLE: Any = object()


class ClientState:
    """What a tracked client carries: how it is tracked, and the context bound to it."""

    __slots__ = ("bound", "reader", "transport")

    def __init__(self, transport: Transport, reader: UsageReader, bound: TrackingContext):
        self.transport = transport
        self.reader = reader
        self.bound = bound


def instrument(
    client: Any, transport: Transport, reader: UsageReader, bound: TrackingContext
) -> Any:
    """Track every LLM call ``client`` makes; returns ``client`` itself.

    Adds ``client.with_context(**fields)``: a tracked copy (sharing the connections) whose
    calls carry these context fields. Instrumenting twice is a no-op.
    """
    if _STATE_ATTR in vars(client):
        return client
    state = ClientState(transport, reader, bound)
    transport.install(client, state)
    client.__dict__[_STATE_ATTR] = state

    def with_context(**fields: Any) -> Any:
        """A tracked copy of this client whose calls carry these context fields."""
        return instrument(transport.copy(client), transport, reader, state.bound.merge(**fields))

    client.with_context = with_context
    return client


def is_instrumented(client: Any) -> bool:
    return _STATE_ATTR in vars(client)


def tracked_method(
    original: Callable[..., Any], state: ClientState, *, is_async: bool, stream: bool = False
) -> Callable[..., Any]:
    """The one wrapper around an SDK method that sends a request, sync or async.

    ``stream``: the method returns a bare (async) iterator of stream events; otherwise the
    transport tells a stream from a response per call.
    """
    transport = state.transport
    start, unwrap, deliver = transport.start, transport.unwrap, transport.deliver

    # (try/except rather than ``with capture_internal_exceptions``: free when nothing fails)
    def begin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> TrackedCall | None:
        try:
            return start(state, args, kwargs, stream)
        except Exception:
            with capture_internal_exceptions("starting a tracked call"):
                raise
            return None

    def response_of(call: TrackedCall, result: Any) -> Any:
        try:
            return unwrap(call, result)
        except Exception:
            with capture_internal_exceptions("reading a response"):
                raise
            return UNREADABLE

    if is_async:

        async def tracked_async(*args: Any, **kwargs: Any) -> Any:
            call = begin(args, kwargs)
            if call is None:
                return await original(*args, **kwargs)
            if might_apply(call.ctx):
                with _refusals_only():
                    call.reservation = await acheck_budget(**call.budget_request())
            else:
                with capture_internal_exceptions("looking up the call's context"):
                    await aresolve_context(call.ctx)  # the event's lookups, off the loop
            try:
                result = await original(*args, **kwargs)
            except BaseException as exc:
                call.fail(exc)
                raise
            response = response_of(call, result)
            if type(response) is types.CoroutineType:  # an async raw response's parse()
                with capture_internal_exceptions("reading a response"):
                    response = await response
                if type(response) is types.CoroutineType:  # parse() failed
                    response = UNREADABLE
            return deliver(call, result, response, stream)

        return tracked_async

    def tracked(*args: Any, **kwargs: Any) -> Any:
        call = begin(args, kwargs)
        if call is None:
            return original(*args, **kwargs)
        if might_apply(call.ctx):
            with _refusals_only():  # BudgetExceeded before anything is sent
                call.reservation = check_budget(**call.budget_request())
        try:
            result = original(*args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        return deliver(call, result, response_of(call, result), stream)

    return tracked


@contextlib.contextmanager
def _refusals_only() -> Iterator[None]:
    """A refused call (budget, unreachable budget store) propagates; a FluxGate bug doesn't."""
    try:
        yield
    except CallRefused:
        raise
    except Exception:
        with capture_internal_exceptions("reserving budget"):
            raise


class TrackedCall:
    """One call in flight: timing, context and the record made when it ends (once)."""

    __slots__ = (
        "__weakref__",
        "accumulator",
        "attempt",
        "body",
        "ctx",
        "first_chunk_at",
        "hidden",
        "info",
        "operation",
        "reader",
        "record",
        "reservation",
        "started",
        "tracking_id",
    )

    def __init__(
        self,
        reader: UsageReader,
        operation: str,
        body: dict[str, Any],
        ctx: TrackingContext,
        *,
        streamed: bool,
    ) -> None:
        self.reader = reader
        self.operation = operation
        self.body = body
        self.ctx = ctx
        self.tracking_id = uuid.uuid4()
        self.info = CallInfo(
            provider=reader.provider,
            operation=operation,
            requested_model=str(body.get("model") or ""),
            streamed=streamed,
        )
        self.accumulator: StreamAccumulator | None = None
        self.first_chunk_at: float | None = None
        #: Stream events the transport asked for and the caller did not (not shown).
        self.hidden: Callable[[Any], bool] | None = None
        self.record: EventRecord | None = None
        self.reservation: Reservation | None = None
        # Captured now: a stream may be read after the service's attempt scope has ended.
        self.attempt = service_attempt.get()
        self.started = time.perf_counter()

    # -- budgets ---------------------------------------------------------------------

    def budget_request(self) -> dict[str, Any]:
        """The arguments of ``guard.check_budget`` / ``acheck_budget`` for this call."""
        return {
            "ctx": self.ctx,
            "provider": self.info.provider,
            "model": self.info.requested_model,
            "input_tokens": input_tokens_bound(
                self.body, self.info.provider, self.info.requested_model
            ),
            "max_output_tokens": max_output_tokens(self.body, self.operation),
            "choices": choices(self.body),
            "operation": self.operation,
        }

    # -- outcomes --------------------------------------------------------------------

    def succeed(self, response: Any, wrapper: Any = None) -> EventRecord:
        """Record a complete response (``UNREADABLE``: one whose body can't be read);
        ``response`` and its ``wrapper`` (a raw-response object) get ``.fluxgate``."""
        usage = None
        if response is not UNREADABLE:
            usage = self.reader.read_response(self.operation, response, self.info)
        if usage is None:
            self.info.usage_reported = False
        record = self._finish(usage, content=_content(self.body, response))
        attach(response, record)
        if wrapper is not None and wrapper is not response:
            attach(wrapper, record)
        return record

    def fail(self, error: BaseException) -> None:
        """Record the call's error (which then propagates, with ``.fluxgate`` on it)."""
        with capture_internal_exceptions("recording an error"):
            billed = getattr(error, "completion", None)
            if isinstance(error, Exception) and billed is not None and hasattr(billed, "usage"):
                # The provider answered (and billed) but the SDK's parser rejected the answer,
                # e.g. parse() on a truncated reply: record it as the provider reported it.
                usage = self.reader.read_response(self.operation, billed, self.info)
            else:
                # KeyboardInterrupt, CancelledError...: ERROR (abandoned, not failed).
                self.info.status = self.reader.status_for_error(error)
                usage = None
            attach(error, self._finish(usage, error=error))

    def _finish(
        self,
        usage: Usage | None,
        *,
        error: BaseException | None = None,
        content: Any = None,
        extra_metadata: dict[str, Any] | None = None,
    ) -> EventRecord:
        now = time.perf_counter()
        ttft = stream_duration = None
        if self.first_chunk_at is not None:
            ttft = (self.first_chunk_at - self.started) * 1000
            stream_duration = (now - self.first_chunk_at) * 1000
        reservation = self.reservation
        self.record = record = make_record(
            self.info,
            usage,
            self.ctx,
            latency_ms=(now - self.started) * 1000,
            tracking_id=self.tracking_id,
            time_to_first_token_ms=ttft,
            stream_duration_ms=stream_duration,
            error=error,
            content=content,
            extra_metadata=extra_metadata,
            # Settled by the recorder with the event's cost.
            budget_reservation=reservation.as_record_field() if reservation else None,
            attempt=self.attempt,
        )
        return submit(record)

    # -- streams (see streams.py) ----------------------------------------------------

    def stream_started(self) -> None:
        self.info.streamed = True
        self.accumulator = self.reader.stream_accumulator(self.operation)

    def observe(self, event: Any) -> None:
        if self.first_chunk_at is None:
            self.first_chunk_at = time.perf_counter()
        with capture_internal_exceptions("reading a stream event"):
            self.accumulator.observe(event)  # type: ignore[union-attr]

    def end_stream(
        self, holder: Any, *, completed: bool = False, error: BaseException | None = None
    ) -> None:
        """Record the stream once, whether it completed, failed, was closed or dropped;
        ``holder`` (the caller's stream object, if any) gets ``.fluxgate``."""
        if self.record is not None:
            if holder is not None:
                attach(holder, self.record)
            return
        with capture_internal_exceptions("recording a stream"):
            if error is not None:
                self.info.status = self.reader.status_for_error(error)
            usage = self.accumulator.result(self.info) if self.accumulator else None
            if error is not None:
                record = self._finish(usage, error=error)
                attach(error, record)
            else:
                extra = end_of_stream(self.info, usage, completed=completed)
                record = self._finish(usage, extra_metadata=extra)
            if holder is not None:
                attach(holder, record)


def attach(obj: Any, record: EventRecord) -> None:
    """Set ``obj.fluxgate`` (the caller's view of the record), where ``obj`` takes it."""
    try:
        object.__setattr__(obj, "fluxgate", record.tracking_result())
    except (AttributeError, TypeError):
        pass


_CONTENT_KEYS = ("messages", "input", "prompt", "system", "contents")


def _content(body: dict[str, Any], response: Any) -> Any:
    if not fluxgate_settings.STORE_CONTENT:
        return None
    request = {k: body[k] for k in _CONTENT_KEYS if k in body}
    try:
        dumped = response.model_dump(mode="json", exclude_none=True)
    except Exception:
        dumped = None
    return {"request": request, "response": dumped}
