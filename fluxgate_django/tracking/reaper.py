"""Abandoned streams are recorded within seconds, not when the garbage collector runs.

A stream read half-way and dropped without ``close()`` is recorded when its generator is
finalised; the SDK's stream objects sit in reference cycles, so that is the cyclic
garbage collector's next run — minutes later under a busy server, with the call's budget
reservation held all that time. Two things end such a stream sooner, both through the
stream's one ending (:func:`end_stream`, then ``TrackedCall.end_stream``'s rules of an
incomplete stream), so it is recorded once:

* **idle timeout**: one daemon thread per process (started with the first stream) ends a
  stream nobody has read for ``FLUXGATE["STREAM_IDLE_TIMEOUT"]`` seconds. It holds only
  weak references to streams and their calls (never keeps one alive), sleeps until the
  next stream could be due, and never touches an event loop. A stream that is waiting
  for the provider (the caller is inside ``next()``) is being read, not idle;
* **request end**: the streams started while serving a Django request
  (:class:`RequestStreams`, set by the middleware) that are still open when its response
  is done: when the view returns, or — for a streaming response, whose body may be the
  stream itself — when the response is closed.

A stream ended this way and then read on keeps working; its end records nothing more.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

from ..conf import DEFAULTS, fluxgate_settings, on_reload

if TYPE_CHECKING:
    from .core import TrackedCall

logger = logging.getLogger("fluxgate")


class StreamWatch:
    """What is known of one live stream: since when it has been waiting for its reader
    (None: being read), its caller's stream object, and the lock its one ending takes."""

    __slots__ = ("_holder", "idle_since", "lock")

    def __init__(self, holder: Any) -> None:
        self.idle_since: float | None = time.monotonic()  # not read yet
        # Reentrant: a collection that a recording triggers may end another stream here.
        self.lock = threading.RLock()
        try:
            self._holder: Any = weakref.ref(holder) if holder is not None else None
        except TypeError:  # not weak-referenceable (Gemini's result sink: it holds no stream)
            self._holder = lambda: holder

    def holder(self) -> Any:
        return self._holder() if self._holder is not None else None


class _Reaper:
    """The registry of live streams, and the thread that ends the idle ones."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """A new state: at start and in a forked child (which has no reaper thread, may
        have inherited a held lock, and must not record its parent's streams)."""
        self._cond = threading.Condition()
        self._live: weakref.WeakKeyDictionary[TrackedCall, StreamWatch] = (
            weakref.WeakKeyDictionary()
        )
        self._thread: threading.Thread | None = None

    def add(self, call: TrackedCall, watch: StreamWatch) -> None:
        with self._cond:
            if not self._live:
                self._cond.notify()  # the thread may be waiting for a first stream
            self._live[call] = watch
            thread = self._thread
            if (thread is None or not thread.is_alive()) and idle_timeout() is not None:
                self._thread = threading.Thread(
                    target=self._run, name="fluxgate-stream-reaper", daemon=True
                )
                self._thread.start()

    def get(self, call: TrackedCall) -> StreamWatch | None:
        return self._live.get(call)

    def forget(self, call: TrackedCall) -> None:
        """Called by the reaper thread only, outside its iteration of the registry. (An
        ending does not forget: it may run in a finalizer, in the middle of an iteration;
        the entry of a collected call drops out by itself, safely.)"""
        with self._cond:
            self._live.pop(call, None)

    def wake(self) -> None:
        """Look again now (the timeout may have changed)."""
        with self._cond:
            self._cond.notify()

    def watched(self) -> list[TrackedCall]:
        """The calls whose streams are watched (an ended one until the thread's next look)."""
        with self._cond:
            return list(self._live)

    def _run(self) -> None:
        while True:
            try:
                delay = self.reap_idle()
            except Exception:  # never let the thread die
                logger.exception("FluxGate could not check streams for an idle timeout")
                delay = 1.0
            with self._cond:
                if delay is None and self._live and idle_timeout() is not None:
                    continue  # a stream came after the check
                self._cond.wait(delay)  # None: until a first stream, or a new setting

    def reap_idle(self) -> float | None:
        """End every stream idle for the timeout; seconds until one may be due next
        (None: nothing to watch, or no timeout)."""
        timeout = idle_timeout()
        with self._cond:
            live = list(self._live.items())
        if timeout is None or not live:
            return None
        now = time.monotonic()
        soonest = now + timeout  # a stream being read now is due no sooner than this
        reaped = False
        for call, watch in live:
            since = watch.idle_since
            if call.record is not None:
                self.forget(call)
            elif since is not None and since + timeout <= now:
                reaped = True
                try:
                    end_stream(call, idle_for=timeout)
                except Exception:
                    logger.exception("FluxGate could not record an idle stream")
                if call.record is not None or watch.idle_since == since:
                    self.forget(call)  # ended (or failed to: not tried again)
            elif since is not None:
                soonest = min(soonest, since + timeout)
        if reaped:
            _close_thread_connections()
        return max(0.01, soonest - time.monotonic())


_reaper = _Reaper()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reaper.reset)
on_reload(_reaper.wake)


