"""``LLMService``: one call, many providers — routing, fallback, breaker, caching.

Each provider attempt goes through a tracked SDK client, so every attempt is its own
event (with ``fallback_attempt`` = its index and ``source="service"``) and budgets are
reserved exactly as for direct SDK calls. The orchestration (:class:`_Run`) is written
once; ``complete`` and ``acomplete`` only differ in how they wait for the provider.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

from django.core.cache import caches

from ..conf import fluxgate_settings
from ..context import current_context, tracking_context
from ..errors import capture_internal_exceptions
from ..exceptions import BudgetExceeded
from ..model_refs import ModelRef
from ..pipeline import ServiceAttempt, build_record, service_attempt, submit
from ..records import CallInfo, Source, Usage
from . import providers, routing
from .breaker import CircuitBreaker
from .types import Attempt, Completion, ServiceRequest

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


_CONTEXT_PHRASES = ("context length", "context window", "prompt is too long", "too many tokens")


def _sticky_key(conversation_id: str) -> str:
    # Conversation ids are the caller's data: hashed to a cache-safe key.
    return "fluxgate:sticky:" + hashlib.sha256(str(conversation_id).encode()).hexdigest()[:32]


class AllProvidersFailed(Exception):
    """Every model of the route failed (or was skipped); ``attempts`` says how."""

    def __init__(self, message: str, attempts: list[Attempt], last_error: Exception | None):
        super().__init__(message)
        self.attempts = attempts
        self.last_error = last_error


def classify(error: BaseException) -> str:
    """``"retry"`` (timeout, connection, 429, 5xx), ``"context"`` (prompt too long for the
    model: try one with a larger window) or ``"fatal"`` (the caller's own 4xx)."""
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & {"APITimeoutError", "APIConnectionError", "TimeoutException", "ConnectError"}:
        return "retry"
    status = getattr(error, "status_code", None)
    if not isinstance(status, int):
        status = getattr(error, "code", None)
    if isinstance(status, int):
        if status == 429 or status >= 500:
            return "retry"
        text = str(error).lower()
        if getattr(error, "code", None) == "context_length_exceeded" or any(
            phrase in text
            for phrase in (
                "context length",
                "context window",
                "prompt is too long",
                "too many tokens",
            )
        ):
            return "context"
        return "fatal"
    return "fatal"


def context_window(ref: ModelRef) -> int | None:
    """The model's context window from genai-prices' data, when it knows it."""
    from genai_prices import Usage as GenaiUsage
    from genai_prices import calc_price

    from ..pricing import GENAI_PROVIDER_IDS

    try:
        calc = calc_price(
            GenaiUsage(input_tokens=0, output_tokens=0),
            ref.model,
            provider_id=GENAI_PROVIDER_IDS.get(ref.provider, ref.provider),
        )
    except LookupError:
        return None
    return calc.model.context_window


class _Run:
    """The state of one ``complete`` call: candidates, attempts, and their bookkeeping."""

    def __init__(
        self,
        service: LLMService,
        request: ServiceRequest,
        *,
        route: str | None,
        model: str | None,
        priority: str | None,
        cache_ttl: int | None,
        timeout: float | None,
        context: dict[str, Any],
    ) -> None:
        self.service = service
        self.request = request
        self.route = route
        self.context = context
        self.started = time.perf_counter()
        config = routing.route_config(route) if route and not model else {}
        self.attempt_timeout = timeout or config.get("timeout")
        deadline = config.get("deadline")
        self.deadline = self.started + float(deadline) if deadline else None
        ttl = fluxgate_settings.RESPONSE_CACHE.get("ttl", 0) if cache_ttl is None else cache_ttl
        self.cache_ttl = int(ttl or 0)
        self.target = f"model:{model}" if model else f"route:{route}"
        self.candidates = routing.order_models(route, model, request, priority=priority)
        self.conversation_id = context.get("conversation_id") or (current_context().conversation_id)
        self._stick_to_first_provider()
        self.attempts: list[Attempt] = []
        self.last_error: Exception | None = None
        self.min_window: int | None = None
        self.probing = False
        self.index = 0

    # -- before any provider call ----------------------------------------------------

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        return tracking_context(**self.context)

    def cached(self) -> Completion | None:
        if self.cache_ttl <= 0:
            return None
        self.cache_key = self.request.cache_key(self.target)
        hit = self.service.response_cache.get(self.cache_key)
        if hit is None:
            return None
        with self.scope():
            return self._record_cache_hit(hit)

    def _stick_to_first_provider(self) -> None:
        if not self.conversation_id:
            return
        sticky = self.service.response_cache.get(_sticky_key(self.conversation_id))
        if sticky:
            provider = sticky
            self.candidates.sort(key=lambda ref: ref.provider != provider)

    # -- attempts ----------------------------------------------------------------------

    def next_attempt(self) -> ModelRef | None:
        breaker = self.service.breaker
        while self.index < len(self.candidates):
            ref = self.candidates[self.index]
            self.index += 1
            if self.min_window is not None:
                window = context_window(ref)
                if window is None or window <= self.min_window:
                    self.attempts.append(Attempt(ref.provider, ref.model, "skipped-small-window"))
                    continue
            is_last = self.index == len(self.candidates)
            allowed = breaker.allow(str(ref))
            if allowed is None and not (is_last and not self._any_tried()):
                self.attempts.append(Attempt(ref.provider, ref.model, "skipped-open-circuit"))
                continue
            self.probing = allowed != "closed"
            if self.deadline is not None and time.perf_counter() >= self.deadline:
                self.attempts.append(Attempt(ref.provider, ref.model, "skipped-deadline"))
                continue
            return ref
        return None

    def _any_tried(self) -> bool:
        return any(not a.outcome.startswith("skipped") for a in self.attempts)

    def timeout_for_attempt(self) -> float | None:
        timeout = self.attempt_timeout
        if self.deadline is not None:
            remaining = max(self.deadline - time.perf_counter(), 0.001)
            timeout = min(timeout, remaining) if timeout else remaining
        return timeout

    def next_step(self, *, asynchronous: bool = False) -> _Step | None:
        ref = self.next_attempt()
        return None if ref is None else _Step(self, ref, asynchronous=asynchronous)

    def _tried(self) -> list[Attempt]:
        return [a for a in self.attempts if not a.outcome.startswith("skipped")]

    def failed(self, ref: ModelRef, error: Exception, started: float) -> bool:
        """Note a failed attempt; True to try the next model, False to re-raise."""
        kind = classify(error)
        tracking = getattr(getattr(error, "fluxgate", None), "tracking_id", None)
        self.attempts.append(
            Attempt(
                ref.provider,
                ref.model,
                "timeout" if "Timeout" in type(error).__name__ else "error",
                latency_ms=(time.perf_counter() - started) * 1000,
                error=f"{type(error).__name__}: {str(error)[:200]}",
                tracking_id=tracking,
            )
        )
        self.last_error = error
        if kind == "retry":
            with capture_internal_exceptions("recording a provider failure"):
                self.service.breaker.record_failure(str(ref))
            return True
        if kind == "context":
            self.min_window = context_window(ref) or 0
            return True
        return False

    def succeeded(self, step: _Step) -> Completion:
        ref, response = step.ref, step.response
        latency = (time.perf_counter() - step.started) * 1000
        text, finish, usage, served = providers.read_answer(step.kind, response)
        result = getattr(response, "fluxgate", None)
        self.attempts.append(
            Attempt(
                ref.provider,
                ref.model,
                "success",
                latency_ms=latency,
                tracking_id=getattr(result, "tracking_id", None),
            )
        )
        completion = Completion(
            content=text,
            provider=ref.provider,
            model=served or ref.model,
            usage=usage,
            cost=getattr(result, "cost", None),
            latency_ms=(time.perf_counter() - self.started) * 1000,
            cache_hit=False,
            fallback_used=len(self._tried()) > 1,
            attempts=self.attempts,
            tracking_id=getattr(result, "tracking_id", None),
            finish_reason=finish,
        )
        with capture_internal_exceptions("service bookkeeping"):
            self.service.breaker.record_success(str(ref), probe=self.probing)
            routing.record_latency(ref, latency)
            cache = self.service.response_cache
            if self.cache_ttl > 0 and finish in ("stop", "end_turn", "STOP", "FinishReason.STOP"):
                cache.set(self.cache_key, completion.to_cache(), self.cache_ttl)
            if self.conversation_id:
                cache.set(_sticky_key(self.conversation_id), ref.provider, 24 * 3600)
        return completion

    def streamed(self, step: _Step) -> None:
        self.attempts.append(Attempt(step.ref.provider, step.ref.model, "success"))
        with capture_internal_exceptions("service bookkeeping"):
            self.service.breaker.record_success(str(step.ref), probe=self.probing)

    def exhausted(self) -> Exception:
        if self.last_error is not None and not any(
            a.outcome == "error" and classify(self.last_error) == "fatal" for a in self.attempts
        ):
            summary = "; ".join(f"{a.provider}/{a.model}: {a.outcome}" for a in self.attempts)
            return AllProvidersFailed(
                f"No provider could serve the request ({summary})", self.attempts, self.last_error
            )
        return AllProvidersFailed(
            "No model was available for the request (all circuits open or skipped)",
            self.attempts,
            self.last_error,
        )

    def _record_cache_hit(self, hit: dict[str, Any]) -> Completion:
        usage = Usage(**hit["usage"])
        saved = None if hit["cost"] is None else Decimal(hit["cost"])
        info = CallInfo(
            provider=hit["provider"],
            operation="chat",
            requested_model=hit["model"],
            model=hit["model"],
            finish_reason=hit.get("finish_reason", ""),
        )
        record = build_record(
            info, Usage(), current_context(), latency_ms=0.0, source=Source.SERVICE
        )
        record.cache_hit = True
        record.cost_usd = Decimal(0)
        record.cost_source = "response-cache"
        record.cost_saved_usd = saved
        record.latency_ms = (time.perf_counter() - self.started) * 1000
        submit(record)
        return Completion(
            content=hit["content"],
            provider=hit["provider"],
            model=hit["model"],
            usage=usage,
            cost=Decimal(0),
            latency_ms=record.latency_ms,
            cache_hit=True,
            fallback_used=False,
            attempts=[Attempt(hit["provider"], hit["model"], "cache-hit")],
            tracking_id=record.tracking_id,
            finish_reason=hit.get("finish_reason", ""),
        )


class _Step:
    """One attempt at one model. ``with step:`` runs the provider call with the attempt's
    attribution (the caller's context, ``source="service"``, its fallback index); an error
    that should fall back to the next model is noted and swallowed (``step.failed``)."""

    def __init__(self, run: _Run, ref: ModelRef, *, asynchronous: bool) -> None:
        self.run = run
        self.ref = ref
        self.kind = providers.provider_kind(ref.provider)
        self.path, self.kwargs = providers.call_arguments(
            self.kind, ref.model, run.request, run.timeout_for_attempt()
        )
        client = providers.clients.get(ref.provider, asynchronous=asynchronous)
        if asynchronous and self.kind == "gemini":
            client = client.aio  # google-genai keeps its async methods under .aio
        self.client = client
        self.method = providers.method_of(client, self.path)
        self.response: Any = None
        self.failed = False
        self.started = 0.0
        self._exits: contextlib.ExitStack | None = None

    def __enter__(self) -> _Step:
        self.started = time.perf_counter()
        stack = contextlib.ExitStack()
        token = service_attempt.set(ServiceAttempt(Source.SERVICE, len(self.run._tried())))
        stack.callback(service_attempt.reset, token)
        stack.enter_context(self.run.scope())
        self._exits = stack
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        assert self._exits is not None
        self._exits.close()
        if exc is None or isinstance(exc, BudgetExceeded) or not isinstance(exc, Exception):
            return False
        self.failed = self.run.failed(self.ref, exc, self.started)
        return self.failed


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
        :class:`~fluxgate_django.BudgetExceeded`, or the provider's own error for a
        request it rejected (4xx)."""
        run = self._run(messages, **options)
        if (hit := run.cached()) is not None:
            return hit
        while (step := run.next_step()) is not None:
            with step:
                step.response = step.method(**step.kwargs)
            if not step.failed:
                return run.succeeded(step)
        raise run.exhausted()

    async def acomplete(self, messages: Any, **options: Any) -> Completion:
        """The async ``complete``."""
        run = self._run(messages, **options)
        if (hit := run.cached()) is not None:
            return hit
        while (step := run.next_step(asynchronous=True)) is not None:
            with step:
                step.response = await step.method(**step.kwargs)
            if not step.failed:
                return run.succeeded(step)
        raise run.exhausted()

    # -- streaming -------------------------------------------------------------------

    def stream(self, messages: Any, **options: Any) -> Iterator[str]:
        """Yield the answer's text as it arrives; usage is recorded when it ends.

        Falls back to the next model only before the first token arrives."""
        run = self._run(messages, cache_ttl=0, **options)
        while (step := run.next_step()) is not None:
            with step:
                chunks = _open_stream(step)
                first = next(chunks, None)
            if step.failed:
                continue
            if first is not None:
                yield first
            yield from chunks
            run.streamed(step)
            return
        raise run.exhausted()

    async def astream(self, messages: Any, **options: Any) -> AsyncIterator[str]:
        """The async ``stream``."""
        run = self._run(messages, cache_ttl=0, **options)
        while (step := run.next_step(asynchronous=True)) is not None:
            with step:
                chunks = _open_astream(step)
                first = await anext(chunks, None)
            if step.failed:
                continue
            if first is not None:
                yield first
            async for text in chunks:
                yield text
            run.streamed(step)
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


def _open_stream(step: _Step) -> Iterator[str]:
    kwargs = step.kwargs
    if step.kind == "openai":
        stream = step.method(**kwargs, stream=True, stream_options={"include_usage": True})
        return (c.choices[0].delta.content or "" for c in stream if c.choices)
    if step.kind == "anthropic":
        stream = step.method(**kwargs, stream=True)
        return (
            e.delta.text
            for e in stream
            if e.type == "content_block_delta" and getattr(e.delta, "type", "") == "text_delta"
        )
    return (chunk.text or "" for chunk in step.client.models.generate_content_stream(**kwargs))


async def _open_astream(step: _Step) -> AsyncIterator[str]:
    kwargs = step.kwargs
    if step.kind == "openai":
        stream = await step.method(**kwargs, stream=True, stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.choices:
                yield chunk.choices[0].delta.content or ""
    elif step.kind == "anthropic":
        stream = await step.method(**kwargs, stream=True)
        async for event in stream:
            if event.type == "content_block_delta" and getattr(event.delta, "type", "") == (
                "text_delta"
            ):
                yield event.delta.text
    else:
        async for chunk in await step.client.models.generate_content_stream(**kwargs):
            yield chunk.text or ""
