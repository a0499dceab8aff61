"""FluxGateContextMiddleware: who and what each request's LLM calls are attributed to.

The user and the team are lazy (``Deferred``) values: the middleware makes no query, and
they are looked up when a call needs them. The views of tests/views.py echo the context
as JSON and show such a value as ``LAZY``; the tests read what it stands for from the
request's ``fluxgate_context`` (:func:`attribution`) or from the events of real calls.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from asgiref.sync import async_to_sync, iscoroutinefunction
from django.contrib.auth import get_user_model
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.test import AsyncClient, AsyncRequestFactory, Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import path
from django.utils.functional import SimpleLazyObject, empty

from fluxgate_django import current_context, flush, teams, tracking_context
from fluxgate_django.context import EMPTY_CONTEXT, Deferred, TrackingContext, resolved
from fluxgate_django.middleware import FluxGateContextMiddleware, session_fingerprint
from fluxgate_django.models import Event, Team, TeamMembership
from fluxgate_django.testing import FakeProvider, FakeReply
from tests import urls, views

pytestmark = pytest.mark.django_db

User = get_user_model()
HEX32 = re.compile(r"[0-9a-f]{32}")
#: How tests/views.py's JSON shows a Deferred (lazy) user or team.
LAZY = "<lazy>"


def _shown(value: Any) -> Any:
    return LAZY if isinstance(value, Deferred) else value


def _context_json(ctx: TrackingContext) -> dict[str, Any]:
    """tests/views.py's ``context_json``, with lazy values shown, not looked up."""
    return {
        "feature": ctx.feature,
        "user": _shown(ctx.user),
        "team": _shown(ctx.team),
        "session_id": ctx.session_id,
        "request_id": ctx.request_id,
    }


@pytest.fixture(autouse=True)
def _lazy_values_as_json(monkeypatch: Any) -> Iterator[None]:
    monkeypatch.setattr(views, "context_json", _context_json)
    teams.forget()  # rows are rolled back between tests (no signal); SQLite reuses ids
    yield
    teams.forget()


def _untouched(request: HttpRequest) -> dict[str, bool]:
    """Did anything load the request's user or session?"""
    session = getattr(request, "session", None)
    return {
        "user_evaluated": getattr(request.user, "_wrapped", empty) is not empty,
        "session_loaded": hasattr(session, "_session_cache"),
    }


def plain(request: HttpRequest) -> JsonResponse:
    """A view that touches neither the user, nor the session, nor an LLM."""
    return JsonResponse(_untouched(request))


async def aplain(request: HttpRequest) -> JsonResponse:
    return plain(request)


async def aresolving(request: HttpRequest) -> JsonResponse:
    """Looks the user and team up on the event loop itself (no budget check before)."""
    ctx = current_context()
    return JsonResponse({"user": resolved(ctx.user), "team": resolved(ctx.team)})


#: The test URLs plus this module's views (``@pytest.mark.urls(__name__)``).
urlpatterns = [
    *urls.urlpatterns,
    path("ctx/plain/", plain, name="plain"),
    path("ctx/aplain/", aplain, name="aplain"),
    path("ctx/aresolving/", aresolving, name="aresolving"),
]


def attribution(response: Any) -> tuple[Any, Any]:
    """``(user, team)`` the request's LLM calls are attributed to (looked up now)."""
    request = getattr(response, "wsgi_request", None) or response.asgi_request
    ctx = request.fluxgate_context
    return resolved(ctx.user), resolved(ctx.team)


@pytest.fixture
def make_user() -> Callable[..., Any]:
    def make(name: str = "alice", *teams: Team) -> Any:
        user = User.objects.create_user(name, email=f"{name}@example.com", password="pw")
        for team in teams:
            TeamMembership.objects.create(user=user, team=team)
        return user

    return make


@pytest.fixture
def make_team() -> Callable[[str], Team]:
    # Unique slugs: the recorder caches slug -> id for a minute, across tests.
    def make(name: str) -> Team:
        return Team.objects.create(name=name, slug=f"{name.lower()}-{uuid.uuid4().hex[:8]}")

    return make


@pytest.fixture
def llm_settings(settings: Any, fake: FakeProvider) -> FakeProvider:
    """Point the views' OpenAI client (built from FLUXGATE settings) at the fake provider."""
    settings.FLUXGATE = {
        **settings.FLUXGATE,
        "PROVIDERS": {"openai": {"api_key": "sk-test-key", "base_url": fake.openai_base_url}},
    }
    return fake


