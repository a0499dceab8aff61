"""Attribute every LLM call made while serving a request to its user, team and URL.

Add ``"fluxgate_django.middleware.FluxGateContextMiddleware"`` to ``MIDDLEWARE`` after
``AuthenticationMiddleware``. For each request it sets a :class:`TrackingContext` with:

* ``user``: ``{"id": str(pk), "email": email, "pk": pk}`` for an authenticated user
  (None for an anonymous one);
* ``team``: the slug of the request's team, by this rule: the team named by the
  ``X-FluxGate-Team`` header if the user is a member of it (the header is ignored
  otherwise); else the membership the user marked as default
  (``TeamMembership.is_default``); else the user's only team if they have exactly one;
  else none (see :mod:`fluxgate_django.teams`);
* ``session_id``: a fingerprint of the session key (see :func:`session_fingerprint`),
  when the request has a session cookie (none is created);
* ``request_id``: the ``X-Request-ID`` header when it is well formed (at most 128 of
  ``A-Z a-z 0-9 . _ : -``), else a new uuid4 hex; echoed on the response;
* ``feature``: the view name of the resolved URL (``"app:view"``), set in ``process_view``
  so that a ``tracking_context(feature=...)`` inside the view, being inner, wins.

**No queries**: a request that makes no LLM call costs FluxGate no database query. The
user and the team are :class:`~fluxgate_django.context.Deferred` values, looked up on
first use — by the budget check or the event of the request's first LLM call — and then
kept for the request (the team also in :mod:`fluxgate_django.teams`' cache, for
``BUDGET_CACHE_SECONDS``). Reading ``request.user`` is not free (Django's lazy user loads
the session and then the user), so it is read only then too; if another middleware has
already loaded the user, its values are taken at once. The session fingerprint comes
from the session cookie, which needs no query. Code that reads
``request.fluxgate_context`` or ``current_context()`` gets the plain values with
:func:`fluxgate_django.context.resolved`.

The context is made current with ``set_context`` and reset in a ``finally``, so nothing
leaks into the next request served by the same thread or task. It is also available as
``request.fluxgate_context``. Streaming responses are iterated in the request's context,
so LLM calls made lazily while streaming are attributed too.

**Abandoned streams**: an LLM stream started while serving the request and still open
when the response is done is recorded then (as not completed; see
:mod:`fluxgate_django.tracking.reaper`): when the view returns, or, for a streaming
response — whose body may be reading that very stream — when the server closes the
response, after sending the body (or losing the client).

The middleware is sync and async capable. Under ASGI it does no I/O at all; the lookups
run where a call needs them, off the event loop (the budget check of an async call runs
in a worker thread and resolves the team — and with it the user — there). A lookup that
is first needed on the event loop itself (e.g. a view that sets its own ``team`` and has
no budget to check) runs in a short-lived worker thread, because the ORM must not run on
the loop; the loop waits for that one lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction
from django.http import FileResponse, HttpRequest, HttpResponseBase
from django.utils.crypto import salted_hmac
from django.utils.functional import LazyObject, empty

from .context import Deferred, TrackingContext, current_context, reset_context, set_context
from .errors import capture_internal_exceptions
from .teams import RequestTeam
from .tracking.reaper import RequestStreams

REQUEST_ID_HEADER = "X-Request-ID"
TEAM_HEADER = "X-FluxGate-Team"

_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_UNSET: Any = object()


def request_id_for(request: HttpRequest) -> str:
    """The request's ``X-Request-ID`` if it is safe to log and echo, else a new id."""
    supplied = request.headers.get(REQUEST_ID_HEADER, "")
    if _VALID_REQUEST_ID.fullmatch(supplied):
        return supplied
    return uuid.uuid4().hex


def session_fingerprint(session_key: str) -> str:
    """A stable, non-reversible id for a session (32 hex chars).

    The session key itself is a login credential: events are readable by admins and, via
    the API, by holders of a team's API key, so they carry this keyed hash instead. Compute
    it for a known session to find its events.
    """
    return salted_hmac("fluxgate_django.session_id", session_key).hexdigest()[:32]


