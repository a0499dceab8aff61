"""One ``LLMService`` call: its candidates, its attempts, and their bookkeeping.

:class:`_Run` is the orchestration, written once for sync and async callers; a
:class:`_Step` is one attempt at one model. What an attempt cost, used and how it ended
is read off the tracked client's ``fluxgate`` (a ``TrackingResult``) on its response or
its error, never re-read from the response.

A model whose circuit is open is skipped without a network call, whatever its place in
the route: when every model is skipped the call fails at once with
:class:`AllProvidersFailed`, its ``attempts`` naming each model and why it was skipped.
Past the breaker's cooldown one caller probes the model (see :mod:`.breaker`).

The response cache is scoped by ``FLUXGATE["SERVICE_CACHE_SCOPE"]``: ``"team"`` (the
default) keys an answer on the calling team too, so one team's answer is never served to
another; ``"site"`` shares answers across teams deliberately. A hit is recorded for the
caller's own team either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import DatabaseError, InterfaceError, close_old_connections

from .. import teams
from ..conf import fluxgate_settings
from ..context import current_context, resolved, tracking_context
from ..errors import capture_internal_exceptions
from ..exceptions import CallRefused
from ..model_refs import ModelRef
from ..pipeline import ServiceAttempt, make_record, service_attempt, submit
from ..records import CallInfo, CostSource, Source, Status, TrackingResult, Usage
from . import providers, routing
from .failures import AllProvidersFailed, classify, context_window, is_timeout
from .types import Attempt, Completion, ServiceRequest

if TYPE_CHECKING:
    from .core import LLMService

T = TypeVar("T")


async def off_loop(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``func`` (which may wait on Django's cache or database) off the event loop, in
    a worker thread that closes its connection as a request would (``CONN_MAX_AGE``)."""

    def in_worker() -> T:
        close_old_connections()
        try:
            return func(*args, **kwargs)
        finally:
            close_old_connections()

    return await sync_to_async(in_worker)()


def _sticky_key(conversation_id: str) -> str:
    # Conversation ids are the caller's data: hashed to a cache-safe key.
    return "fluxgate:sticky:" + hashlib.sha256(str(conversation_id).encode()).hexdigest()[:32]


def _cache_scope() -> str | None:
    """Whose calls a response-cache entry may answer, for the current context: ``"site"``
    (every team's, when ``SERVICE_CACHE_SCOPE`` says so) or the calling team's alone (its
    id, its slug if no such team exists, or "no team"). None when the team can't be told
    (the database is down and the team was never seen): the call then skips the cache."""
    if fluxgate_settings.SERVICE_CACHE_SCOPE == "site":
        return "site"
    team = current_context().team
    try:
        team = resolved(team)
        team_id = teams.team_id_of(team)
    except (DatabaseError, InterfaceError):
        known, team_id = teams.last_known_team_id(team)
        if not known:
            return None
    if team_id is not None:
        return f"team:{team_id}"
    if isinstance(team, str):  # a slug no team has: still not another caller's entry
        return f"team-slug:{team}"
    return "team:none"


