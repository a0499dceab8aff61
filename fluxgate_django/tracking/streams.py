"""Streams: observe a call's events as the caller reads them, and record the call once.

A stream is recorded when it is exhausted, fails, or is closed — which the interpreter
also does to a generator that is dropped half-way — by :meth:`TrackedCall.end_stream`
(the rules of an incomplete stream are :func:`fluxgate_django.outcomes.end_of_stream`).
Transports use :func:`observe` on the SDK's own iterator: the Stainless transport puts the
observed iterator back inside the SDK's stream object, the Gemini transport hands it out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from .core import TrackedCall


def observe(call: TrackedCall, iterator: Any, holder: Any = None) -> Any:
    """An iterator of the same kind (sync or async) as ``iterator`` that yields its events
    and records ``call`` when it ends; ``holder`` (if any) then gets ``.fluxgate``."""
    call.stream_started()
    if hasattr(iterator, "__anext__"):
        return _observe_async(call, iterator, holder)
    return _observe_sync(call, iterator, holder)


def _observe_sync(call: TrackedCall, iterator: Iterator[Any], holder: Any) -> Iterator[Any]:
    completed = False
    try:
        for event in iterator:
            call.observe(event)
            yield event
        completed = True
    except Exception as exc:
        call.end_stream(holder, error=exc)
        raise
    finally:
        call.end_stream(holder, completed=completed)


async def _observe_async(
    call: TrackedCall, iterator: AsyncIterator[Any], holder: Any
) -> AsyncIterator[Any]:
    completed = False
    try:
        async for event in iterator:
            call.observe(event)
            yield event
        completed = True
    except Exception as exc:
        call.end_stream(holder, error=exc)
        raise
    finally:
        call.end_stream(holder, completed=completed)
