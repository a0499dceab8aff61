"""Async ``LLMService`` on more than one event loop (issue 15, item 1).

An async SDK client (its ``httpx.AsyncClient`` pool) belongs to the loop that opened its
connections; reused on the next loop it fails with ``RuntimeError: Event loop is closed``.
The service keeps one async client per provider *per loop* and closes it as the loop shuts
down. These tests go through the real SDK clients against the bundled fake provider:
several ``asyncio.run`` in a row, and an async Django view under WSGI (the test ``Client``
runs an async view through ``async_to_sync``: a new loop per request) and ASGI.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import uuid

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client

from fluxgate_django import LLMService, flush
from fluxgate_django.models import Event
from fluxgate_django.records import Status
from fluxgate_django.service import providers
from fluxgate_django.testing import FakeReply

from .test_service import MSGS, service_settings

# The sync recorder writes an event made on a loop from a thread: a transactional test.
pytestmark = pytest.mark.django_db(transaction=True)

TEXT = "Hello from the fake provider."


def gemini_settings(fake):
    """The service settings plus Gemini (google-genai keeps its async pool under .aio)."""
    pytest.importorskip("google.genai", reason="google-genai is not installed")
    return service_settings(
        fake,
        PROVIDERS={
            "openai": {"api_key": "sk-test", "base_url": fake.openai_base_url, "timeout": 5},
            "anthropic": {"api_key": "sk-ant-test", "base_url": fake.anthropic_base_url},
            "gemini": {"api_key": "test-gemini-key", "base_url": fake.gemini_base_url},
        },
    )


def events(ids):
    flush()  # async calls are written off the loop
    return list(Event.objects.filter(tracking_id__in=ids).order_by("created_at"))


@pytest.mark.parametrize(
    ("model", "provider"),
    [("fast", "openai"), ("claude-sonnet", "anthropic"), ("gemini-2.5-flash", "gemini")],
)
def test_acomplete_on_three_loops_in_a_row(fake, model, provider):
    with gemini_settings(fake) if provider == "gemini" else service_settings(fake):
        service = LLMService()
        answers = [
            asyncio.run(service.acomplete(MSGS, model=model, feature=f"loop-{i}")) for i in range(3)
        ]
        assert [a.content for a in answers] == [TEXT] * 3
        assert {a.provider for a in answers} == {provider}
        recorded = events([a.tracking_id for a in answers])
    assert [e.feature for e in recorded] == ["loop-0", "loop-1", "loop-2"]
    assert all(e.status == Status.SUCCESS and e.cost_usd is not None for e in recorded)


@pytest.mark.parametrize(
    ("model", "provider"),
    [("fast", "openai"), ("claude-sonnet", "anthropic"), ("gemini-2.5-flash", "gemini")],
)
def test_astream_on_three_loops_in_a_row(fake, model, provider):
    async def streamed(i):
        return "".join([t async for t in service.astream(MSGS, model=model, feature=f"s-{i}")])

    with gemini_settings(fake) if provider == "gemini" else service_settings(fake):
        service = LLMService()
        texts = [asyncio.run(streamed(i)) for i in range(3)]
        flush()
        recorded = list(Event.objects.filter(streamed=True).order_by("created_at"))
    assert texts == [TEXT] * 3
    assert [(e.provider, e.feature) for e in recorded] == [(provider, f"s-{i}") for i in range(3)]
    assert all(e.status == Status.SUCCESS and e.cost_usd is not None for e in recorded)


def test_fallback_on_later_loops_uses_each_loops_own_clients(fake):
    """A failing first model, then the fallback, on each of three loops: both providers'
    async clients are made (and closed) per loop."""
    with service_settings(fake):
        service = LLMService()
        answers = []
        for _ in range(3):
            fake.enqueue(FakeReply(status=500))
            answers.append(asyncio.run(service.acomplete(MSGS, route="summarize")))
    assert [(a.provider, a.fallback_used) for a in answers] == [("anthropic", True)] * 3


def test_a_loops_clients_are_shared_on_it_and_closed_with_it(fake):
    with service_settings(fake):
        service = LLMService()

        async def calls():
            loop = asyncio.get_running_loop()
            # Concurrent calls on one loop share its client (one connection pool).
            await asyncio.gather(*(service.acomplete(MSGS, model="fast") for _ in range(3)))
            return loop, providers.clients.get("openai", loop=loop)

        loop, first = asyncio.run(calls())
        assert first.is_closed()  # closed as asyncio.run shut the loop down
        assert loop not in providers.clients._async  # and forgotten with it
        _, second = asyncio.run(calls())
        assert second is not first and second.is_closed()
        # Sync clients are not per loop: one per process.
        assert providers.clients.get("openai") is providers.clients.get("openai")


# That loop's sockets can't be closed on it: they are freed (with a ResourceWarning) as
# the clients are dropped.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_loop_closed_without_shutdown_is_forgotten(fake):
    """A loop closed by hand (no ``shutdown_asyncgens``): its clients are dropped when the
    next loop asks for one, not kept (with their sockets) for the process's life."""
    with service_settings(fake):
        service = LLMService()
        loop = asyncio.new_event_loop()
        try:
            assert loop.run_until_complete(service.acomplete(MSGS, model="fast")).content == TEXT
        finally:
            loop.close()
        assert asyncio.run(service.acomplete(MSGS, model="fast")).content == TEXT
        assert loop not in providers.clients._async
    del loop
    gc.collect()


