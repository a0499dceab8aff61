"""``LLMService``: one call, many providers — routing, fallback, breaker, caching.

Each provider attempt goes through a tracked SDK client, so every attempt is its own
event (with ``fallback_attempt`` = its index and ``source="service"``) and budgets are
reserved exactly as for direct SDK calls. What an attempt cost, used and how it ended is
read off the tracked client's ``response.fluxgate`` (a ``TrackingResult``), never
re-read from the response. The orchestration (:class:`~.run._Run`) is written once;
``complete`` and ``acomplete`` only differ in how they wait for the provider, and
``acomplete`` runs the run's bookkeeping (response cache, breaker and routing state, all
behind Django's cache) off the event loop. Its provider calls go through async clients of
the running loop (see :mod:`.providers`): a service is usable from any number of loops, one
after another (``asyncio.run``, async views under WSGI) or at once (threads).

A model whose circuit is open is never called, not even the route's last one: with every
circuit open the call raises :class:`AllProvidersFailed` at once, without a network call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from django.core.cache import caches

from ..conf import fluxgate_settings
from . import routing
from .breaker import CircuitBreaker
from .failures import AllProvidersFailed, classify, context_window
from .run import _Run, off_loop, open_astream, open_stream
from .types import Completion, ServiceRequest

__all__ = ["AllProvidersFailed", "LLMService", "classify", "context_window"]

_CONTEXT_FIELDS = (
    "feature",
    "user",
    "team",
    "step",
    "session_id",
    "conversation_id",
    "request_id",
    "service_tier",
    "metadata",
    "tags",
)


class LLMService:
    """Complete a request on the best available model of a route (or a given model).

    ::

        service = LLMService()
        answer = service.complete(messages, route="summarize", feature="summarize",
                                  user={"id": "u1"}, team="search")
        answer.content, answer.provider, answer.cost, answer.fallback_used
    """

    def __init__(self, *, cache_alias: str | None = None) -> None:
        alias = cache_alias or fluxgate_settings.RESPONSE_CACHE.get("alias", "default")
        self.response_cache = caches[alias]
        self.breaker = CircuitBreaker()

    def _run(self, messages: Any, **options: Any) -> _Run:
        context = {k: options.pop(k) for k in list(options) if k in _CONTEXT_FIELDS}
        unknown = (
            set(options)
            - {"route", "model", "priority", "cache_ttl", "timeout"}
            - {
                "system",
                "documents",
                "max_tokens",
                "temperature",
                "tools",
            }
        )
        if unknown:
            raise TypeError(f"Unknown argument(s): {', '.join(sorted(unknown))}")
        request = ServiceRequest.build(
            messages,
            system=options.get("system"),
            documents=options.get("documents"),
            max_tokens=options.get("max_tokens"),
            temperature=options.get("temperature"),
            tools=options.get("tools"),
        )
        return _Run(
            self,
            request,
            route=options.get("route"),
            model=options.get("model"),
            priority=options.get("priority"),
            cache_ttl=options.get("cache_ttl"),
            timeout=options.get("timeout"),
            context=context,
        )

    def complete(self, messages: Any, **options: Any) -> Completion:
        """Answer ``messages``; see the module doc. Raises :class:`AllProvidersFailed`,
        :class:`~fluxgate_django.CallRefused` (``BudgetExceeded``...), or the provider's own
        error for a request it rejected (4xx)."""
        run = self._run(messages, **options)
        if (hit := run.cached()) is not None:
            return hit
        while (step := run.next_step()) is not None:
            with step:
                step.response = step.method(**step.kwargs)
            if step.error is None:
                return run.succeeded(step)
            run.failed(step)
        raise run.exhausted()

    async def acomplete(self, messages: Any, **options: Any) -> Completion:
        """The async ``complete``."""
        loop = asyncio.get_running_loop()  # the attempts use this loop's own clients
        run = await off_loop(self._run, messages, **options)
        if (hit := await off_loop(run.cached)) is not None:
            return hit
        while (step := await off_loop(run.next_step, loop)) is not None:
            async with step:
                step.response = await step.method(**step.kwargs)
            if step.error is None:
                return await off_loop(run.succeeded, step)
            await off_loop(run.failed, step)
        raise run.exhausted()

    # -- streaming -------------------------------------------------------------------

    def stream(self, messages: Any, **options: Any) -> Iterator[str]:
        """Yield the answer's text as it arrives; usage is recorded when it ends.

        Falls back to the next model only before the first token arrives."""
        run = self._run(messages, cache_ttl=0, **options)
        while (step := run.next_step()) is not None:
            with step:
                chunks = open_stream(step)
                first = next(chunks, None)
            if step.error is not None:
                run.failed(step)
                continue
            if first is not None:
                yield first
            yield from chunks
            run.streamed(step)
            return
        raise run.exhausted()

    async def astream(self, messages: Any, **options: Any) -> AsyncIterator[str]:
        """The async ``stream``."""
        loop = asyncio.get_running_loop()
        run = await off_loop(self._run, messages, cache_ttl=0, **options)
        while (step := await off_loop(run.next_step, loop)) is not None:
            async with step:
                chunks = open_astream(step)
                first = await anext(chunks, None)
            if step.error is not None:
                await off_loop(run.failed, step)
                continue
            if first is not None:
                yield first
            async for text in chunks:
                yield text
            await off_loop(run.streamed, step)
            return
        raise run.exhausted()

    # -- operations ------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Circuit state of every model named in the routes (and providers configured)."""
        names: list[str] = []
        for config in fluxgate_settings.ROUTES.values():
            for ref in config.get("models", []):
                with contextlib.suppress(Exception):
                    name = str(routing.resolve_model(ref))
                    if name not in names:
                        names.append(name)
        return self.breaker.snapshot(names)
