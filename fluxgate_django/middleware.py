"""Attribute every LLM call made while serving a request to its user, team and URL.

Add ``"fluxgate_django.middleware.FluxGateContextMiddleware"`` to ``MIDDLEWARE`` after
``AuthenticationMiddleware``. For each request it sets a :class:`TrackingContext` with:

* ``user``: ``{"id": str(pk), "email": email, "pk": pk}`` for an authenticated user;
* ``session_id``: a fingerprint of the session key (see :func:`session_fingerprint`),
  when the request has a session (none is created);
* ``request_id``: the ``X-Request-ID`` header when it is well formed (at most 128 of
  ``A-Z a-z 0-9 . _ : -``), else a new uuid4 hex; echoed on the response;
* ``team``: the slug of the team named by the ``X-FluxGate-Team`` header if the user is a
  member of it (the header is ignored otherwise), else the user's team; a user in several
  teams is attributed to the first by name. One query, for authenticated users only (if
  it fails the request goes on without a team: tracking never breaks the site);
* ``feature``: the view name of the resolved URL (``"app:view"``), set in ``process_view``
  so that a ``tracking_context(feature=...)`` inside the view, being inner, wins.

The context is made current with ``set_context`` and reset in a ``finally``, so nothing
leaks into the next request served by the same thread or task. It is also available as
``request.fluxgate_context``. Streaming responses are iterated in the request's context,
so LLM calls made lazily while streaming are attributed too.

The middleware is sync and async capable: under ASGI it never touches the database
synchronously (``await request.auser()``, async ORM).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.db.models import Case, IntegerField, Value, When
from django.http import FileResponse, HttpRequest, HttpResponseBase
from django.utils.crypto import salted_hmac

from .context import TrackingContext, current_context, reset_context, set_context
from .errors import capture_internal_exceptions

REQUEST_ID_HEADER = "X-Request-ID"
TEAM_HEADER = "X-FluxGate-Team"

_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# The characters of a SlugField (validate_slug), bounded by Team.slug's max_length.
_VALID_TEAM_SLUG = re.compile(r"[-a-zA-Z0-9_]{1,100}")


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
    session = getattr(request, "session", None)
    key = getattr(session, "session_key", None) if session is not None else None
    return session_fingerprint(key) if key else None


def _user_value(user: Any) -> dict[str, Any] | None:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    email_field = getattr(user, "get_email_field_name", lambda: "email")()
    return {"id": str(user.pk), "email": getattr(user, email_field, "") or "", "pk": user.pk}


def _team_query(user_pk: Any, requested: str | None) -> Any:
    """The slug of the user's team: the requested one if they belong to it, else the first
    by name. A single query returning at most one row."""
    from .models import Team

    teams = Team.objects.filter(memberships__user_id=user_pk)
    if requested and _VALID_TEAM_SLUG.fullmatch(requested):
        teams = teams.annotate(
            _not_requested=Case(
                When(slug=requested, then=Value(0)), default=Value(1), output_field=IntegerField()
            )
        ).order_by("_not_requested", "name", "slug")
    else:
        teams = teams.order_by("name", "slug")
    return teams.values_list("slug", flat=True)[:1]


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
        user = _user_value(getattr(request, "user", None))
        team = None
        if user is not None:
            with capture_internal_exceptions("looking up the request's team"):
                team = _team_query(user["pk"], request.headers.get(TEAM_HEADER)).first()
        ctx = self._start(request, user, team)
        token = set_context(ctx)
        try:
            response = self.get_response(request)
            return self._finish(response)
        finally:
            reset_context(token)

    def process_view(
        self, request: HttpRequest, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> None:
        self._set_default_feature(request)

    # -- async --------------------------------------------------------------------------

    async def __acall__(self, request: HttpRequest) -> Any:
        user = await _auser_value(request)
        team = None
        if user is not None:
            with capture_internal_exceptions("looking up the request's team"):
                team = await _team_query(user["pk"], request.headers.get(TEAM_HEADER)).afirst()
        ctx = self._start(request, user, team)
        token = set_context(ctx)
        try:
            get_response: Callable[[HttpRequest], Awaitable[Any]] = self.get_response
            response = await get_response(request)
            return self._finish(response)
        finally:
            reset_context(token)

    async def _aprocess_view(
        self, request: HttpRequest, view_func: Any, view_args: Any, view_kwargs: Any
    ) -> None:
        self._set_default_feature(request)

    # -- shared -------------------------------------------------------------------------

    @staticmethod
    def _start(
        request: HttpRequest, user: dict[str, Any] | None, team: str | None
    ) -> TrackingContext:
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
    def _finish(response: HttpResponseBase) -> HttpResponseBase:
        ctx = current_context()
        response.setdefault(REQUEST_ID_HEADER, ctx.request_id or "")
        if response.streaming and not isinstance(response, FileResponse):
            _stream_in_context(response, ctx)
        return response


async def _auser_value(request: HttpRequest) -> dict[str, Any] | None:
    auser = getattr(request, "auser", None)
    if auser is not None:
        return _user_value(await auser())
    if not hasattr(request, "user"):
        return None
    # A custom authentication middleware without auser(): request.user may be lazy, so
    # it is evaluated in a thread.
    return await sync_to_async(_user_value)(request.user)


def _stream_in_context(response: Any, ctx: TrackingContext) -> None:
    """Iterate the response body with ``ctx`` current: it runs after the middleware returns."""
    content = response.streaming_content
    if response.is_async:

        async def agen(parts: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
            while True:
                token = set_context(ctx)
                try:
                    part = await anext(parts)
                except StopAsyncIteration:
                    return
                finally:
                    reset_context(token)
                yield part

        response.streaming_content = agen(aiter(content))
    else:

        def gen(parts: Iterator[bytes]) -> Iterator[bytes]:
            while True:
                token = set_context(ctx)
                try:
                    part = next(parts)
                except StopIteration:
                    return
                finally:
                    reset_context(token)
                yield part

        response.streaming_content = gen(iter(content))
