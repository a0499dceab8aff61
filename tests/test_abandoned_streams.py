"""Abandoned streams are recorded within seconds, not when the garbage collector runs.

A stream read half-way and dropped without ``close()`` is ended by the idle timeout
(``FLUXGATE["STREAM_IDLE_TIMEOUT"]``, one reaper thread per process) or, if a Django
request started it, when that request's response is done. Real ``openai`` and
``anthropic`` SDK clients over HTTP to the loopback fake. Every test keeps its streams
referenced (or the collector off), so the collector cannot be what records them.

The reaper records from its own thread, so these tests use real transactions.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.test import AsyncClient, Client
from django.urls import path

from fluxgate_django import budgets, flush, track_anthropic, track_openai, tracking_context
from fluxgate_django.conf import fluxgate_settings
from fluxgate_django.models import Budget, Event, SpendCounter, Team
from fluxgate_django.testing import FakeReply
from fluxgate_django.tracking import core, reaper
from tests.helpers import fluxgate_overrides

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls(__name__)]

MSGS = [{"role": "user", "content": "Write a long story."}]
USAGE = {"include_usage": True}
#: The idle timeout of these tests; a reaped stream is recorded within it plus this slack.
TIMEOUT = 0.3
SLACK = 1.0


@pytest.fixture(autouse=True)
def _short_idle_timeout(fake: Any) -> Iterator[None]:
    gc.collect()  # garbage of earlier tests' streams is recorded now, not during this one
    providers = {"openai": {"api_key": "sk-test-key", "base_url": fake.openai_base_url}}
    with fluxgate_overrides(STREAM_IDLE_TIMEOUT=TIMEOUT, PROVIDERS=providers):
        yield
    _kept.clear()
    _started.clear()


@pytest.fixture
def submitted(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The tracking ids of every record the tracking core submits (an event recorded
    twice shows here twice, even where the database keeps one row per tracking id)."""
    records: list[Any] = []
    submit = core.submit

    def counting(record: Any) -> Any:
        records.append(record.tracking_id)
        return submit(record)

    monkeypatch.setattr(core, "submit", counting)
    return records


@pytest.fixture
def client(openai_client: Any) -> Any:
    return track_openai(openai_client)


#: Streams the views and tests abandon, kept referenced so no collection records them,
#: and the tracking ids of the streams the views started.
_kept: list[Any] = []
_started: list[uuid.UUID] = []


def call_of(stream: Any) -> Any:
    """The tracked call of an SDK stream not ended yet (from its observed generator)."""
    raw = getattr(stream, "_raw_stream", stream)  # a stream helper's raw stream
    iterator = raw._iterator
    while True:  # (through the generator that hides the usage chunk FluxGate asked for)
        frame = iterator.gi_frame if hasattr(iterator, "gi_frame") else iterator.ag_frame
        if "call" in frame.f_locals:
            return frame.f_locals["call"]
        iterator = frame.f_locals["iterator"]


def tracking_id(stream: Any) -> uuid.UUID:
    """The tracking id of an SDK stream not ended yet."""
    return call_of(stream).tracking_id


def keep(stream: Any) -> Any:
    _kept.append(stream)
    _started.append(tracking_id(stream))
    return stream