def session_key(client: Client) -> str:
    key = client.session.session_key
    assert key is not None
    return key


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def expected_user(user: Any) -> dict[str, Any]:
    return {"id": str(user.pk), "email": user.email, "pk": user.pk}


# -- what the context holds ----------------------------------------------------------------


def test_sync_view_sees_request_context(make_user: Any, make_team: Any) -> None:
    team = make_team("Alpha")
    user = make_user("alice", team)
    client = logged_in(user)

    response = client.get("/ctx/echo/")

    data = response.json()
    assert (data["user"], data["team"]) == (LAZY, LAZY)  # looked up when a call needs them
    assert attribution(response) == (expected_user(user), team.slug)
    assert data["feature"] == "echo"  # the URL's view name
    assert data["session_id"] == session_fingerprint(session_key(client))
    assert HEX32.fullmatch(data["request_id"])
    assert response["X-Request-ID"] == data["request_id"]
    assert current_context() is EMPTY_CONTEXT


def test_session_key_itself_is_not_exposed(make_user: Any) -> None:
    client = logged_in(make_user())
    data = client.get("/ctx/echo/").json()
    assert data["session_id"] != session_key(client)
    assert session_key(client) not in json.dumps(data)


def test_anonymous_request(make_team: Any) -> None:
    make_team("Alpha")
    client = Client()
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/ctx/echo/", HTTP_X_FLUXGATE_TEAM="alpha")
        assert attribution(response) == (None, None)
    data = response.json()
    assert data["session_id"] is None  # no session was created
    assert data["feature"] == "echo"
    assert "sessionid" not in response.cookies
    assert not queries.captured_queries  # not even to find out that there is no team


def test_async_view_sees_request_context(make_user: Any, make_team: Any) -> None:
    team = make_team("Alpha")
    user = make_user("alice", team)

    async def run() -> tuple[Any, str]:
        client = AsyncClient()
        await client.aforce_login(user)
        response = await client.get("/ctx/aecho/", headers={"X-Request-ID": "req-async-1"})
        return response, (await client.asession()).session_key or ""

    response, session_key = async_to_sync(run)()
    data = response.json()
    assert (data["user"], data["team"]) == (LAZY, LAZY)
    assert attribution(response) == (expected_user(user), team.slug)
    assert data["feature"] == "aecho"
    assert data["session_id"] == session_fingerprint(session_key)
    assert data["request_id"] == "req-async-1"
    assert data["unchanged"] is True
    assert data["user_evaluated"] is False  # the middleware did not load the user
    assert response["X-Request-ID"] == "req-async-1"
    assert current_context() is EMPTY_CONTEXT


def test_async_anonymous_request() -> None:
    async def run() -> Any:
        return await AsyncClient().get("/ctx/aecho/")

    response = async_to_sync(run)()
    assert attribution(response) == (None, None)
    data = response.json()
    assert data["session_id"] is None
    assert data["feature"] == "aecho"


# -- no queries ----------------------------------------------------------------------------


@pytest.mark.urls(__name__)
def test_request_without_llm_call_costs_no_query(
    make_user: Any, make_team: Any, django_assert_num_queries: Any
) -> None:
    alpha, beta = make_team("Alpha"), make_team("Beta")
    user = make_user("alice", alpha, beta)
    client = logged_in(user)
    with django_assert_num_queries(0):
        response = client.get("/ctx/plain/", headers={"X-FluxGate-Team": beta.slug})
    assert response.json() == {"user_evaluated": False, "session_loaded": False}
    ctx: TrackingContext = response.wsgi_request.fluxgate_context  # type: ignore[attr-defined]
    assert ctx.session_id == session_fingerprint(session_key(client))  # from the cookie
    assert ctx.feature == "plain"
    assert attribution(response) == (expected_user(user), beta.slug)


@pytest.mark.urls(__name__)
def test_async_request_without_llm_call_costs_no_query(
    make_user: Any, make_team: Any, django_assert_num_queries: Any
) -> None:
    team = make_team("Alpha")
    user = make_user("alice", team)

    client = AsyncClient()
    async_to_sync(client.aforce_login)(user)
    with django_assert_num_queries(0):
        response = async_to_sync(client.get)("/ctx/aplain/")
    assert response.json() == {"user_evaluated": False, "session_loaded": False}
    assert attribution(response) == (expected_user(user), team.slug)


