"""FluxGateContextMiddleware: who and what each request's LLM calls are attributed to."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from asgiref.sync import async_to_sync, iscoroutinefunction
from django.contrib.auth import get_user_model
from django.db import connection
from django.http import JsonResponse
from django.test import AsyncClient, AsyncRequestFactory, Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils.functional import SimpleLazyObject

from fluxgate_django import current_context, tracking_context
from fluxgate_django.context import EMPTY_CONTEXT
from fluxgate_django.middleware import FluxGateContextMiddleware, session_fingerprint
from fluxgate_django.models import Event, Team, TeamMembership
from fluxgate_django.testing import FakeProvider, FakeReply
from tests import views

pytestmark = pytest.mark.django_db

User = get_user_model()
HEX32 = re.compile(r"[0-9a-f]{32}")


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
    assert data["user"] == expected_user(user)
    assert data["team"] == team.slug
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
    data = response.json()
    assert data["user"] is None
    assert data["team"] is None
    assert data["session_id"] is None  # no session was created
    assert data["feature"] == "echo"
    assert "sessionid" not in response.cookies
    assert not [q for q in queries if "fluxgate_django_team" in q["sql"]]


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
    assert data["user"] == expected_user(user)
    assert data["team"] == team.slug
    assert data["feature"] == "aecho"
    assert data["session_id"] == session_fingerprint(session_key)
    assert data["request_id"] == "req-async-1"
    assert data["unchanged"] is True
    assert data["user_evaluated"] is False  # the middleware awaited request.auser()
    assert response["X-Request-ID"] == "req-async-1"
    assert current_context() is EMPTY_CONTEXT


def test_async_anonymous_request() -> None:
    async def run() -> Any:
        return await AsyncClient().get("/ctx/aecho/")

    data = async_to_sync(run)().json()
    assert data["user"] is None
    assert data["team"] is None
    assert data["session_id"] is None
    assert data["feature"] == "aecho"


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


def test_team_header_honoured_only_for_members(make_user: Any, make_team: Any) -> None:
    alpha, beta, gamma = make_team("Alpha"), make_team("Beta"), make_team("Gamma")
    client = logged_in(make_user("alice", beta, alpha))

    def team_for(header: str | None) -> str:
        headers = {} if header is None else {"X-FluxGate-Team": header}
        return client.get("/ctx/echo/", headers=headers).json()["team"]

    assert team_for(None) == alpha.slug  # several teams: the first by name
    assert team_for(beta.slug) == beta.slug
    assert team_for(gamma.slug) == alpha.slug  # not a member: header ignored
    assert team_for("no-such-team") == alpha.slug
    assert team_for("not a slug!") == alpha.slug
    assert team_for("") == alpha.slug


def test_user_without_team(make_user: Any, make_team: Any) -> None:
    other = make_team("Other")
    client = logged_in(make_user())
    assert client.get("/ctx/echo/").json()["team"] is None
    assert client.get("/ctx/echo/", HTTP_X_FLUXGATE_TEAM=other.slug).json()["team"] is None


def test_team_lookup_is_one_query(make_user: Any, make_team: Any) -> None:
    alpha, beta = make_team("Alpha"), make_team("Beta")
    client = logged_in(make_user("alice", alpha, beta))
    with CaptureQueriesContext(connection) as queries:
        data = client.get("/ctx/echo/", HTTP_X_FLUXGATE_TEAM=beta.slug).json()
    assert data["team"] == beta.slug
    assert len([q for q in queries if "fluxgate_django_team" in q["sql"]]) == 1


def test_team_lookup_failure_does_not_break_the_request(
    make_user: Any, make_team: Any, settings: Any, monkeypatch: Any
) -> None:
    from django.db import DatabaseError

    from fluxgate_django import middleware

    def broken(*args: Any) -> Any:
        raise DatabaseError("team table unavailable")

    settings.FLUXGATE = {**settings.FLUXGATE, "RAISE_ERRORS": False}
    monkeypatch.setattr(middleware, "_team_query", broken)
    client = logged_in(make_user("alice", make_team("Alpha")))
    response = client.get("/ctx/echo/")
    assert response.status_code == 200
    assert response.json()["team"] is None
    assert response.json()["user"] is not None


def test_async_team_header(make_user: Any, make_team: Any) -> None:
    alpha, beta, gamma = make_team("Alpha"), make_team("Beta"), make_team("Gamma")
    user = make_user("alice", alpha, beta)

    async def run() -> list[str]:
        client = AsyncClient()
        await client.aforce_login(user)
        teams = []
        for header in (beta.slug, gamma.slug):
            response = await client.get("/ctx/aecho/", headers={"X-FluxGate-Team": header})
            teams.append(response.json()["team"])
        return teams

    assert async_to_sync(run)() == [beta.slug, alpha.slug]


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
        assert line["user"] == expected_user(user)


# -- without AuthenticationMiddleware --------------------------------------------------------


def _echo_response(request: Any) -> JsonResponse:
    return JsonResponse(views.context_json(current_context()))


async def _aecho_response(request: Any) -> JsonResponse:
    return _echo_response(request)


def test_without_auth_middleware_sync() -> None:
    middleware = FluxGateContextMiddleware(_echo_response)
    assert not iscoroutinefunction(middleware)
    data = json.loads(middleware(RequestFactory().get("/")).content)
    assert data["user"] is None and data["feature"] is None
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
    assert data["user"] == (expected_user(user) if with_user else None)
    assert data["request_id"] == "r1"


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
    teams = [make_team(f"Team{i}") for i in range(n)]
    users = [make_user(f"user{i}", teams[i]) for i in range(n)]
    clients = [logged_in(u) for u in users]

    def request(i: int) -> tuple[dict[str, Any], Any]:
        try:
            data = clients[i].get("/ctx/echo/", HTTP_X_REQUEST_ID=f"req-{i}").json()
            return data, current_context()
        finally:
            connection.close()  # this thread's own connection

    # Every request waits inside the view until all n are in flight at once.
    views.barrier = threading.Barrier(n, timeout=10)
    try:
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(request, range(n)))
    finally:
        views.barrier = None

    for i, (data, after) in enumerate(results):
        assert data["user"] == expected_user(users[i])
        assert data["team"] == teams[i].slug
        assert data["request_id"] == f"req-{i}"
        assert after is EMPTY_CONTEXT


def test_concurrent_async_requests_do_not_share_context(make_user: Any, make_team: Any) -> None:
    n = 6
    teams = [make_team(f"Team{i}") for i in range(n)]
    users = [make_user(f"user{i}", teams[i]) for i in range(n)]

    async def one(i: int) -> dict[str, Any]:
        client = AsyncClient()
        await client.aforce_login(users[i])
        response = await client.get(
            "/ctx/aecho/", {"sleep": "0.01"}, headers={"X-Request-ID": f"req-{i}"}
        )
        return response.json()

    async def run() -> list[dict[str, Any]]:
        results = await asyncio.gather(*(one(i) for i in range(n)))
        assert current_context() is EMPTY_CONTEXT
        return list(results)

    for i, data in enumerate(async_to_sync(run)()):
        assert data["user"] == expected_user(users[i])
        assert data["team"] == teams[i].slug
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
