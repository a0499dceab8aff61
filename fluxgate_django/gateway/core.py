"""The core every gateway endpoint shares: the caller's key, the attribution, the model
(or route) resolved, then one attempt after another (:mod:`.attempt`) until one answers.

A call to a model (or an alias) is one attempt: it passes through. A call to
``route:NAME`` goes through the route as the LLM service runs it: its models in the
order of its strategy (``service.routing``), each model's circuit breaker
(``service.breaker``: an open circuit is skipped without a request, a half-open one
probed by one caller), the next model on a timeout, a connection failure, a 429 or a
5xx (``service.failures.classify``; the caller's own 4xx is answered as it is), and the
response cache (``FLUXGATE["RESPONSE_CACHE"]``; not for streams), scoped per team as
``SERVICE_CACHE_SCOPE`` says: a hit is an event with ``cache_hit``, cost 0 and the
saving. The cache, the breaker and routing state live in Django's cache: they are asked
off the event loop, as are the key and the budget (no query on the loop), in the
loop's shared worker threads (:func:`off_loop`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.core.cache import caches
from django.core.exceptions import RequestDataTooBig
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from ..conf import fluxgate_settings
from ..context import TrackingContext
from ..errors import capture_internal_exceptions
from ..models import ApiKey
from ..pipeline import make_record, submit
from ..records import CallInfo, CostSource, Source, Status, Usage
from ..service import routing
from ..service.breaker import CircuitBreaker
from ..service.providers import provider_kind
from . import upstream
from .attempt import TRACKING_HEADER, Attempt, Outcome
from .callers import authenticate, context_for
from .protocols import PROTOCOLS, Endpoint, GatewayError, Protocol, json_response
from .targets import ROUTE_PREFIX, Target, listed_models, resolve_target

T = TypeVar("T")


async def off_loop(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` (which may wait on the database or Django's cache) in the loop's
    shared worker threads, closing its connection as a request would (``CONN_MAX_AGE``).
    Not thread-sensitive: Django's default would keep a thread for each request until it
    is done, i.e. one per open stream."""

    def in_worker() -> T:
        close_old_connections()
        try:
            return func(*args)
        finally:
            close_old_connections()

    return await sync_to_async(in_worker, thread_sensitive=False)()


async def serve(request: HttpRequest, endpoint: Endpoint) -> HttpResponseBase:
    """Answer one call to ``endpoint`` (any error in the caller's protocol)."""
    caller = PROTOCOLS[endpoint.protocol]
    try:
        key = await off_loop(authenticate, request, caller.secret(request))
        body = _json_body(request)
        requested = body.get("model")
        if not isinstance(requested, str) or not requested:
            raise GatewayError(400, "invalid_request", "FluxGate: the request names no model.")
        ctx = context_for(request, key, caller.end_user(body))
        resolve = functools.partial(
            resolve_target, key, requested, body, endpoint.operation, caller.name
        )
        # (A route's strategy may read the cache: off the loop. A model is resolved in memory.)
        target = await off_loop(resolve) if requested.startswith(ROUTE_PREFIX) else resolve()
        if not endpoint.operation:
            return await _untracked(request, caller, endpoint, body, target)
        return await Exchange(request, caller, endpoint, body, ctx, key, target).run()
    except GatewayError as error:
        return caller.error_response(error)


async def models(request: HttpRequest) -> HttpResponseBase:
    """``GET models``: what the caller's key may use (OpenAI's list format)."""
    caller = PROTOCOLS["openai"]
    try:
        key = await off_loop(authenticate, request, caller.secret(request))
    except GatewayError as error:
        return caller.error_response(error)
    return json_response({"object": "list", "data": listed_models(key)})


def _json_body(request: HttpRequest) -> dict[str, Any]:
    try:
        raw = request.body
    except RequestDataTooBig as exc:
        raise GatewayError(
            413,
            "too_large",
            "FluxGate: the request body is larger than the site's DATA_UPLOAD_MAX_MEMORY_SIZE.",
        ) from exc
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise GatewayError(
            400, "invalid_request", "FluxGate: the request body is not a JSON object."
        )
    return body


@dataclasses.dataclass
class Exchange:
    """One gateway call: its attempts, and a route's breaker and response cache."""

    request: HttpRequest
    caller: Protocol
    endpoint: Endpoint
    body: dict[str, Any]
    ctx: TrackingContext
    key: ApiKey
    target: Target

    def __post_init__(self) -> None:
        self.stream = self.endpoint.streams and self.body.get("stream") is True
        route = self.target.route
        self.timeout: float | None = None
        if route is not None or self.target.requested in fluxgate_settings.MODELS:
            self.ctx = self.ctx.merge(metadata={"gateway_model": self.target.requested})
        if route is not None:
            self.timeout = routing.route_config(route).get("timeout")

    async def run(self) -> HttpResponseBase:
        route = self.target.route
        if route is None:  # one model: it passes through
            attempt = Attempt(self, self.target.candidates[0], 0)
            attempt.prepare()
            return (await attempt.run()).response
        cache = _ResponseCache(self) if not self.stream else None
        if cache is not None and (hit := await off_loop(cache.get)) is not None:
            return cache.answer(hit)
        breaker = CircuitBreaker()
        outcome: Outcome | None = None
        answered: Attempt | None = None
        skipped: list[str] = []
        refusal: GatewayError | None = None
        for ref in self.target.candidates:
            gate = await off_loop(breaker.allow, str(ref))
            if gate is None:
                skipped.append(f"{ref}: circuit open")
                continue
            attempt = Attempt(self, ref, index=0 if answered is None else answered.index + 1)
            try:
                attempt.prepare()
                result = await attempt.run()
            except GatewayError as error:  # refused before anything was sent
                if gate == "probe":
                    await _quietly(breaker.release_probe, str(ref))
                if error.kind != "invalid_request":
                    raise  # a budget's refusal: the team's, whichever model
                refusal = error
                skipped.append(f"{ref}: {error.message}")
                continue
            outcome, answered = result, attempt
            await _quietly(_judge, breaker, ref, gate, result, attempt)
            if not result.retry:
                break
        if outcome is not None and answered is not None:
            if cache is not None and outcome.verdict == "success":
                await _quietly(cache.store, outcome, answered)
            return outcome.response  # (after every model failed: the last one's error)
        if refusal is not None:
            raise refusal
        raise GatewayError(
            503,
            "unavailable",
            f"FluxGate: no model of route {route!r} could take the call; none was called "
            f"({'; '.join(skipped)}).",
        )