def test_loops_in_concurrent_threads_each_use_their_own_clients(fake):
    """A threaded WSGI server (``runserver``) runs async views on a loop per request, several
    at once: each loop gets, uses and closes its own clients."""
    with service_settings(fake):
        service = LLMService()

        def one(i):
            return asyncio.run(service.acomplete(MSGS, model="fast", feature=f"t-{i}"))

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(one, range(24)))
        assert [a.content for a in answers] == [TEXT] * 24
        recorded = events([a.tracking_id for a in answers])
        assert sorted(e.feature for e in recorded) == sorted(f"t-{i}" for i in range(24))
        assert not providers.clients._async  # every loop's clients closed and forgotten


VIEWS = {"/svc/acomplete/": "svc_acomplete", "/svc/astream/": "svc_astream"}


def check_answers_and_events(path, responses, request_ids):
    """Every request answered 200 with the fake's text, and its call recorded: one event
    per request, attributed to the request (its id, the view's name as the feature)."""
    assert [r.status_code for r in responses] == [200] * len(responses), [
        r.content[:300] for r in responses
    ]
    assert [r.json()["content"] for r in responses] == [TEXT] * len(responses)
    flush()  # async calls are written off the loop
    recorded = Event.objects.filter(request_id__in=request_ids)
    assert sorted(e.request_id for e in recorded) == sorted(request_ids)
    assert {(e.feature, e.source, e.status) for e in recorded} == {
        (VIEWS[path], "service", Status.SUCCESS)
    }
    if path == "/svc/acomplete/":
        ids = {uuid.UUID(r.json()["tracking_id"]) for r in responses}
        assert ids == {e.tracking_id for e in recorded}


@pytest.mark.parametrize("path", list(VIEWS))
def test_async_view_under_wsgi_answers_every_request(fake, path):
    """Django's test ``Client`` is a WSGI handler: each request runs the async view through
    ``async_to_sync``, on a loop of its own, as ``runserver`` does."""
    request_ids = [f"wsgi-{i}" for i in range(10)]
    with service_settings(fake):
        client = Client()
        responses = [client.get(path, headers={"X-Request-ID": rid}) for rid in request_ids]
        check_answers_and_events(path, responses, request_ids)


@pytest.mark.parametrize("path", list(VIEWS))
def test_async_view_under_asgi_answers_every_request(fake, path):
    """Django's ``AsyncClient`` is an ASGI handler: ten requests share one loop (a server's),
    five in turn and five at once; then a second loop (a restarted server) serves too."""

    async def serve(request_ids):
        client = AsyncClient()
        half = len(request_ids) // 2
        first = [await client.get(path, headers={"X-Request-ID": r}) for r in request_ids[:half]]
        rest = await asyncio.gather(
            *(client.get(path, headers={"X-Request-ID": r}) for r in request_ids[half:])
        )
        return first + list(rest)

    request_ids = [f"asgi-{i}" for i in range(10)]
    restarted = [f"asgi-restarted-{i}" for i in range(4)]
    with service_settings(fake):
        responses = async_to_sync(serve)(request_ids)
        responses += asyncio.run(serve(restarted))
        check_answers_and_events(path, responses, request_ids + restarted)