def _result(obj: Any) -> TrackingResult | None:
    """The tracked client's record of a call (on its response or its error)."""
    result = getattr(obj, "fluxgate", None)
    return result if isinstance(result, TrackingResult) else None


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
        """The cached answer for this request in the caller's cache scope, recorded as a
        hit for the caller; None on a miss (the answer is then cached by ``succeeded``)."""
        if self.cache_ttl <= 0:
            return None
        with self.scope():
            scope = _cache_scope()
            if scope is None:
                self.cache_ttl = 0
                return None
            self.cache_key = self.request.cache_key(self.target, scope)
            hit = self.service.response_cache.get(self.cache_key)
            if hit is None:
                return None
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
        """The next model to call, or None when none is left. A model whose circuit is
        open is skipped (no network call), the last one too; past its cooldown this call
        may be the one probe that decides it."""
        breaker = self.service.breaker
        while self.index < len(self.candidates):
            ref = self.candidates[self.index]
            self.index += 1
            if self.min_window is not None:
                window = context_window(ref)
                if window is None or window <= self.min_window:
                    self.attempts.append(Attempt(ref.provider, ref.model, "skipped-small-window"))
                    continue
            # Before the breaker: a model skipped for the deadline takes no probe slot.
            if self.deadline is not None and time.perf_counter() >= self.deadline:
                self.attempts.append(Attempt(ref.provider, ref.model, "skipped-deadline"))
                continue
            allowed = breaker.allow(str(ref))
            if allowed is None:
                self.attempts.append(Attempt(ref.provider, ref.model, "skipped-open-circuit"))
                continue
            self.probing = allowed == "probe"
            return ref
        return None

    def release_probe(self, ref: ModelRef) -> None:
        """This attempt held a half-open circuit's probe slot but said nothing about the
        model's health (the caller's own 4xx, a call FluxGate refused, a cancellation):
        free the slot for the next caller instead of keeping it for a whole cooldown."""
        if not self.probing:
            return
        self.probing = False
        with capture_internal_exceptions("releasing a circuit probe"):
            self.service.breaker.release_probe(str(ref))

    def timeout_for_attempt(self) -> float | None:
        timeout = self.attempt_timeout
        if self.deadline is not None:
            remaining = max(self.deadline - time.perf_counter(), 0.001)
            timeout = min(timeout, remaining) if timeout else remaining
        return timeout

    def next_step(self, loop: asyncio.AbstractEventLoop | None = None) -> _Step | None:
        """The next attempt; with ``loop`` (the caller's running loop: this runs in a worker
        thread), an async one, through that loop's own async client."""
        ref = self.next_attempt()
        return None if ref is None else _Step(self, ref, loop=loop)

    def _tried(self) -> list[Attempt]:
        return [a for a in self.attempts if not a.outcome.startswith("skipped")]

    def failed(self, step: _Step) -> None:
        """Note a failed attempt, to try the next model; re-raises the attempt's error when
        it is the caller's own (a 4xx)."""
        ref, error = step.ref, step.error
        assert error is not None
        kind = classify(error)
        result = _result(error)
        self.attempts.append(
            Attempt(
                ref.provider,
                ref.model,
                "timeout" if is_timeout(error) else "error",
                latency_ms=(time.perf_counter() - step.started) * 1000,
                error=f"{type(error).__name__}: {str(error)[:200]}",
                tracking_id=result.tracking_id if result else None,
            )
        )
        self.last_error = error
        if kind == "retry":
            with capture_internal_exceptions("recording a provider failure"):
                self.service.breaker.record_failure(str(ref))
            return
        self.release_probe(ref)
        if kind == "context":
            self.min_window = context_window(ref) or 0
        else:
            raise error

    def succeeded(self, step: _Step) -> Completion:
        ref = step.ref
        latency = (time.perf_counter() - step.started) * 1000
        # What the call used, cost and how it ended, as the tracked client recorded it (none
        # if FluxGate's own bookkeeping failed: the answer is still served).
        result = _result(step.response)
        tracking_id = result.tracking_id if result else None
        self.attempts.append(
            Attempt(ref.provider, ref.model, "success", latency_ms=latency, tracking_id=tracking_id)
        )
        completion = Completion(
            content=providers.answer_text(step.kind, step.response),
            provider=ref.provider,
            model=(result.model if result else "") or ref.model,
            usage=(result.usage if result else None) or Usage(),
            cost=result.cost if result else None,
            latency_ms=(time.perf_counter() - self.started) * 1000,
            cache_hit=False,
            fallback_used=len(self._tried()) > 1,
            attempts=self.attempts,
            tracking_id=tracking_id,
            finish_reason=result.finish_reason if result else "",
        )
        with capture_internal_exceptions("service bookkeeping"):
            self.service.breaker.record_success(str(ref), probe=self.probing)
            routing.record_latency(ref, latency)
            cache = self.service.response_cache
            # Only a complete answer is reused (not one cut at max_tokens or filtered).
            if self.cache_ttl > 0 and result is not None and result.status is Status.SUCCESS:
                cache.set(self.cache_key, completion.to_cache(), self.cache_ttl)
            if self.conversation_id:
                cache.set(_sticky_key(self.conversation_id), ref.provider, 24 * 3600)
        return completion

    def streamed(self, step: _Step) -> None:
        self.attempts.append(Attempt(step.ref.provider, step.ref.model, "success"))
        with capture_internal_exceptions("service bookkeeping"):
            self.service.breaker.record_success(str(step.ref), probe=self.probing)

    def exhausted(self) -> AllProvidersFailed:
        """The error for a call no model served: every attempt, tried or skipped, listed
        (none tried: every circuit was open or every model skipped, and nothing was sent)."""
        summary = "; ".join(f"{a.provider}/{a.model}: {a.outcome}" for a in self.attempts)
        if self._tried():
            message = f"No provider could serve the request ({summary})"
        else:
            message = f"No model was available for the request; none was called ({summary})"
        return AllProvidersFailed(message, self.attempts, self.last_error)

    def _record_cache_hit(self, hit: dict[str, Any]) -> Completion:
        """The cached answer, recorded as an event that sent nothing: no tokens, cost 0,
        and the cost of the call it saved."""
        provider = hit["provider"]
        info = CallInfo(
            provider=provider,
            operation=providers.OPERATIONS[providers.provider_kind(provider)],
            requested_model=hit["model"],
            model=hit["model"],
            finish_reason=hit.get("finish_reason", ""),
        )
        latency = (time.perf_counter() - self.started) * 1000
        record = submit(
            make_record(
                info,
                Usage(),
                current_context(),
                source=Source.SERVICE,
                latency_ms=latency,
                cache_hit=True,
                cost_usd=Decimal(0),
                cost_source=CostSource.RESPONSE_CACHE.value,
                cost_saved_usd=None if hit["cost"] is None else Decimal(hit["cost"]),
            )
        )
        return Completion(
            content=hit["content"],
            provider=provider,
            model=hit["model"],
            usage=Usage(**hit["usage"]),
            cost=Decimal(0),
            latency_ms=latency,
            cache_hit=True,
            fallback_used=False,
            attempts=[Attempt(hit["provider"], hit["model"], "cache-hit")],
            tracking_id=record.tracking_id,
            finish_reason=hit.get("finish_reason", ""),
        )


