"""Streams: observe a call's events as the caller reads them, and record the call once.

A stream is recorded when it is exhausted, fails or is closed, when it is collected
(which the interpreter does to a generator dropped half-way), when nobody has read it
for ``FLUXGATE["STREAM_IDLE_TIMEOUT"]`` seconds, or when the request that started it is
done — whichever comes first, by :func:`end_stream` (see ``reaper.py``), which records
through :meth:`TrackedCall.end_stream` once (the rules of an incomplete stream are
:func:`fluxgate_django.outcomes.end_of_stream`). Transports use :func:`observe` on the
SDK's own iterator: the Stainless transport puts the observed iterator back inside the
SDK's stream object, the Gemini transport hands it out.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from .core import TrackedCall
from .reaper import StreamWatch, end_stream, watch

__all__ = ["end_stream", "observe"]


def observe(call: TrackedCall, iterator: Any, holder: Any = None) -> Any:
    """An iterator of the same kind (sync or async) as ``iterator`` that yields its events
    and records ``call`` when it ends; ``holder`` (if any) then gets ``.fluxgate``."""
    call.stream_started()
    stream_watch = watch(call, holder)
    if hasattr(iterator, "__anext__"):
        return _observe_async(call, stream_watch, iterator, holder)
    return _observe_sync(call, stream_watch, iterator, holder)


# ``watch.idle_since`` is set while the caller holds an event (the generator is suspended
# at ``yield``) and cleared while the caller waits for the next one.


def _observe_sync(
    call: TrackedCall, watch: StreamWatch, iterator: Iterator[Any], holder: Any
) -> Iterator[Any]:
    completed = False
    watch.idle_since = None
    try:
        for event in iterator:
            call.observe(event)
            watch.idle_since = time.monotonic()
            yield event
            watch.idle_since = None
        completed = True
    except Exception as exc:
        end_stream(call, holder, error=exc)
        raise
    finally:
        end_stream(call, holder, completed=completed)


async def _observe_async(
    call: TrackedCall, watch: StreamWatch, iterator: AsyncIterator[Any], holder: Any
) -> AsyncIterator[Any]:
    completed = False
    watch.idle_since = None
    try:
        async for event in iterator:
            call.observe(event)
            watch.idle_since = time.monotonic()
            yield event
            watch.idle_since = None
        completed = True
    except Exception as exc:
        end_stream(call, holder, error=exc)
        raise
    finally:
        end_stream(call, holder, completed=completed)