def _judge(
    breaker: CircuitBreaker, ref: Any, gate: str, outcome: Outcome, attempt: Attempt
) -> None:
    """An attempt's verdict on its model's circuit (and its latency, for the strategy)."""
    probe = gate == "probe"
    if outcome.verdict == "success":
        breaker.record_success(str(ref), probe=probe)
        if attempt.call is not None:
            routing.record_latency(ref, (time.perf_counter() - attempt.call.started) * 1000)
    elif outcome.verdict == "failure":
        breaker.record_failure(str(ref))
    elif probe:
        breaker.release_probe(str(ref))


async def _quietly(func: Any, *args: Any) -> None:
    """Run FluxGate's own bookkeeping off the loop; a failure is logged, not raised."""
    with capture_internal_exceptions("gateway bookkeeping"):
        await off_loop(func, *args)


class _ResponseCache:
    """A route's answers, kept as the caller got them (its protocol, its endpoint)."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        options = fluxgate_settings.RESPONSE_CACHE
        self.ttl = int(options.get("ttl", 0) or 0)
        self.cache = caches[options.get("alias", "default")]
        scope = (
            "site"
            if fluxgate_settings.SERVICE_CACHE_SCOPE == "site"
            else f"team:{exchange.key.team_id}"
        )
        payload = json.dumps(
            {
                "scope": scope,
                "target": exchange.target.requested,
                "endpoint": [exchange.endpoint.protocol, exchange.endpoint.name],
                "body": exchange.body,
            },
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )
        self.key = "fluxgate:gateway:" + hashlib.sha256(payload.encode()).hexdigest()
        self.started = time.perf_counter()

    def get(self) -> dict[str, Any] | None:
        return self.cache.get(self.key) if self.ttl > 0 else None

    def store(self, outcome: Outcome, attempt: Attempt) -> None:
        response = outcome.response
        record = attempt.call.record if attempt.call is not None else None
        if self.ttl <= 0 or not isinstance(response, HttpResponse) or record is None:
            return
        if record.status != Status.SUCCESS.value:
            return  # (only a complete answer is reused: not one cut short or filtered)
        entry = {
            "content": response.content.decode(),
            "content_type": response.get("Content-Type", "application/json"),
            "provider": record.provider,
            "model": record.model,
            "operation": record.operation,
            "finish_reason": record.finish_reason,
            "cost": None if record.cost_usd is None else str(record.cost_usd),
        }
        self.cache.set(self.key, entry, self.ttl)

    def answer(self, hit: dict[str, Any]) -> HttpResponse:
        """The cached answer, recorded as an event that sent nothing: no tokens, cost 0,
        and the cost of the call it saved."""
        answer = HttpResponse(hit["content"], content_type=hit["content_type"])
        answer["X-FluxGate-Cache"] = "hit"
        with capture_internal_exceptions("recording a cache hit"):
            info = CallInfo(
                provider=hit["provider"],
                operation=hit["operation"],
                requested_model=hit["model"],
                model=hit["model"],
                finish_reason=hit["finish_reason"],
            )
            record = submit(
                make_record(
                    info,
                    Usage(),
                    self.exchange.ctx,
                    source=Source.GATEWAY,
                    latency_ms=(time.perf_counter() - self.started) * 1000,
                    cache_hit=True,
                    cost_usd=Decimal(0),
                    cost_source=CostSource.RESPONSE_CACHE.value,
                    cost_saved_usd=None if hit["cost"] is None else Decimal(hit["cost"]),
                )
            )
            answer[TRACKING_HEADER] = str(record.tracking_id)
        return answer


async def _untracked(
    request: HttpRequest, caller: Protocol, endpoint: Endpoint, body: dict[str, Any], target: Target
) -> HttpResponseBase:
    """An endpoint that is not an LLM call (``count_tokens``: free, no event, no budget):
    passed through to the first of the target's models that speaks the caller's protocol."""
    ref = next((r for r in target.candidates if provider_kind(r.provider) == caller.name), None)
    if ref is None:
        raise GatewayError(
            400,
            "invalid_request",
            f"FluxGate: {endpoint.name} is served by {caller.name} models only.",
        )
    try:
        response = await upstream.send(
            ref.provider, caller, endpoint.path, {**body, "model": ref.model}, request
        )
        try:
            content = await response.aread()
        finally:
            await response.aclose()
    except Exception as exc:
        raise upstream.unreachable(ref.provider, exc) from exc
    return upstream.passed_on(response, content)