def idle_timeout() -> float | None:
    """``FLUXGATE["STREAM_IDLE_TIMEOUT"]`` in seconds; None (or 0) turns it off."""
    value = fluxgate_settings.STREAM_IDLE_TIMEOUT
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        if value not in _reported:
            _reported.append(value)
            logger.error("FLUXGATE['STREAM_IDLE_TIMEOUT'] is not a number: %r", value)
        seconds = float(DEFAULTS["STREAM_IDLE_TIMEOUT"])
    return seconds if seconds > 0 else None


_reported: list[Any] = []  # bad timeout values, logged once each


def watch(call: TrackedCall, holder: Any) -> StreamWatch:
    """Start watching ``call``'s stream (``holder``: the caller's stream object, if any)."""
    stream_watch = StreamWatch(holder)
    _reaper.add(call, stream_watch)
    streams = _request_streams.get()
    if streams is not None:
        streams.add(call)
    return stream_watch


def end_stream(
    call: TrackedCall,
    holder: Any = None,
    *,
    completed: bool = False,
    error: BaseException | None = None,
    idle_for: float | None = None,
) -> None:
    """End ``call``'s stream: recorded once, whichever of its reader, its ``close()``,
    its collection, the idle timeout and the request's end gets here first or at once.

    ``holder`` gets ``.fluxgate`` (None: the caller's stream object, if still alive);
    ``idle_for``: only if the stream has still been waiting that long.
    """
    stream_watch = _reaper.get(call)
    if stream_watch is None:  # ended already (or never watched)
        call.end_stream(holder, completed=completed, error=error)
        return
    with stream_watch.lock:
        if idle_for is not None:
            since = stream_watch.idle_since
            if call.record is not None or since is None or time.monotonic() - since < idle_for:
                return  # read again meanwhile
        if holder is None:
            holder = stream_watch.holder()
        call.end_stream(holder, completed=completed, error=error)


class RequestStreams:
    """The streams started while serving one request, to end those still open when its
    response is done (:meth:`close`). Made current by the middleware (:meth:`activate`);
    a sync view run in a worker thread under ASGI shares it, as it shares the context."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: list[TrackedCall] = []

    def activate(self) -> Token[RequestStreams | None]:
        return _request_streams.set(self)

    @staticmethod
    def deactivate(token: Token[RequestStreams | None]) -> None:
        _request_streams.reset(token)

    def add(self, call: TrackedCall) -> None:
        self._calls.append(call)

    def close(self) -> None:
        """Record every stream of the request that is still open, as not completed."""
        calls, self._calls = self._calls, []
        for call in calls:
            if call.record is None:
                end_stream(call)


_request_streams: ContextVar[RequestStreams | None] = ContextVar(
    "fluxgate_request_streams", default=None
)


def _close_thread_connections() -> None:
    """Close the database connections the reaper thread opened to record (its own)."""
    try:
        from django.db import connections

        connections.close_all()
    except Exception:
        logger.exception("FluxGate could not close the stream reaper's connections")
