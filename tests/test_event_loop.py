"""Recording never blocks an event loop.

A heartbeat task ticks every 10 ms on the loop while 100 async LangChain calls (real
``ChatOpenAI`` / ``ChatAnthropic``) and 100 async tracked-SDK calls (``AsyncOpenAI``) run
against the loopback fake provider and are recorded through the *sync* recorder — the one
that writes in the caller — on a database made slow (5 ms a query). If any of them waited
on the database in the loop (a write, a ``join()``, a ``.result()``), the heartbeat would
see it: each write alone takes longer than the gap allowed. Runs on SQLite and on
PostgreSQL (``DATABASE_URL=postgres://...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import random
import time
from collections.abc import Iterator

import openai
import pytest
from django.db.backends.signals import connection_created
from langchain_anthropic import ChatAnthropic
from langchain_openai import ChatOpenAI

import fluxgate_django
from fluxgate_django import track_openai, tracking_context
from fluxgate_django.models import Event
from fluxgate_django.testing import FakeReply
from fluxgate_langchain import FluxGateHandler
from tests.helpers import fluxgate_overrides

# Writes happen in other threads (they must see committed rows); on PostgreSQL too.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

CALLS = 100  # of each kind: LangChain, tracked SDK
BEAT = 0.010
MAX_GAP = 0.050
#: Beats allowed past MAX_GAP (none over 4 x MAX_GAP): a shared machine's scheduling.
MAX_LATE_BEATS = 3
#: Calls in flight at once: a busy service, not a loop flooded with ready tasks, whose
#: plain CPU work (LangChain's, the HTTP clients'), not any waiting, would then be what
#: delays the heartbeat on a small machine.
IN_FLIGHT = 5
REPLY = FakeReply(input_tokens=100, output_tokens=20, chunks=3)
QUERY_SECONDS = 0.005
MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def _fresh_async_http_clients():
    """langchain-openai and langchain-anthropic cache one async HTTP client per base URL for
    the process; its pooled connections belong to the event loop of the test that made them."""
    from langchain_anthropic import _client_utils as anthropic_clients
    from langchain_openai.chat_models import _client_utils as openai_clients

    openai_clients._cached_async_httpx_client.cache_clear()
    anthropic_clients._get_default_async_httpx_client.cache_clear()


@contextlib.contextmanager
def slow_database() -> Iterator[None]:
    """Every query takes ``QUERY_SECONDS`` longer (a database across a network), so that a
    loop waiting on any write would show it. (On the loop's own thread Django refuses
    queries outright, ``SynchronousOnlyOperation``, which would fail the calls.)"""
    slowed = []

    def slow(execute, sql, params, many, context):
        time.sleep(QUERY_SECONDS)
        return execute(sql, params, many, context)

    def on_connection(sender, connection, **kwargs):
        if slow not in connection.execute_wrappers:
            connection.execute_wrappers.append(slow)
            slowed.append(connection)

    connection_created.connect(on_connection)
    try:
        yield
    finally:
        connection_created.disconnect(on_connection)
        for connection in slowed:
            connection.execute_wrappers.remove(slow)


@contextlib.contextmanager
def settled_heap() -> Iterator[None]:
    """Leave the objects that exist now out of garbage collection for a while: a full
    collection of this test process's heap (Django, LangChain, price data, the suite's
    leftovers) stops every thread for a few hundred ms, whoever triggers it — not what
    this test measures."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def heartbeat(gaps: list[float], stop: asyncio.Event) -> None:
    """Tick every ``BEAT`` seconds, noting the time between ticks."""
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(BEAT)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


def test_async_calls_record_through_the_sync_recorder_without_blocking_the_loop(fake):
    fake.default_reply = REPLY
    chat_openai = ChatOpenAI(
        model="gpt-4o", api_key="sk-test", base_url=fake.openai_base_url, max_retries=0,
        stream_usage=True,
    )  # fmt: skip
    chat_anthropic = ChatAnthropic(
        model="claude-sonnet-4-6", api_key="sk-ant-test", base_url=fake.anthropic_base_url,
        max_retries=0,
    )  # fmt: skip
    handler = FluxGateHandler()
    config = {"callbacks": [handler]}

    async def langchain_call(i: int) -> None:
        llm = chat_openai if i % 2 else chat_anthropic
        if i % 4 < 2:
            await llm.ainvoke(f"q{i}", config=config)
        else:
            async for _ in llm.astream(f"q{i}", config=config):
                pass

    async def sdk_call(client: openai.AsyncOpenAI, i: int) -> None:
        if i % 2:
            await client.chat.completions.create(model="gpt-4o", messages=MSGS)
        else:
            stream = await client.chat.completions.create(
                model="gpt-4o", messages=MSGS, stream=True, stream_options={"include_usage": True}
            )
            async for _ in stream:
                pass

    async def scenario() -> list[float]:
        client = track_openai(
            openai.AsyncOpenAI(api_key="sk-test", base_url=fake.openai_base_url, max_retries=0)
        )
        with tracking_context(feature="warm-up"):
            # Once per process, not per call: price data, HTTP connection pools.
            for i in range(4):
                await langchain_call(i)
            await sdk_call(client, 0)
            await sdk_call(client, 1)

        calls = [functools.partial(langchain_call, i) for i in range(CALLS)]
        calls += [functools.partial(sdk_call, client, i) for i in range(CALLS)]
        random.Random(11).shuffle(calls)

        async def worker() -> None:
            while calls:
                await calls.pop()()

        gaps: list[float] = []
        stop = asyncio.Event()
        beating = asyncio.create_task(heartbeat(gaps, stop))
        await asyncio.sleep(BEAT * 2)
        with tracking_context(feature="loop"):
            await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
        stop.set()
        await beating
        await client.close()
        return gaps

    with fluxgate_overrides(RECORDER="sync"), slow_database(), settled_heap():
        gaps = asyncio.run(scenario())
        assert fluxgate_django.flush(timeout=60)

    worst = max(gaps)
    late = sorted(g for g in gaps if g > MAX_GAP)
    print(f"\nheartbeat: {len(gaps)} beats, max gap {worst * 1000:.1f} ms, {len(late)} late")
    assert len(gaps) > 5
    # A loop that waited on the database would be late at many of its 200 writes (each
    # several 5 ms queries); a loaded machine's scheduler makes one or two beats late.
    assert len(late) <= MAX_LATE_BEATS, (
        f"the event loop was blocked {len(late)} times, for up to {worst * 1000:.0f} ms"
    )
    assert worst <= 4 * MAX_GAP, f"the event loop was blocked for {worst * 1000:.0f} ms"

    events = Event.objects.filter(feature="loop")
    assert events.count() == 2 * CALLS
    assert events.filter(source="langchain").count() == CALLS
    assert events.filter(source="sdk").count() == CALLS
    assert not events.filter(cost_usd__isnull=True).exists()  # every call priced
    assert events.filter(streamed=True).count() == CALLS
    assert handler.runs_in_flight == 0