def test_no_team_lookup_without_an_llm_call(
    make_user: Any, make_team: Any, monkeypatch: Any
) -> None:
    def must_not_run(*args: Any) -> Any:
        raise AssertionError("the team was looked up")

    monkeypatch.setattr(teams, "_user_team", must_not_run)
    client = logged_in(make_user("alice", make_team("Alpha")))
    assert client.get("/ctx/echo/").status_code == 200


def test_a_loaded_user_is_read_at_once(
    make_user: Any, make_team: Any, django_assert_num_queries: Any
) -> None:
    """request.user already loaded (by other code): its values cost nothing to read."""
    team = make_team("Alpha")
    user = make_user("alice", team)
    request: Any = RequestFactory().get("/")
    request.user = user
    with django_assert_num_queries(0):
        data = json.loads(FluxGateContextMiddleware(_echo_response)(request).content)
    assert data["user"] == expected_user(user)  # a plain value
    assert data["team"] == LAZY
    with django_assert_num_queries(1):  # the team: one query, once
        assert resolved(request.fluxgate_context.team) == team.slug
        assert resolved(request.fluxgate_context.team) == team.slug


def test_lookups_are_made_once_per_request(make_user: Any, make_team: Any) -> None:
    team = make_team("Alpha")
    user = make_user("alice", team)
    response = logged_in(user).get("/ctx/echo/")
    ctx: TrackingContext = response.wsgi_request.fluxgate_context  # type: ignore[attr-defined]
    with CaptureQueriesContext(connection) as first:
        assert resolved(ctx.team) == team.slug  # loads the session, the user, the team
    with CaptureQueriesContext(connection) as again:
        assert resolved(ctx.team) == team.slug
        assert resolved(ctx.user) == expected_user(user)
    assert len(first) == 3
    assert len(again) == 0


@pytest.mark.urls(__name__)
@pytest.mark.django_db(transaction=True)
def test_lookup_first_needed_on_the_event_loop(make_user: Any, make_team: Any) -> None:
    """No ORM on the loop (it would raise SynchronousOnlyOperation): it runs in a thread."""
    team = make_team("Alpha")
    user = make_user("alice", team)

    async def run() -> Any:
        client = AsyncClient()
        await client.aforce_login(user)
        return await client.get("/ctx/aresolving/")

    assert async_to_sync(run)().json() == {"user": expected_user(user), "team": team.slug}


# -- request id ----------------------------------------------------------------------------


@pytest.mark.parametrize("supplied", ["abc-123", "req.1:2_3", "A" * 128, str(uuid.uuid4())])
def test_request_id_header_passes_through(supplied: str) -> None:
    response = Client().get("/ctx/echo/", HTTP_X_REQUEST_ID=supplied)
    assert response.json()["request_id"] == supplied
    assert response["X-Request-ID"] == supplied


@pytest.mark.parametrize(
    "supplied",
    [
        "",
        "A" * 129,
        "<script>alert(1)</script>",
        "two words",
        "id;DROP TABLE fluxgate_django_event",
        "../../etc/passwd",
        "naïve",
        "a\tb",
    ],
)
def test_malformed_request_id_is_replaced(supplied: str) -> None:
    response = Client().get("/ctx/echo/", HTTP_X_REQUEST_ID=supplied)
    request_id = response.json()["request_id"]
    assert HEX32.fullmatch(request_id)
    assert response["X-Request-ID"] == request_id


def test_request_ids_are_unique_per_request() -> None:
    client = Client()
    ids = {client.get("/ctx/echo/").json()["request_id"] for _ in range(5)}
    assert len(ids) == 5


# -- team ----------------------------------------------------------------------------------


def test_team_rule(make_user: Any, make_team: Any) -> None:
    """Header (if a member), else the default membership, else the only team, else none."""
    alpha, beta, gamma = make_team("Alpha"), make_team("Beta"), make_team("Gamma")
    user = make_user("alice", beta, alpha)
    client = logged_in(user)

    def team_for(header: str | None) -> Any:
        headers = {} if header is None else {"X-FluxGate-Team": header}
        return attribution(client.get("/ctx/echo/", headers=headers))[1]

    assert team_for(None) is None  # several teams, no default: none (not the first by name)
    assert team_for(beta.slug) == beta.slug
    assert team_for(gamma.slug) is None  # not a member: header ignored
    assert team_for("not a slug!") is None

    membership = TeamMembership.objects.get(user=user, team=beta)
    membership.is_default = True
    membership.save()
    for header in (None, gamma.slug, "no-such-team", "not a slug!", ""):
        assert team_for(header) == beta.slug  # the default
    assert team_for(alpha.slug) == alpha.slug  # the header still wins for a member


