"""Views for the middleware tests: they report ``current_context()`` and make tracked calls.

The tracked calls go to the OpenAI client configured by ``FLUXGATE["PROVIDERS"]["openai"]``
(the tests point it at the fake provider with ``override_settings``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.utils.functional import empty

from fluxgate_django import current_context, track_openai, tracking_context
from fluxgate_django.conf import fluxgate_settings
from fluxgate_django.context import TrackingContext

MESSAGES: Any = [{"role": "user", "content": "hi"}]

#: Set by a test so that concurrent requests all wait for each other inside the view.
barrier: threading.Barrier | None = None


def context_json(ctx: TrackingContext) -> dict[str, Any]:
    return {
        "feature": ctx.feature,
        "user": ctx.user,
        "team": ctx.team,
        "session_id": ctx.session_id,
        "request_id": ctx.request_id,
    }


def _feature_block(request: HttpRequest) -> Any:
    """The view's own ``tracking_context(feature=...)`` when ``?feature=`` is given."""
    feature = request.GET.get("feature")
    return tracking_context(feature=feature) if feature else contextlib.nullcontext()


def echo(request: HttpRequest) -> JsonResponse:
    if barrier is not None:
        barrier.wait()
    with _feature_block(request):
        return JsonResponse(context_json(current_context()))


async def aecho(request: HttpRequest) -> JsonResponse:
    # AuthenticationMiddleware's request.user is lazy; the middleware must use auser().
    user_evaluated = getattr(request.user, "_wrapped", empty) is not empty
    before = context_json(current_context())
    # Let other requests on the event loop run in between.
    for _ in range(3):
        await asyncio.sleep(float(request.GET.get("sleep", "0")))
    after = context_json(current_context())
    with _feature_block(request):
        data = context_json(current_context())
    return JsonResponse({**data, "unchanged": before == after, "user_evaluated": user_evaluated})


def boom(request: HttpRequest) -> JsonResponse:
    raise RuntimeError("boom")


def chat(request: HttpRequest) -> JsonResponse:
    client: Any
    with track_openai() as client, _feature_block(request):
        response = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        ctx = current_context()
    return JsonResponse({"tracking_id": str(response.fluxgate.tracking_id), **context_json(ctx)})


async def achat(request: HttpRequest) -> JsonResponse:
    import openai

    options = {k: v for k, v in fluxgate_settings.PROVIDERS["openai"].items() if v is not None}
    client: Any
    async with track_openai(openai.AsyncOpenAI(max_retries=0, **options)) as client:
        with _feature_block(request):
            response = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            ctx = current_context()
    return JsonResponse({"tracking_id": str(response.fluxgate.tracking_id), **context_json(ctx)})


def stream(request: HttpRequest) -> StreamingHttpResponse:
    """The LLM call happens lazily, while the body is streamed after the view returned."""

    def body() -> Iterator[str]:
        yield json.dumps(context_json(current_context())) + "\n"
        client: Any
        with track_openai() as client:
            response = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        yield json.dumps({"tracking_id": str(response.fluxgate.tracking_id)}) + "\n"

    return StreamingHttpResponse(body(), content_type="application/x-ndjson")


async def astream(request: HttpRequest) -> StreamingHttpResponse:
    """An async body, produced after the view returned."""

    async def body() -> AsyncIterator[str]:
        for _ in range(2):
            await asyncio.sleep(0)
            yield json.dumps(context_json(current_context())) + "\n"

    return StreamingHttpResponse(body(), content_type="application/x-ndjson")


async def service_acomplete(request: HttpRequest) -> JsonResponse:
    """``LLMService.acomplete`` in an async view (tests/test_service_loops.py)."""
    from fluxgate_django import LLMService

    answer = await LLMService().acomplete(MESSAGES, model="fast")
    return JsonResponse({"content": answer.content, "tracking_id": str(answer.tracking_id)})


async def service_astream(request: HttpRequest) -> JsonResponse:
    """``LLMService.astream`` in an async view (tests/test_service_loops.py)."""
    from fluxgate_django import LLMService

    text = "".join([t async for t in LLMService().astream(MESSAGES, model="claude-sonnet")])
    return JsonResponse({"content": text})


def enqueue_llm_task(request: HttpRequest) -> JsonResponse:
    """Enqueue ``tests.ask_llm`` (tests/celery_tasks.py): the task inherits this request's
    tracking context (tests/test_celery.py)."""
    from tests.celery_tasks import ask_llm

    return JsonResponse({"task_id": ask_llm.delay().id})