def _session_id(request: HttpRequest) -> str | None:
    # session_key is the cookie's value: reading it does not load the session.
    session = getattr(request, "session", None)
    key = getattr(session, "session_key", None) if session is not None else None
    return session_fingerprint(key) if key else None


def _user_value(user: Any) -> dict[str, Any] | None:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    email_field = getattr(user, "get_email_field_name", lambda: "email")()
    return {"id": str(user.pk), "email": getattr(user, email_field, "") or "", "pk": user.pk}


def _is_loaded(user: Any) -> bool:
    """Can ``user`` be read without a query? (Not a lazy user still to be loaded.)"""
    return not isinstance(user, LazyObject) or user._wrapped is not empty


def _off_the_loop(load: Callable[[], Any]) -> Any:
    """``load()``, in a worker thread if this thread runs an event loop (no ORM there)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return load()
    outcome: list[Any] = []

    def work() -> None:
        from django.db import connections

        try:
            outcome.append((True, load()))
        except BaseException as exc:
            outcome.append((False, exc))
        finally:
            connections.close_all()  # this thread's own connections

    worker = threading.Thread(target=work, name="fluxgate-request-lookup", daemon=True)
    worker.start()
    worker.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


class RequestUser(Deferred):
    """The request's user as a context value, ``{"id", "email", "pk"}`` or None: read
    from ``request.user`` on first use (that loads the session and the user), then kept."""

    __slots__ = ("_lock", "_request", "_value")

    def __init__(self, request: HttpRequest) -> None:
        self._request: HttpRequest | None = request
        self._value: Any = _UNSET
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._value is not _UNSET

    def ready(self) -> bool:
        return self.loaded

    def resolve(self) -> dict[str, Any] | None:
        if self._value is _UNSET:
            with self._lock:
                if self._value is _UNSET:
                    self._value = _off_the_loop(self._load)
                    self._request = None  # not kept alive by contexts that outlive it
        return self._value  # type: ignore[no-any-return]

    def _load(self) -> dict[str, Any] | None:
        request = self._request
        user = getattr(request, "user", None)
        if user is None and getattr(request, "auser", None) is not None:
            user = async_to_sync(request.auser)()  # type: ignore[union-attr]
        return _user_value(user)

    def __repr__(self) -> str:
        return f"RequestUser({'?' if self._value is _UNSET else self._value!r})"


class _LazyUserTeam(RequestTeam):
    """:class:`~fluxgate_django.teams.RequestTeam` for a user not loaded yet: the user's
    pk is known only once :class:`RequestUser` has read it."""

    __slots__ = ("_user",)

    def __init__(self, user: RequestUser, requested: str | None) -> None:
        super().__init__(None, requested)
        self._user = user

    def cached(self) -> tuple[bool, str | None]:
        if not self._user.loaded:
            return False, None  # unknown without a query: the budget guard resolves it
        user = self._user.resolve()  # loaded: no query
        if user is None:
            return True, None
        self.user_pk = user["pk"]
        return super().cached()

    def resolve(self) -> str | None:
        user = self._user.resolve()
        if user is None:
            return None  # anonymous: no team, and no query for one
        self.user_pk = user["pk"]
        if super().cached()[0]:
            return super().resolve()  # known: no query
        return _off_the_loop(super().resolve)  # type: ignore[no-any-return]


def _user_and_team(request: HttpRequest) -> tuple[Any, Any]:
    """The context's ``user`` and ``team`` values for ``request``, without a query."""
    if not hasattr(request, "user") and not hasattr(request, "auser"):
        return None, None  # no authentication middleware
    requested = request.headers.get(TEAM_HEADER)
    user = getattr(request, "user", None)
    if user is not None and _is_loaded(user):  # already loaded by other code: free to read
        value = _user_value(user)
        return value, (RequestTeam(value["pk"], requested) if value is not None else None)
    lazy = RequestUser(request)
    return lazy, _LazyUserTeam(lazy, requested)