def test_user_without_team(make_user: Any, make_team: Any) -> None:
    other = make_team("Other")
    client = logged_in(make_user())
    assert attribution(client.get("/ctx/echo/"))[1] is None
    assert attribution(client.get("/ctx/echo/", HTTP_X_FLUXGATE_TEAM=other.slug))[1] is None


def test_team_lookup_is_one_query(make_user: Any, make_team: Any) -> None:
    alpha, beta = make_team("Alpha"), make_team("Beta")
    client = logged_in(make_user("alice", alpha, beta))
    response = client.get("/ctx/echo/", HTTP_X_FLUXGATE_TEAM=beta.slug)
    with CaptureQueriesContext(connection) as queries:
        assert attribution(response)[1] == beta.slug
    assert len([q for q in queries if "fluxgate_django_team" in q["sql"]]) == 1


def test_async_team_header(make_user: Any, make_team: Any) -> None:
    alpha, beta, gamma = make_team("Alpha"), make_team("Beta"), make_team("Gamma")
    user = make_user("alice", alpha, beta)
    TeamMembership.objects.filter(user=user, team=alpha).update(is_default=True)

    async def run() -> list[Any]:
        client = AsyncClient()
        await client.aforce_login(user)
        responses = []
        for header in (beta.slug, gamma.slug):
            responses.append(await client.get("/ctx/aecho/", headers={"X-FluxGate-Team": header}))
        return responses

    assert [attribution(r)[1] for r in async_to_sync(run)()] == [beta.slug, alpha.slug]


# -- feature -------------------------------------------------------------------------------


def test_view_level_feature_wins() -> None:
    client = Client()
    assert client.get("/ctx/echo/").json()["feature"] == "echo"
    assert client.get("/ctx/echo/", {"feature": "custom"}).json()["feature"] == "custom"

    async def run() -> Any:
        return await AsyncClient().get("/ctx/aecho/", {"feature": "custom-async"})

    assert async_to_sync(run)().json()["feature"] == "custom-async"


def test_outer_context_is_kept_and_restored() -> None:
    with tracking_context(feature="outer", metadata={"k": "v"}) as outer:
        data = Client().get("/ctx/echo/").json()
        assert current_context() is outer
    assert data["feature"] == "outer"  # the URL name is a default only
    assert current_context() is EMPTY_CONTEXT


# -- tracked calls -------------------------------------------------------------------------


def test_tracked_call_in_sync_view_is_attributed(
    llm_settings: FakeProvider, make_user: Any, make_team: Any
) -> None:
    team = make_team("Alpha")
    user = make_user("alice", team)
    client = logged_in(user)
    llm_settings.enqueue(FakeReply(input_tokens=100, output_tokens=20))

    data = client.get("/ctx/chat/", HTTP_X_REQUEST_ID="req-sync-1").json()

    event = Event.objects.get(tracking_id=data["tracking_id"])
    assert event.user_id == user.pk
    assert event.end_user_id == str(user.pk)
    assert event.end_user_email == "alice@example.com"
    assert event.team_id == team.pk
    assert event.session_id == session_fingerprint(session_key(client))
    assert event.request_id == "req-sync-1"
    assert event.feature == "chat"
    assert (event.input_tokens, event.output_tokens) == (100, 20)
    assert current_context() is EMPTY_CONTEXT


def test_tracked_call_goes_to_the_default_team(
    llm_settings: FakeProvider, make_user: Any, make_team: Any
) -> None:
    alpha, beta, zeta = make_team("Alpha"), make_team("Beta"), make_team("Zeta")
    user = make_user("alice", alpha, beta)
    TeamMembership.objects.create(user=user, team=zeta, is_default=True)
    client = logged_in(user)
    events = [
        Event.objects.get(tracking_id=client.get("/ctx/chat/", headers=h).json()["tracking_id"])
        for h in ({}, {"X-FluxGate-Team": beta.slug})
    ]
    assert [e.team_id for e in events] == [zeta.pk, beta.pk]
    assert {e.user_id for e in events} == {user.pk}