class _Step:
    """One attempt at one model. ``with step:`` (``async with step:`` in a coroutine) runs
    the provider call with the attempt's attribution (the caller's context,
    ``source="service"``, its fallback index); the provider's error is kept as
    ``step.error`` for :meth:`_Run.failed` to judge. A call FluxGate refused (a budget)
    propagates, freeing the circuit's probe slot if the attempt held it."""

    def __init__(self, run: _Run, ref: ModelRef, *, loop: asyncio.AbstractEventLoop | None) -> None:
        self.run = run
        self.ref = ref
        self.kind = providers.provider_kind(ref.provider)
        self.path, self.kwargs = providers.call_arguments(
            self.kind, ref.model, run.request, run.timeout_for_attempt()
        )
        # An async attempt uses its loop's client: one reused on another loop would fail.
        client = providers.clients.get(ref.provider, loop=loop)
        if loop is not None and self.kind == "gemini":
            client = client.aio  # google-genai keeps its async methods under .aio
        self.client = client
        self.method = providers.method_of(client, self.path)
        self.response: Any = None
        self.error: Exception | None = None
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

    def _close(self, exc: BaseException | None) -> bool:
        """Leave the attempt's scope; whether ``exc`` is kept as the attempt's error."""
        assert self._exits is not None
        self._exits.close()
        if exc is None or isinstance(exc, CallRefused) or not isinstance(exc, Exception):
            return False
        self.error = exc
        return True

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        kept = self._close(exc)
        if exc is not None and not kept:
            self.run.release_probe(self.ref)
        return kept

    async def __aenter__(self) -> _Step:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        kept = self._close(exc)
        if exc is not None and not kept and self.run.probing:
            await off_loop(self.run.release_probe, self.ref)
        return kept


def _stream_request(step: _Step) -> tuple[Callable[..., Any], dict[str, Any]]:
    """The SDK method that streams this attempt's answer, and its arguments."""
    if step.kind == "openai":
        return step.method, {
            **step.kwargs,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    if step.kind == "anthropic":
        return step.method, {**step.kwargs, "stream": True}
    return step.client.models.generate_content_stream, step.kwargs


def _event_text(kind: str, event: Any) -> str | None:
    """The text a stream event adds to the answer (None: an event without text)."""
    if kind == "openai":
        return (event.choices[0].delta.content or "") if event.choices else None
    if kind == "anthropic":
        if event.type == "content_block_delta" and getattr(event.delta, "type", "") == "text_delta":
            return str(event.delta.text)
        return None
    return event.text or ""


def open_stream(step: _Step) -> Iterator[str]:
    """The answer's text as it arrives (the request is sent now)."""
    method, kwargs = _stream_request(step)
    kind = step.kind
    return (text for event in method(**kwargs) if (text := _event_text(kind, event)) is not None)


async def open_astream(step: _Step) -> AsyncIterator[str]:
    """The async ``open_stream`` (the request is sent on the first ``anext``)."""
    method, kwargs = _stream_request(step)
    async for event in await method(**kwargs):
        if (text := _event_text(step.kind, event)) is not None:
            yield text
