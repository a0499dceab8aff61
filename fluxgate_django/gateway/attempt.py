"""One attempt of a gateway call at one model: its request, its budget reservation, the
upstream request, and its event.

The event is the tracked clients' own (:class:`~fluxgate_django.tracking.core.
TrackedCall`), made by the one record builder: its usage, served model and finish reason
read by the provider's usage reader off the upstream's JSON (:mod:`.wire`), a stream's
off its events as they pass (:func:`~fluxgate_django.tracking.streams.observe`: time to
first token, a stream left half-way recorded with what it used, the idle timeout).
``source="gateway"``, ``fallback_attempt`` = the attempt's index.

Only the upstream request sits in try/re-raise; FluxGate's bookkeeping is suppressed and
logged. A client that goes away mid-stream closes the upstream stream (the relay's
``finally``), and the event records what the stream had used by then.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from django.http import HttpResponseBase, StreamingHttpResponse

from ..errors import capture_internal_exceptions
from ..exceptions import BudgetStoreUnavailable, CallRefused
from ..guard import acheck_budget, might_apply
from ..model_refs import ModelRef
from ..pipeline import ServiceAttempt, service_attempt
from ..records import Source
from ..service.failures import classify
from ..service.providers import provider_kind
from ..tracking.core import UNREADABLE, TrackedCall
from ..tracking.openai import OpenAIAdapter
from ..tracking.streams import observe
from . import crossing, upstream
from .protocols import (
    PROTOCOLS,
    GatewayError,
    UpstreamError,
    ask_for_stream_usage,
    json_response,
    passed_headers,
)
from .wire import as_view, sse_events

if TYPE_CHECKING:
    from .core import Exchange

TRACKING_HEADER = "X-FluxGate-Tracking-Id"


class Outcome(NamedTuple):
    """What an attempt gives the caller, and whether a route should try its next model."""

    response: HttpResponseBase
    retry: bool = False
    #: "success", "failure" (counts against the model's circuit), "neutral".
    verdict: str = "neutral"


class Attempt:
    """One try at ``ref`` for ``exchange``. :meth:`prepare` (translation: may refuse with
    a 400 before anything is sent), then :meth:`run`."""

    def __init__(self, exchange: Exchange, ref: ModelRef, index: int) -> None:
        self.exchange = exchange
        self.ref = ref
        self.index = index
        self.call: TrackedCall | None = None
        #: The stream chunks FluxGate asked for and the caller did not (not shown).
        self.hidden: Callable[[Any], bool] | None = None

    def prepare(self) -> None:
        exchange, ref = self.exchange, self.ref
        kind = provider_kind(ref.provider)
        protocol = PROTOCOLS.get(kind)
        if protocol is None:
            raise GatewayError(
                400,
                "invalid_request",
                f"FluxGate: the gateway does not call {kind} models ({ref}).",
            )
        self.upstream = protocol
        self.endpoint = crossing.counterpart(exchange.endpoint, protocol.name)
        self.crossing = protocol is not exchange.caller
        if self.crossing:
            body = crossing.request_body(exchange.caller.name, exchange.body, model=ref.model)
        else:
            body = {**exchange.body, "model": ref.model}
        if exchange.stream:
            body, asked = ask_for_stream_usage(protocol, self.endpoint.operation, body)
            if not asked and not self.crossing:
                self.hidden = OpenAIAdapter.added_event
        self.body = body

    async def run(self) -> Outcome:
        exchange = self.exchange
        token = service_attempt.set(ServiceAttempt(Source.GATEWAY, self.index))
        try:
            call = self.call = TrackedCall(
                self.upstream.reader(self.ref.provider),
                self.endpoint.operation,
                self.body,
                exchange.ctx,
                streamed=exchange.stream,
            )
            await self._reserve(call)
        finally:
            service_attempt.reset(token)
        try:
            response = await upstream.send(
                self.ref.provider,
                self.upstream,
                self.endpoint.path,
                self.body,
                exchange.request,
                timeout=exchange.timeout,
            )
        except Exception as exc:
            call.fail(exc)
            return self._unreachable(exc)
        except BaseException as exc:  # cancelled: the caller went away
            call.fail(exc)
            raise
        if response.status_code >= 400:
            return await self._upstream_error(call, response)
        if exchange.stream:
            return Outcome(self._stream(call, response), verdict="success")
        return await self._complete(call, response)

    async def _reserve(self, call: TrackedCall) -> None:
        """Reserve the attempt's bound on the team's budgets (runaway blocks included):
        a refusal answers the caller in its protocol (429; 503 when the budget store is
        down and budgets fail closed); a FluxGate bug lets the call through, logged."""
        if not might_apply(call.ctx):
            return
        try:
            call.reservation = await acheck_budget(**call.budget_request(), source=Source.GATEWAY)
        except CallRefused as exc:
            if isinstance(exc, BudgetStoreUnavailable):
                raise GatewayError(503, "unavailable", f"FluxGate: {exc}") from exc
            raise GatewayError(
                429, "budget", f"FluxGate: {exc}", headers={"x-should-retry": "false"}
            ) from exc
        except Exception:
            with capture_internal_exceptions("reserving budget"):
                raise

    def _unreachable(self, exc: Exception) -> Outcome:
        """The upstream could not be reached (recorded): 504 for a timeout, else 502."""
        error = upstream.unreachable(self.ref.provider, exc)
        return Outcome(self._tagged(self.exchange.caller.error_response(error)), True, "failure")

    async def _body(self, call: TrackedCall, response: Any) -> bytes | Outcome:
        """The upstream answer's body, the response closed; if it can't be read, the call
        recorded as failed and the caller's answer (an ``Outcome``)."""
        try:
            return bytes(await response.aread())
        except Exception as exc:
            call.fail(exc)
            return self._unreachable(exc)
        except BaseException as exc:
            call.fail(exc)
            raise
        finally:
            await response.aclose()

    async def _upstream_error(self, call: TrackedCall, response: Any) -> Outcome:
        """The provider's error, recorded, given back as it sent it (its status and body;
        in the caller's protocol after a fallback across protocols)."""
        content = await self._body(call, response)
        if isinstance(content, Outcome):
            return content
        error = UpstreamError(response.status_code, content)
        call.fail(error)
        kind = classify(error)
        if self.crossing:
            status, payload = crossing.error(self.exchange.caller.name, error.status_code, content)
            answer: HttpResponseBase = json_response(payload, status)
            for name, value in passed_headers(response.headers).items():
                answer[name] = value
        else:
            answer = upstream.passed_on(response, content)
        retry = kind == "retry"
        return Outcome(self._tagged(answer), retry, "failure" if retry else "neutral")

    async def _complete(self, call: TrackedCall, response: Any) -> Outcome:
        content = await self._body(call, response)
        if isinstance(content, Outcome):
            return content
        try:
            data = json.loads(content)
        except ValueError:
            data = None
        refusal: GatewayError | None = None
        try:
            if self.crossing:
                content = self._translated(data)
        except GatewayError as error:  # served (and billed), but not expressible: a 502
            refusal = error
            call.ctx = call.ctx.merge(metadata={"gateway_error": error.message})
        finally:  # (recorded whatever the translation did)
            with capture_internal_exceptions("recording a gateway call"):
                call.succeed(as_view(data) if isinstance(data, dict) else UNREADABLE)
        if refusal is not None:
            answer = self.exchange.caller.error_response(refusal)
            for name, value in passed_headers(response.headers).items():
                answer.setdefault(name, value)
            return Outcome(self._tagged(answer))  # (neutral: never cached, not retried)
        return Outcome(self._tagged(upstream.passed_on(response, content)), verdict="success")

    def _translated(self, data: Any) -> bytes:
        """The upstream's answer in the caller's protocol (a 502 if it can't be given)."""
        try:
            payload = crossing.response_body(
                self.exchange.caller.name,
                data,
                model=self.exchange.target.requested,
                source=self.ref.model,
            )
        except GatewayError:
            raise
        except Exception as exc:
            with capture_internal_exceptions("translating an answer"):
                raise
            raise GatewayError(
                502, "bad_gateway", "FluxGate could not translate the upstream's answer."
            ) from exc
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()

    def _stream(self, call: TrackedCall, response: Any) -> HttpResponseBase:
        events = observe(call, sse_events(response.aiter_bytes()))
        translator = None
        if self.crossing:
            options = self.exchange.body.get("stream_options")
            translator = crossing.StreamTranslator(
                self.exchange.caller.name,
                model=self.exchange.target.requested,
                include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
                source=self.ref.model,
            )
        answer = StreamingHttpResponse(
            self._relay(events, response, translator),
            content_type="text/event-stream; charset=utf-8",
        )
        answer["Cache-Control"] = "no-cache"
        answer["X-Accel-Buffering"] = "no"  # (a proxy in front must not hold the events)
        for name, value in passed_headers(response.headers).items():
            answer[name] = value
        return self._tagged(answer)

    async def _relay(
        self,
        events: AsyncIterator[Any],
        response: Any,
        translator: crossing.StreamTranslator | None,
    ) -> AsyncIterator[bytes]:
        """The upstream's events, as it sent them (or translated), read as the caller
        reads: a slow reader slows the upstream read (backpressure), one that goes away
        closes it. An upstream that breaks off mid-stream ends the caller's stream with
        an error event in its protocol; so does an upstream event the caller's protocol
        can't express, once the rest of the upstream stream is read (for its usage)."""
        hidden = self.hidden
        try:
            async for event in events:
                if translator is not None:
                    for piece in translator.feed(event):
                        yield piece
                elif hidden is None or not hidden(event):
                    yield event.raw
            if translator is not None:
                for piece in translator.finish():
                    yield piece
        except GatewayError as error:  # (from the translator)
            if self.call is not None:
                self.call.ctx = self.call.ctx.merge(metadata={"gateway_error": error.message})
            try:
                async for _ in events:  # (observe() records the stream at its end)
                    pass
            except Exception:  # (an upstream failure is recorded by observe())
                pass
            yield self.exchange.caller.stream_error(error.kind, error.message)
        except Exception as exc:  # (an upstream failure is recorded by observe())
            if classify(exc) != "retry":  # FluxGate's own (translating): logged
                with capture_internal_exceptions("relaying a stream"):
                    raise
            yield self.exchange.caller.stream_error(
                "bad_gateway", f"FluxGate: the upstream stream broke off ({type(exc).__name__})"
            )
        finally:
            await events.aclose()  # type: ignore[attr-defined]
            await response.aclose()

    def _tagged(self, answer: HttpResponseBase) -> HttpResponseBase:
        if self.call is not None:
            answer[TRACKING_HEADER] = str(self.call.tracking_id)
        return answer