def wait_until(condition: Callable[[], Any], timeout: float) -> float:
    """Seconds until ``condition()`` held (fails after ``timeout``)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - start


def recorded(tid: uuid.UUID) -> bool:
    return Event.objects.filter(tracking_id=tid).exists()


def read(stream: Any, n: int) -> list[Any]:
    """The first ``n`` events of ``stream``, then stop reading (no close)."""
    events = []
    for event in stream:
        events.append(event)
        if len(events) == n:
            break
    return events


def assert_incomplete(event: Event) -> None:
    assert event.metadata["stream_completed"] is False
    assert event.cost_usd is None and event.cost_source == "stream-incomplete"


def assert_complete(event: Event) -> None:
    assert "stream_completed" not in event.metadata
    assert event.cost_source != "stream-incomplete" and event.cost_usd > 0


# -- the idle timeout ------------------------------------------------------------------------


def test_stream_dropped_half_way_is_recorded_after_the_idle_timeout(client, fake, submitted):
    fake.enqueue(FakeReply(chunks=10))
    gc.disable()
    try:
        stream = client.chat.completions.create(
            model="gpt-4o", messages=MSGS, stream=True, stream_options=USAGE
        )
        tid = tracking_id(stream)
        read(stream, 3)
        stopped = time.monotonic()
        _kept.append(stream)  # referenced: only the reaper can record it
        assert not recorded(tid)  # not at once: the caller may read on
        wait_until(lambda: recorded(tid), TIMEOUT + SLACK)
    finally:
        gc.enable()
    assert TIMEOUT <= time.monotonic() - stopped <= TIMEOUT + SLACK
    event = Event.objects.get(tracking_id=tid)
    assert_incomplete(event)
    assert event.streamed and event.time_to_first_token_ms is not None
    assert stream.fluxgate.tracking_id == tid  # the caller's object shows it
    assert submitted.count(tid) == 1
    watched = [c.tracking_id for c in reaper._reaper.watched()]
    assert tid not in watched  # forgotten once ended


def test_reading_on_after_the_timeout_works_and_records_nothing_more(client, fake, submitted):
    fake.enqueue(FakeReply(chunks=10))
    stream = client.chat.completions.create(
        model="gpt-4o", messages=MSGS, stream=True, stream_options=USAGE
    )
    tid = tracking_id(stream)
    first = read(stream, 2)
    wait_until(lambda: recorded(tid), TIMEOUT + SLACK)
    assert stream.fluxgate.tracking_id == tid

    rest = list(stream)  # the caller comes back: the stream still works, to the end
    stream.close()
    text = "".join(c.choices[0].delta.content or "" for c in first + rest if c.choices)
    assert text == "Hello from the fake provider."
    assert rest[-1].usage is not None  # the final usage chunk came through
    assert stream.fluxgate.tracking_id == tid
    assert_incomplete(Event.objects.get(tracking_id=tid))  # as it was when abandoned
    assert submitted.count(tid) == 1


def test_stream_never_read_is_recorded_after_the_timeout(client, fake, submitted):
    stream = keep(client.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True))
    tid = _started[0]
    wait_until(lambda: recorded(tid), TIMEOUT + SLACK)
    event = Event.objects.get(tracking_id=tid)
    assert_incomplete(event)
    assert event.time_to_first_token_ms is None  # nothing was read
    assert stream.fluxgate.tracking_id == tid
    assert submitted.count(tid) == 1


def test_a_slow_provider_is_not_an_idle_reader(client, fake, submitted):
    """While the caller waits in ``next()`` for the provider, the stream is being read:
    gaps between chunks longer than the timeout do not cut it."""
    fake.enqueue(FakeReply(chunks=1, chunk_delay=TIMEOUT + 0.1, input_tokens=10, output_tokens=5))
    stream = client.chat.completions.create(
        model="gpt-4o", messages=MSGS, stream=True, stream_options=USAGE
    )
    tid = tracking_id(stream)
    list(stream)
    assert_complete(Event.objects.get(tracking_id=tid))
    assert submitted.count(tid) == 1


def test_the_timeout_can_be_turned_off(client, fake, submitted):
    with fluxgate_overrides(STREAM_IDLE_TIMEOUT=None):
        stream = client.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)
        tid = tracking_id(stream)
        read(stream, 1)
        time.sleep(TIMEOUT * 3)
        assert not recorded(tid)
        stream.close()
    assert_incomplete(Event.objects.get(tracking_id=tid))
    assert submitted.count(tid) == 1


def test_a_shorter_timeout_applies_to_streams_already_open(client, fake):
    with fluxgate_overrides(STREAM_IDLE_TIMEOUT=3600):
        stream = keep(client.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True))
        read(stream, 1)
        time.sleep(TIMEOUT * 2)
    # Back to the short timeout (the reaper was waiting for the long one): due at once.
    wait_until(lambda: recorded(_started[0]), SLACK)
    assert_incomplete(Event.objects.get(tracking_id=_started[0]))


def test_the_reaper_keeps_no_stream_alive(client, fake):
    stream = client.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)
    tid = tracking_id(stream)
    read(stream, 1)
    watched = tid in [c.tracking_id for c in reaper._reaper.watched()]
    assert watched  # (not in the assert: pytest would keep the call alive)
    ref = weakref.ref(stream)
    del stream
    gc.collect()
    assert ref() is None  # the reaper held it weakly
    assert tid not in [c.tracking_id for c in reaper._reaper.watched()]  # and its call
    assert_incomplete(Event.objects.get(tracking_id=tid))  # recorded on collection, as before


def test_budget_reservation_of_an_abandoned_stream_is_settled(client, fake, submitted):
    budgets.clear_cache()
    team = Team.objects.create(name="Stories", slug=f"stories-{uuid.uuid4().hex[:8]}")
    budget = Budget.objects.create(team=team, period="day", limit_usd=Decimal("10"))
    fake.enqueue(FakeReply(chunks=10))
    with tracking_context(team=team.slug):
        stream = client.chat.completions.create(
            model="gpt-4o", messages=MSGS, stream=True, max_tokens=100
        )
    tid = tracking_id(stream)
    read(stream, 2)
    _kept.append(stream)
    held = SpendCounter.objects.get(budget=budget)
    assert held.reserved_units > 0  # the call's reservation, while it streams

    wait_until(lambda: recorded(tid), TIMEOUT + SLACK)
    event = Event.objects.get(tracking_id=tid)
    assert_incomplete(event)
    counter = SpendCounter.objects.get(budget=budget)
    assert counter.reserved_units == 0  # released, not held until a collection
    # Partial counts are not a cost: the budget is charged the reservation's estimate.
    assert counter.spent == Decimal(event.metadata["budget_charged_usd"]) > 0
    assert submitted.count(tid) == 1
    budgets.clear_cache()


def test_anthropic_stream_dropped_half_way_is_recorded(anthropic_client, fake, submitted):
    client = track_anthropic(anthropic_client)
    fake.enqueue(FakeReply(chunks=8), FakeReply(chunks=8))
    stream = keep(
        client.messages.create(
            model="claude-sonnet-4-6", max_tokens=100, messages=MSGS, stream=True
        )
    )
    read(stream, 3)
    # The messages.stream() helper too, entered and left half-read.
    manager = client.messages.stream(model="claude-sonnet-4-6", max_tokens=100, messages=MSGS)
    helper = keep(manager.__enter__())
    read(helper, 2)
    _kept.append(manager)
    wait_until(lambda: all(recorded(tid) for tid in _started), TIMEOUT + SLACK)
    for tid in _started:
        event = Event.objects.get(tracking_id=tid)
        assert (event.provider, event.metadata["stream_completed"]) == ("anthropic", False)
        assert event.cost_source == "stream-incomplete"
        assert submitted.count(tid) == 1
    assert stream.fluxgate.tracking_id == _started[0]
    assert helper.fluxgate.tracking_id == _started[1]


def test_async_stream_is_reaped_off_the_event_loop(
    async_openai_client, fake, submitted, monkeypatch
):
    client = track_openai(async_openai_client)
    ended_on: list[str] = []
    end_stream = reaper.end_stream

    def spy(call: Any, *args: Any, **kwargs: Any) -> None:
        ended_on.append(threading.current_thread().name)
        end_stream(call, *args, **kwargs)

    monkeypatch.setattr(reaper, "end_stream", spy)  # the reaper's own ending
    fake.enqueue(FakeReply(chunks=10))

    async def run() -> bool:
        stream = await client.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)
        keep(stream)
        n = 0
        async for _ in stream:
            n += 1
            if n == 2:
                break
        await asyncio.sleep(TIMEOUT + SLACK / 2)  # the loop is free; the stream is idle
        # (Checked on the loop: closing the loop would end the stream too.)
        await sync_to_async(flush)()
        return await Event.objects.filter(tracking_id=_started[0]).aexists()

    assert async_to_sync(run)()
    assert_incomplete(Event.objects.get(tracking_id=_started[0]))
    assert ended_on == ["fluxgate-stream-reaper"]
    assert submitted.count(_started[0]) == 1


def test_endings_at_once_record_the_stream_once(client, fake, submitted, monkeypatch):
    """The reaper, ``close()`` and a reader finishing, all at the same moment."""
    fake.enqueue(FakeReply(chunks=10))
    with fluxgate_overrides(STREAM_IDLE_TIMEOUT=None):
        stream = client.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)
        read(stream, 2)
        time.sleep(0.05)
        call = call_of(stream)
        # A slow ending (reading the stream's usage), so that the others come meanwhile.
        accumulator = type(call.accumulator)
        result = accumulator.result

        def slow_result(self: Any, info: Any) -> Any:
            time.sleep(0.05)
            return result(self, info)

        monkeypatch.setattr(accumulator, "result", slow_result)
        start = threading.Barrier(4)

        def at_once(end: Callable[[], Any]) -> Callable[[], None]:
            def run() -> None:
                start.wait()
                try:
                    end()
                except Exception:  # reading a stream another thread closes may fail
                    pass

            return run

        endings = [
            at_once(lambda: reaper.end_stream(call, idle_for=0.01)),
            at_once(stream.close),
            at_once(lambda: list(stream)),
            at_once(lambda: reaper.end_stream(call)),
        ]
        threads = [threading.Thread(target=e) for e in endings]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert submitted.count(call.tracking_id) == 1
    assert recorded(call.tracking_id)


# -- the end of a request ----------------------------------------------------------------------


def _async_client() -> Any:
    import openai

    options = {k: v for k, v in fluxgate_settings.PROVIDERS["openai"].items() if v is not None}
    return track_openai(openai.AsyncOpenAI(max_retries=0, **options))


def abandon(request: HttpRequest) -> JsonResponse:
    """Reads two chunks of a stream and returns without closing it."""
    stream = track_openai().chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True)
    read(keep(stream), 2)
    return JsonResponse({})


async def aabandon(request: HttpRequest) -> JsonResponse:
    stream = await _async_client().chat.completions.create(
        model="gpt-4o-mini", messages=MSGS, stream=True
    )
    await anext(aiter(keep(stream)))
    return JsonResponse({})


def relay(request: HttpRequest) -> StreamingHttpResponse:
    """Returns the stream itself as the response body: read as it is sent."""
    stream = track_openai().chat.completions.create(
        model="gpt-4o-mini", messages=MSGS, stream=True, stream_options=USAGE
    )
    keep(stream)

    def body() -> Iterator[str]:
        for chunk in stream:
            if chunk.choices:
                yield chunk.choices[0].delta.content or ""

    return StreamingHttpResponse(body(), content_type="text/plain")


async def arelay(request: HttpRequest) -> StreamingHttpResponse:
    stream = await _async_client().chat.completions.create(
        model="gpt-4o-mini", messages=MSGS, stream=True, stream_options=USAGE
    )
    keep(stream)

    async def body() -> AsyncIterator[str]:
        async for chunk in stream:
            if chunk.choices:
                yield chunk.choices[0].delta.content or ""

    return StreamingHttpResponse(body(), content_type="text/plain")


urlpatterns = [
    path("abandon/", abandon),
    path("aabandon/", aabandon),
    path("relay/", relay),
    path("arelay/", arelay),
]


@pytest.fixture
def no_idle_timeout() -> Iterator[None]:
    """Only the end of the request can record these streams."""
    with fluxgate_overrides(STREAM_IDLE_TIMEOUT=None):
        yield


def test_stream_abandoned_by_a_view_is_recorded_when_the_request_ends(
    fake, submitted, no_idle_timeout
):
    fake.enqueue(FakeReply(chunks=10))
    response = Client().get("/abandon/", HTTP_X_REQUEST_ID="req-abandon")
    assert response.status_code == 200
    [tid] = _started
    event = Event.objects.get(tracking_id=tid)  # by the time the response is out
    assert_incomplete(event)
    assert (event.request_id, event.feature) == ("req-abandon", f"{__name__}.abandon")
    assert _kept[0].fluxgate.tracking_id == tid
    assert submitted.count(tid) == 1


def test_stream_abandoned_by_an_async_view_is_recorded_when_the_request_ends(
    fake, submitted, no_idle_timeout
):
    fake.enqueue(FakeReply(chunks=10))

    async def get() -> bool:
        response = await AsyncClient().get("/aabandon/", headers={"X-Request-ID": "req-aabandon"})
        assert response.status_code == 200
        # (Checked on the loop: closing the loop would end the stream too.)
        await sync_to_async(flush)()  # the write was handed off the loop
        return await Event.objects.filter(tracking_id=_started[0]).aexists()

    assert async_to_sync(get)()
    event = Event.objects.get(tracking_id=_started[0])
    assert_incomplete(event)
    assert event.request_id == "req-aabandon"
    assert submitted.count(_started[0]) == 1


def test_stream_relayed_by_a_streaming_response_is_recorded_complete(
    fake, submitted, no_idle_timeout
):
    fake.enqueue(FakeReply(chunks=5, chunk_delay=0.02, input_tokens=20, output_tokens=7))
    response: Any = Client().get("/relay/")
    [tid] = _started
    assert not recorded(tid)  # the view has returned; its stream is being sent
    body = b"".join(response.streaming_content)  # the test client then closes it
    assert body == b"Hello from the fake provider."
    event = Event.objects.get(tracking_id=tid)
    assert_complete(event)
    assert (event.input_tokens, event.output_tokens) == (20, 7)
    assert submitted.count(tid) == 1


def test_stream_relayed_to_a_client_that_leaves_is_recorded_when_the_response_closes(
    fake, submitted, no_idle_timeout
):
    fake.enqueue(FakeReply(chunks=8))
    response: Any = Client().get("/relay/")
    [tid] = _started
    next(iter(response.streaming_content))
    assert not recorded(tid)
    response.close()  # what the server does when the client goes away
    assert_incomplete(Event.objects.get(tracking_id=tid))
    assert submitted.count(tid) == 1


def test_async_stream_relayed_by_a_streaming_response_is_recorded_complete(
    fake, submitted, no_idle_timeout
):
    fake.enqueue(FakeReply(chunks=5, chunk_delay=0.02, input_tokens=20, output_tokens=7))

    async def get() -> tuple[bytes, bool]:
        response: Any = await AsyncClient().get("/arelay/")
        assert not await Event.objects.filter(tracking_id=_started[0]).aexists()
        body = b"".join([part async for part in response.streaming_content])
        await sync_to_async(flush)()
        return body, await Event.objects.filter(tracking_id=_started[0]).aexists()

    assert async_to_sync(get)() == (b"Hello from the fake provider.", True)
    event = Event.objects.get(tracking_id=_started[0])
    assert_complete(event)
    assert event.output_tokens == 7
    assert submitted.count(_started[0]) == 1