class FluxGateContextMiddleware:
    """Sets the tracking context (user, team, session, request id, feature) per request."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
            # Django runs a sync process_view in a thread under ASGI: match our mode instead.
            self.process_view = self._aprocess_view  # type: ignore[method-assign,assignment]

    # -- sync ---------------------------------------------------------------------------

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        with self._serving(request) as streams:
            return self._finish(self.get_response(request), streams)

    def process_view(
        self, request: HttpRequest, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> None:
        self._set_default_feature(request)

    # -- async --------------------------------------------------------------------------

    async def __acall__(self, request: HttpRequest) -> Any:
        with self._serving(request) as streams:
            get_response: Callable[[HttpRequest], Awaitable[Any]] = self.get_response
            return self._finish(await get_response(request), streams)

    async def _aprocess_view(
        self, request: HttpRequest, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> None:
        self._set_default_feature(request)

    # -- shared -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _serving(self, request: HttpRequest) -> Iterator[RequestStreams]:
        """The request's context and its LLM streams, current while it is served; reset
        after, so nothing leaks into the next request of this thread or task."""
        token = set_context(self._start(request))
        streams = RequestStreams()
        streams_token = streams.activate()
        try:
            yield streams
        except BaseException:
            _end_streams(streams)
            raise
        finally:
            streams.deactivate(streams_token)
            reset_context(token)

    @staticmethod
    def _start(request: HttpRequest) -> TrackingContext:
        user, team = _user_and_team(request)
        ctx = current_context().merge(
            user=user,
            team=team,
            session_id=_session_id(request),
            request_id=request_id_for(request),
        )
        request.fluxgate_context = ctx  # type: ignore[attr-defined]
        return ctx

    @staticmethod
    def _set_default_feature(request: HttpRequest) -> None:
        # Only inside our own __call__ (whose reset undoes this set), never on its own, e.g.
        # through decorator_from_middleware, where nothing would reset it.
        if getattr(request, "fluxgate_context", None) is None:
            return
        ctx = current_context()
        view_name = getattr(request.resolver_match, "view_name", None)
        if view_name and ctx.feature is None:
            ctx = ctx.merge(feature=view_name)
            request.fluxgate_context = ctx  # type: ignore[attr-defined]
            set_context(ctx)

    @staticmethod
    def _finish(response: HttpResponseBase, streams: RequestStreams) -> HttpResponseBase:
        ctx = current_context()
        response.setdefault(REQUEST_ID_HEADER, ctx.request_id or "")
        if not response.streaming:
            _end_streams(streams)
            return response
        if not isinstance(response, FileResponse):
            _stream_in_context(response, ctx, streams)
        # The body may be one of the request's LLM streams, read as it is sent: the
        # request's streams end when the server closes the response, after the body's own
        # close (Django's close hooks, where a streaming response puts its body's close).
        closers = response._resource_closers  # type: ignore[attr-defined]
        closers.append(functools.partial(_end_streams, streams))
        return response


def _end_streams(streams: RequestStreams) -> None:
    """Record the request's LLM streams that are still open (abandoned by the view)."""
    with capture_internal_exceptions("ending the request's streams"):
        streams.close()


def _stream_in_context(response: Any, ctx: TrackingContext, streams: RequestStreams) -> None:
    """Iterate the response body with ``ctx`` (and the request's streams) current: it runs
    after the middleware returns."""
    content = response.streaming_content
    if response.is_async:

        async def agen(parts: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
            while True:
                token = set_context(ctx)
                streams_token = streams.activate()
                try:
                    part = await anext(parts)
                except StopAsyncIteration:
                    return
                finally:
                    streams.deactivate(streams_token)
                    reset_context(token)
                yield part

        response.streaming_content = agen(aiter(content))
    else:

        def gen(parts: Iterator[bytes]) -> Iterator[bytes]:
            while True:
                token = set_context(ctx)
                streams_token = streams.activate()
                try:
                    part = next(parts)
                except StopIteration:
                    return
                finally:
                    streams.deactivate(streams_token)
                    reset_context(token)
                yield part

        response.streaming_content = gen(iter(content))