def test_view_feature_wins_on_event(llm_settings: FakeProvider, make_user: Any) -> None:
    client = logged_in(make_user())
    data = client.get("/ctx/chat/", {"feature": "summarize"}).json()
    assert Event.objects.get(tracking_id=data["tracking_id"]).feature == "summarize"


@pytest.mark.django_db(transaction=True)
def test_tracked_call_in_async_view_is_attributed(
    llm_settings: FakeProvider, make_user: Any, make_team: Any
) -> None:
    alpha, beta = make_team("Alpha"), make_team("Beta")
    user = make_user("alice", alpha, beta)
    llm_settings.enqueue(FakeReply(input_tokens=50, output_tokens=5))

    async def run() -> tuple[Any, str]:
        client = AsyncClient()
        await client.aforce_login(user)
        response = await client.get(
            "/ctx/achat/",
            {"feature": "async-chat"},
            headers={"X-Request-ID": "req-async-2", "X-FluxGate-Team": beta.slug},
        )
        return response, (await client.asession()).session_key or ""

    response, session_key = async_to_sync(run)()
    flush()  # the sync recorder hands a write made on the event loop off to a thread

    event = Event.objects.get(tracking_id=response.json()["tracking_id"])
    assert event.user_id == user.pk
    assert event.end_user_email == "alice@example.com"
    assert event.team_id == beta.pk
    assert event.session_id == session_fingerprint(session_key)
    assert event.request_id == "req-async-2"
    assert event.feature == "async-chat"
    assert response["X-Request-ID"] == "req-async-2"


def test_streaming_response_keeps_request_context(
    llm_settings: FakeProvider, make_user: Any, make_team: Any
) -> None:
    team = make_team("Alpha")
    user = make_user("alice", team)
    client = logged_in(user)

    response: Any = client.get("/ctx/stream/", HTTP_X_REQUEST_ID="req-stream")
    assert current_context() is EMPTY_CONTEXT  # the body has not been produced yet
    # (the test client closes the response once its body is consumed)
    lines = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]

    assert lines[0]["feature"] == "stream"
    assert lines[0]["request_id"] == "req-stream"
    event = Event.objects.get(tracking_id=lines[1]["tracking_id"])
    assert (event.user_id, event.team_id, event.feature) == (user.pk, team.pk, "stream")
    assert event.request_id == "req-stream"
    assert current_context() is EMPTY_CONTEXT


def test_async_streaming_response_keeps_request_context(make_user: Any) -> None:
    user = make_user()

    async def run() -> list[dict[str, Any]]:
        client = AsyncClient()
        await client.aforce_login(user)
        response: Any = await client.get("/ctx/astream/", headers={"X-Request-ID": "req-astream"})
        assert current_context() is EMPTY_CONTEXT
        body = b"".join([part async for part in response.streaming_content])
        assert current_context() is EMPTY_CONTEXT
        return [json.loads(line) for line in body.splitlines()]

    lines = async_to_sync(run)()
    assert len(lines) == 2
    for line in lines:
        assert (line["feature"], line["request_id"]) == ("astream", "req-astream")
        assert line["user"] == LAZY


# -- without AuthenticationMiddleware --------------------------------------------------------


def _echo_response(request: Any) -> JsonResponse:
    return JsonResponse(views.context_json(current_context()))


async def _aecho_response(request: Any) -> JsonResponse:
    return _echo_response(request)


def test_without_auth_middleware_sync() -> None:
    middleware = FluxGateContextMiddleware(_echo_response)
    assert not iscoroutinefunction(middleware)
    data = json.loads(middleware(RequestFactory().get("/")).content)
    assert data["user"] is None and data["team"] is None and data["feature"] is None
    assert HEX32.fullmatch(data["request_id"])


@pytest.mark.parametrize("with_user", [False, True])
def test_without_auth_middleware_async(make_user: Any, with_user: bool) -> None:
    """No request.auser(): a request.user set by other code is read in a thread."""
    middleware = FluxGateContextMiddleware(_aecho_response)
    assert iscoroutinefunction(middleware)
    request: Any = AsyncRequestFactory().get("/", headers={"X-Request-ID": "r1"})
    user = make_user()
    if with_user:
        request.user = SimpleLazyObject(lambda: User.objects.get(pk=user.pk))

    async def run() -> Any:
        return await middleware(request)

    data = json.loads(async_to_sync(run)().content)
    assert data["request_id"] == "r1"
    if with_user:
        assert data["user"] == LAZY
        assert resolved(request.fluxgate_context.user) == expected_user(user)
    else:
        assert data["user"] is None


# -- nothing leaks -------------------------------------------------------------------------


def test_context_reset_when_view_raises(make_user: Any) -> None:
    client = Client(raise_request_exception=False)
    client.force_login(make_user())
    response = client.get("/ctx/boom/", HTTP_X_REQUEST_ID="req-boom")
    assert response.status_code == 500
    assert response["X-Request-ID"] == "req-boom"
    assert current_context() is EMPTY_CONTEXT


def test_process_view_alone_sets_nothing() -> None:
    """Used without its __call__ (decorator_from_middleware), it must not set a context
    that nothing would reset."""
    from django.urls import resolve

    request = RequestFactory().get("/ctx/echo/")
    request.resolver_match = resolve("/ctx/echo/")
    middleware = FluxGateContextMiddleware(views.echo)
    middleware.process_view(request, views.echo, (), {})
    assert current_context() is EMPTY_CONTEXT


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_in_threads_do_not_share_context(
    make_user: Any, make_team: Any
) -> None:
    n = 8
    team_list = [make_team(f"Team{i}") for i in range(n)]
    users = [make_user(f"user{i}", team_list[i]) for i in range(n)]
    clients = [logged_in(u) for u in users]

    def request(i: int) -> tuple[dict[str, Any], tuple[Any, Any], Any]:
        try:
            response = clients[i].get("/ctx/echo/", HTTP_X_REQUEST_ID=f"req-{i}")
            return response.json(), attribution(response), current_context()
        finally:
            connection.close()  # this thread's own connection

    # Every request waits inside the view until all n are in flight at once.
    views.barrier = threading.Barrier(n, timeout=10)
    try:
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(request, range(n)))
    finally:
        views.barrier = None

    for i, (data, (user, team), after) in enumerate(results):
        assert (user, team) == (expected_user(users[i]), team_list[i].slug)
        assert data["request_id"] == f"req-{i}"
        assert after is EMPTY_CONTEXT


def test_concurrent_async_requests_do_not_share_context(make_user: Any, make_team: Any) -> None:
    n = 6
    team_list = [make_team(f"Team{i}") for i in range(n)]
    users = [make_user(f"user{i}", team_list[i]) for i in range(n)]

    async def one(i: int) -> Any:
        client = AsyncClient()
        await client.aforce_login(users[i])
        return await client.get(
            "/ctx/aecho/", {"sleep": "0.01"}, headers={"X-Request-ID": f"req-{i}"}
        )

    async def run() -> list[Any]:
        results = await asyncio.gather(*(one(i) for i in range(n)))
        assert current_context() is EMPTY_CONTEXT
        return list(results)

    for i, response in enumerate(async_to_sync(run)()):
        data = response.json()
        assert attribution(response) == (expected_user(users[i]), team_list[i].slug)
        assert data["request_id"] == f"req-{i}"
        assert data["unchanged"] is True


def test_asyncio_tasks_do_not_leak() -> None:
    async def worker(i: int) -> list[Any]:
        start = current_context()  # a task starts with a copy of its creator's context
        assert start.metadata == {"batch": "b1"}
        seen = []
        with tracking_context(user={"id": f"u{i}"}, feature=f"f{i}", tags=[f"t{i}"]):
            for _ in range(3):
                await asyncio.sleep(0)
                ctx = current_context()
                seen.append((ctx.user["id"], ctx.feature, ctx.tags))
                with tracking_context(step=f"s{i}"):
                    await asyncio.sleep(0)
                    assert current_context().step == f"s{i}"
                assert current_context().step is None
                assert current_context().metadata == {"batch": "b1"}
        assert current_context() is start
        return seen

    async def run() -> list[list[Any]]:
        with tracking_context(metadata={"batch": "b1"}):
            results = await asyncio.gather(*(asyncio.create_task(worker(i)) for i in range(10)))
            assert current_context().feature is None
        assert current_context() is EMPTY_CONTEXT
        return list(results)

    for i, seen in enumerate(asyncio.run(run())):
        assert seen == [(f"u{i}", f"f{i}", (f"t{i}",))] * 3
