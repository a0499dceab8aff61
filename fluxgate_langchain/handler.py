"""``FluxGateHandler``: a LangChain callback handler that records one FluxGate event per
LLM call, with the same fields, prices and context as the tracked SDK clients."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from .readers import (
    cache_write_ttls,
    first_generation,
    provider_name,
    read_llm_result,
    status_for_error,
    write_ttls_reported,
)
from .runs import LLMRun, RunMap
from .sinks import Sink, remote_settings, select_sink

if TYPE_CHECKING:
    from langchain_core.messages import BaseMessage
    from langchain_core.outputs import LLMResult

    from fluxgate_django.context import TrackingContext
    from fluxgate_django.records import CallInfo, Usage

__all__ = ["FluxGateHandler", "LLMRun"]

logger = logging.getLogger("fluxgate.langchain")

#: Per-run LangChain ``metadata`` keys → tracking context fields.
METADATA_KEYS = {
    "fluxgate_feature": "feature",
    "fluxgate_user_id": "user",
    "fluxgate_team": "team",
    "fluxgate_session_id": "session_id",
    "fluxgate_conversation_id": "conversation_id",
    "fluxgate_step": "step",
}
#: Tags LangChain and LangGraph add for their own bookkeeping (``seq:step:2``...).
_INTERNAL_TAG_PREFIXES = ("seq:", "graph:", "langsmith:")
#: Operation recorded per provider, as the tracked SDK clients name it.
_CHAT_OPERATION = {"anthropic": "messages"}


class _Start(NamedTuple):
    """A run that has begun: what the budget check before the model call needs."""

    sink: Sink
    run: LLMRun
    messages: Any
    params: dict[str, Any]


class _SyncOrAsyncHook:
    """A hook that LangChain calls in sync runs and awaits in async ones.

    Both of LangChain's callback managers look a hook up with ``getattr``: the async one
    awaits it when it is a coroutine function (else calls it on the loop, as
    ``run_inline`` asks); the sync one calls it (a coroutine it got back would run in
    another thread, its exceptions — a budget refusal too — swallowed). So the variant is
    chosen by the code that looks the hook up: code running as a coroutine gets the async
    one, other code the sync one. A sync ``invoke()`` on a thread that runs an event loop
    (a notebook) thus still gets the sync hook, and its budget refusal.
    """

    __slots__ = ("_async", "_sync")

    def __init__(self, sync: Callable[..., None], async_: Callable[..., Any]) -> None:
        self._sync = sync
        self._async = async_

    def __get__(self, obj: object, owner: type | None = None) -> Callable[..., Any]:
        if obj is None:
            return self._sync
        if sys._getframe(1).f_code.co_flags & inspect.CO_COROUTINE:
            return self._async.__get__(obj, owner)  # type: ignore[no-any-return]
        return self._sync.__get__(obj, owner)  # type: ignore[no-any-return]


class FluxGateHandler(BaseCallbackHandler):
    """Record every LLM call of a LangChain run as a FluxGate event::

        chain.invoke(x, config={"callbacks": [FluxGateHandler(feature="rag", user="u1")]})

    **Where events go** (decided at the first event): with Django configured and
    ``fluxgate_django`` installed, through the app's own pipeline (priced, recorded by the
    configured recorder, budgets enforced). Otherwise — or when ``api_key=`` / ``base_url=``
    are given — in batches from a background thread to a FluxGate site's ingest API
    (``FLUXGATE_URL``, ``FLUXGATE_API_KEY``). With neither, a warning says events cannot be
    sent.

    **Context**, most specific first:

    1. per-run LangChain ``metadata`` keys ``fluxgate_feature``, ``fluxgate_user_id``,
       ``fluxgate_team``, ``fluxgate_session_id`` (also ``fluxgate_conversation_id``,
       ``fluxgate_step``), e.g. ``config={"metadata": {"fluxgate_user_id": "u2"}}``;
    2. this handler's own arguments;
    3. the ambient context: ``tracking_context(...)`` and the request's middleware context.

    ``metadata`` is merged (a more specific source wins per key) and ``tags`` combined (the
    run's LangChain tags included, LangChain's internal ``seq:``/``graph:`` tags excepted).
    ``step`` is ``fluxgate_step`` if given, else the LangGraph node, else the name of the
    enclosing chain, else the ambient ``step``. ``run_id`` and ``parent_run_id`` are stored.

    **Budgets**: in Django mode with ``enforce_budgets`` (default), the estimated cost is
    reserved before the model is called and settled to the real cost afterwards; a blocking
    budget raises :class:`fluxgate_django.BudgetExceeded` out of ``invoke`` / ``stream`` /
    the graph, which stops a runaway agent loop (and an unreachable budget store, when
    budgets fail closed, :class:`~fluxgate_django.exceptions.BudgetStoreUnavailable`: both
    are a :class:`~fluxgate_django.exceptions.CallRefused`). Outside Django nothing is
    enforced locally. A refusal is a decision, not a failing callback: FluxGate logs it
    once on ``fluxgate.langchain`` (INFO; WARNING for an unreachable budget store), and
    LangChain's own "Error in FluxGateHandler... callback" warning for it is dropped.

    **Async runs** (``ainvoke``, ``astream``, async graphs) never wait on the event loop:
    the start hooks are coroutines there, awaiting the budget check in a worker thread, and
    the end hooks only hand the event to the recorder.

    The handler never raises from a hook except that deliberate ``CallRefused``; LLM
    errors are recorded as ``ERROR`` events and propagate unchanged. One instance can be
    shared by threads and asyncio tasks; the state of runs in flight is bounded by
    ``max_runs``.
    """

    #: True only so that ``CallRefused`` leaves ``on_chat_model_start``; every other
    #: error inside the hooks is caught and logged.
    raise_error = True
    #: Hooks are cheap and never block on I/O, so in async runs they run on the loop instead
    #: of hopping to a thread pool per callback; the two that may need the database before
    #: the model is called (the budget check) are awaited coroutines there.
    run_inline = True

    def __init__(
        self,
        feature: str | None = None,
        user: Any = None,
        team: Any = None,
        session_id: str | None = None,
        conversation_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        enforce_budgets: bool = True,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        max_runs: int = 10_000,
    ) -> None:
        self._fields: dict[str, Any] = {
            "feature": feature,
            "user": user,
            "team": team,
            "session_id": session_id,
            "conversation_id": conversation_id,
            "metadata": dict(metadata) if metadata else None,
            "tags": list(tags) if tags else None,
        }
        self.enforce_budgets = enforce_budgets
        if api_key or base_url:
            remote_settings(api_key, base_url)  # fail now, not at the first event
        self._api_key = api_key
        self._base_url = base_url
        self._bound: TrackingContext | None = None
        self._sink: Sink | None = None
        self._runs: RunMap[LLMRun] = RunMap(max_runs, "LLM")
        self._chains: RunMap[str] = RunMap(max_runs, "chain")
        #: Each chain run in flight → the outermost run it is part of (for traces).
        self._roots: RunMap[UUID] = RunMap(max_runs, "chain")

    # -- which callbacks we want -------------------------------------------------------

    @property
    def ignore_agent(self) -> bool:  # tools and agent actions
        return True

    @property
    def ignore_retriever(self) -> bool:
        return True

    @property
    def ignore_retry(self) -> bool:
        return True

    @property
    def ignore_custom_event(self) -> bool:
        return True

    # -- chains: only their names, for ``step`` ----------------------------------------

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            self._roots.put(run_id, self._root_of(parent_run_id) or run_id)
            name = kwargs.get("name") or _serialized_name(serialized)
            if name:
                self._chains.put(run_id, str(name))
        except Exception:
            logger.debug("FluxGate: could not read a chain's name", exc_info=True)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._chains.pop(run_id)
        self._roots.pop(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._chains.pop(run_id)
        self._roots.pop(run_id)

    def _root_of(self, parent_run_id: UUID | None) -> UUID | None:
        """The outermost run a run whose parent is ``parent_run_id`` belongs to (None: it
        is a root itself). A parent this handler did not see start is taken as the root."""
        if parent_run_id is None:
            return None
        return self._roots.get(parent_run_id) or parent_run_id

    # -- LLM runs ----------------------------------------------------------------------

    def _on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        start = self._start(serialized, messages, run_id, parent_run_id, tags, metadata, kwargs)
        if start is not None:
            self._before_call(start)

    async def _aon_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        start = self._start(serialized, messages, run_id, parent_run_id, tags, metadata, kwargs)
        if start is not None:
            await self._abefore_call(start)

    def _on_llm_start(
        self,
        serialized: dict[str, Any] | None,
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        start = self._start(
            serialized, prompts, run_id, parent_run_id, tags, metadata, kwargs, chat=False
        )
        if start is not None:
            self._before_call(start)

    async def _aon_llm_start(
        self,
        serialized: dict[str, Any] | None,
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        start = self._start(
            serialized, prompts, run_id, parent_run_id, tags, metadata, kwargs, chat=False
        )
        if start is not None:
            await self._abefore_call(start)

    on_chat_model_start = _SyncOrAsyncHook(_on_chat_model_start, _aon_chat_model_start)  # type: ignore[assignment]
    on_llm_start = _SyncOrAsyncHook(_on_llm_start, _aon_llm_start)  # type: ignore[assignment]

    def on_llm_new_token(self, token: Any, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._runs.get(run_id)
        if run is not None and run.first_token_at is None:
            run.first_token_at = time.perf_counter()

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._runs.pop(run_id)
        if run is not None:
            self._finish(run, response, None)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._runs.pop(run_id)
        if run is not None:
            self._finish(run, kwargs.get("response"), error)

    # -- internals ---------------------------------------------------------------------

    @property
    def runs_in_flight(self) -> int:
        """LLM runs started and not yet ended (for tests and monitoring)."""
        return len(self._runs)

    def _get_sink(self) -> Sink:
        sink = self._sink
        if sink is None:
            sink = select_sink(self._api_key, self._base_url)
            if sink.final:
                self._sink = sink
        return sink

    def _start(
        self,
        serialized: dict[str, Any] | None,
        prompts: Any,
        run_id: UUID,
        parent_run_id: UUID | None,
        tags: list[str] | None,
        metadata: dict[str, Any] | None,
        kwargs: dict[str, Any],
        *,
        chat: bool = True,
    ) -> _Start | None:
        """Begin a run (in memory only); None when FluxGate could not."""
        try:
            sink = self._get_sink()
        except Exception:
            logger.exception("FluxGate internal error while starting a LangChain run")
            return None
        start: _Start | None = None
        with sink.guard("starting a LangChain run"):
            md = metadata or {}
            params = kwargs.get("invocation_params") or {}
            provider = provider_name(md.get("ls_provider"), _base_url(serialized))
            requested = str(
                md.get("ls_model_name") or params.get("model") or params.get("model_name") or ""
            )
            operation = _CHAT_OPERATION.get(provider, "chat") if chat else "completion"
            ctx = self._context(md, tags, parent_run_id)
            run = LLMRun(run_id, parent_run_id, ctx, provider, requested, operation)
            if provider == "anthropic":
                run.request = (prompts, params)
            if sink.stores_content():
                run.prompt = _prompt_content(prompts, chat)
            self._runs.put(run_id, run)
            start = _Start(sink, run, prompts if chat else [prompts], params)
        return start

    def _before_call(self, start: _Start) -> None:
        sink, run = start.sink, start.run
        try:
            sink.begin(run, start.messages, start.params, enforce_budgets=self.enforce_budgets)
        except BaseException as exc:
            self._runs.pop(run.run_id)  # LangChain reports no end for a run that never began
            _refusing(exc, run)
            raise
        run.started = time.perf_counter()  # latency is the model's, not the reservation's

    async def _abefore_call(self, start: _Start) -> None:
        sink, run = start.sink, start.run
        try:
            await sink.abegin(
                run, start.messages, start.params, enforce_budgets=self.enforce_budgets
            )
        except BaseException as exc:
            self._runs.pop(run.run_id)
            _refusing(exc, run)
            raise
        run.started = time.perf_counter()

    def _context(
        self, md: Mapping[str, Any], tags: list[str] | None, parent_run_id: UUID | None
    ) -> TrackingContext:
        from fluxgate_django.context import EMPTY_CONTEXT, current_context

        bound = self._bound
        if bound is None:
            bound = self._bound = EMPTY_CONTEXT.merge(**self._fields)
        ctx = current_context().overlay(bound)
        fields: dict[str, Any] = {}
        for key, field in METADATA_KEYS.items():
            value = md.get(key)
            if value is not None:
                fields[field] = value
        if "step" not in fields:
            step = md.get("langgraph_node") or self._chains.get(parent_run_id)
            if step:
                fields["step"] = str(step)
        if tags:
            own = [t for t in tags if not t.startswith(_INTERNAL_TAG_PREFIXES)]
            if own:
                fields["tags"] = own
        extra = md.get("fluxgate_metadata")
        if isinstance(extra, Mapping):
            fields["metadata"] = extra
        root = self._root_of(parent_run_id)
        if root is not None:  # (the admin's trace page finds a whole chain's calls by it)
            fields["metadata"] = {**fields.get("metadata", {}), "root_run_id": str(root)}
        return ctx.merge(**fields) if fields else ctx

    def _finish(self, run: LLMRun, response: Any, error: BaseException | None) -> None:
        try:
            sink = self._get_sink()
        except Exception:
            logger.exception("FluxGate internal error while recording a LangChain run")
            return
        with sink.guard("recording a LangChain run"):
            try:
                info, usage, fields = self._outcome(run, response, error, sink)
            except BaseException:
                sink.release(run)
                raise
            sink.record(run, info, usage, **fields)

    def _outcome(
        self, run: LLMRun, response: Any, error: BaseException | None, sink: Sink
    ) -> tuple[CallInfo, Usage | None, dict[str, Any]]:
        """The run's call info, usage and ``make_record`` keywords."""
        from fluxgate_django.outcomes import end_of_stream
        from fluxgate_django.records import CallInfo, CostSource

        now = time.perf_counter()
        info = CallInfo(
            provider=run.provider,
            operation=run.operation,
            requested_model=run.requested_model,
            streamed=run.first_token_at is not None,
        )
        fields: dict[str, Any] = {"latency_ms": (now - run.started) * 1000}
        if run.first_token_at is not None:
            fields["time_to_first_token_ms"] = (run.first_token_at - run.started) * 1000
            fields["stream_duration_ms"] = (now - run.first_token_at) * 1000
        usage = None
        extra: dict[str, Any] | None = None
        if error is None:
            usage = read_llm_result(response, info)
            extra = end_of_stream(info, usage, completed=True)
            if usage is None:
                _warn_usage_missing(info)
        elif isinstance(error, GeneratorExit):
            # The caller stopped reading a stream: recorded once, as the SDK clients do.
            usage = read_llm_result(response, info) if _has_usage(response) else None
            extra = end_of_stream(info, usage, completed=False)
        else:
            if _has_usage(response):
                usage = read_llm_result(response, info)
            info.status = status_for_error(info.provider, error)
            fields["error"] = error
            fields["error_type"] = _error_type(error)
        if usage is not None and usage.input_tokens == 0 and usage.output_tokens > 0:
            # langchain#35509: a streamed ChatAnthropic builds usage from message_delta only;
            # when that carries no input count, input comes out 0. Don't under-charge.
            info.usage_reported = False
            info.usage_missing_reason = CostSource.USAGE_INCOMPLETE.value
            extra = {**(extra or {}), "usage_incomplete": "input_tokens"}
            _warn_input_missing(info)
        elif usage is not None and usage.cache_write_tokens and not write_ttls_reported(response):
            extra = self._cache_write_ttls(run, info, usage, sink, fields, extra)
        if extra:
            fields["extra_metadata"] = extra
        if sink.stores_content() and run.prompt is not None:
            generation = first_generation(response)
            fields["content"] = {
                "request": run.prompt,
                "response": getattr(generation, "text", None),
            }
        return info, usage, fields

    @staticmethod
    def _cache_write_ttls(
        run: LLMRun,
        info: CallInfo,
        usage: Usage,
        sink: Sink,
        fields: dict[str, Any],
        extra: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        """Cache writes reported without their TTL split (a streamed ChatAnthropic): the
        request says it when all its breakpoints share one TTL; otherwise the event is
        ``usage-incomplete``, at the most the writes may have cost (every one at the 1h
        rate, where the price is known). Never the 5m rate for writes that may be 1h.

        A remote site prices the usage it is sent (and can't be sent a bound to price): it
        is sent the bound's usage, every write as a 1h one, and the event notes
        ``cost_is_upper_bound`` — the cost in-process and at a site is the same."""
        from fluxgate_django.records import CostSource

        # (Other providers have one write price: only Anthropic runs keep their request.)
        ttls = cache_write_ttls(*run.request) if run.request else frozenset()
        if ttls <= frozenset({"5m"}):
            # 5m is Anthropic's default TTL, and a breakpoint reaches the API only from the
            # messages or the model's parameters (its kwargs, model_kwargs, bound tools),
            # which are all seen here.
            return extra
        all_1h = dataclasses.replace(usage, cache_write_1h_tokens=usage.cache_write_tokens)
        if ttls == frozenset({"1h"}):
            usage.cache_write_1h_tokens = usage.cache_write_tokens
            return extra
        if sink.priced_at_destination:
            # (Unpriced, as "usage-incomplete", it would cost nothing at the site, its
            # budgets included: the bound is what the in-process event costs.)
            usage.cache_write_1h_tokens = usage.cache_write_tokens
            _warn_ttl_missing(info)
            return {
                **(extra or {}),
                "usage_incomplete": "cache_write_ttl",
                "cost_is_upper_bound": True,
            }
        # (The 1h rate is never below the 5m rate: every write at 1h is the bound.)
        bound = sink.upper_cost(run, info, all_1h)
        info.usage_reported = False
        info.usage_missing_reason = CostSource.USAGE_INCOMPLETE.value
        extra = {**(extra or {}), "usage_incomplete": "cache_write_ttl"}
        if bound is not None:
            fields["cost_usd"] = bound
            fields["cost_source"] = CostSource.USAGE_INCOMPLETE.value
            extra["cost_is_upper_bound"] = True
        _warn_ttl_missing(info)
        return extra


# -- refusals: FluxGate's log line, not LangChain's "Error in ... callback" ---------------

#: The logger LangChain's callback managers report a hook's exception on, at WARNING
#: ("Error in FluxGateHandler.on_chat_model_start callback: BudgetExceeded(...)"), before
#: re-raising it for a handler with ``raise_error``.
LANGCHAIN_CALLBACK_LOGGER = "langchain_core.callbacks.manager"

_pending = threading.local()


class _RefusalLogFilter(logging.Filter):
    """Drops LangChain's report of the refusal this thread's FluxGate hook has just raised.

    A refusal is FluxGate's decision, not a failing callback: FluxGate logs it itself
    (:func:`_refusing`), and the caller still gets the exception. The record dropped is
    the one, logged on this thread right after the hook raised, whose arguments hold that
    exception's ``repr`` (LangChain logs ``repr(e)``); every other record of LangChain's —
    another handler's error, a FluxGate bug — passes. Matched once, then forgotten.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        text = getattr(_pending, "text", None)
        if text is None:
            return True
        args = record.args
        if isinstance(args, tuple) and text in args:
            _pending.text = None
            return False
        return True


_refusal_filter = _RefusalLogFilter()


def _refusing(exc: BaseException, run: LLMRun) -> None:
    """``exc`` leaves a start hook: a ``CallRefused`` is logged here (INFO; WARNING for a
    budget store that can't be asked), and LangChain's report of it is dropped."""
    from fluxgate_django.exceptions import BudgetStoreUnavailable, CallRefused

    if not isinstance(exc, CallRefused):
        return
    try:
        logger.log(
            logging.WARNING if isinstance(exc, BudgetStoreUnavailable) else logging.INFO,
            "FluxGate refused a LangChain %s call (%s, run %s): %s",
            run.requested_model or run.provider or "model",
            type(exc).__name__,
            run.run_id,
            exc,
        )
        # (Added each time: cheap, a no-op once there, and back if logging was reconfigured.)
        logging.getLogger(LANGCHAIN_CALLBACK_LOGGER).addFilter(_refusal_filter)
        _pending.text = repr(exc)
    except Exception:  # logging must not turn the refusal into another error
        logger.debug("FluxGate could not log a refusal", exc_info=True)


def _serialized_name(serialized: Mapping[str, Any] | None) -> str:
    if not serialized:
        return ""
    name = serialized.get("name")
    if name:
        return str(name)
    ids = serialized.get("id")
    return str(ids[-1]) if isinstance(ids, list) and ids else ""


def _error_type(error: BaseException) -> str:
    """The SDK's own error class name, as the tracked clients record it: LangChain re-raises
    SDK errors as subclasses (``OpenAIAPIError(openai.InternalServerError)``)."""
    cause = error.__cause__
    if cause is not None and isinstance(error, type(cause)):
        return type(cause).__name__
    return type(error).__name__


def _base_url(serialized: Mapping[str, Any] | None) -> str:
    """The API base URL a serialized OpenAI-format chat model was made with, if given."""
    kwargs = (serialized or {}).get("kwargs")
    if not isinstance(kwargs, Mapping):
        return ""
    url = kwargs.get("openai_api_base") or kwargs.get("base_url")
    return url if isinstance(url, str) else ""


def _has_usage(response: Any) -> bool:
    message = getattr(first_generation(response), "message", None)
    return bool(getattr(message, "usage_metadata", None))


def _prompt_content(prompts: Any, chat: bool) -> Any:
    if not chat:
        return list(prompts)
    return [[{"role": m.type, "content": m.content} for m in batch] for batch in prompts]


_warned: set[str] = set()


def _warn_usage_missing(info: CallInfo) -> None:
    key = f"usage:{info.provider}"
    if key in _warned:
        return
    _warned.add(key)
    if info.provider == "openai" and info.streamed:
        fix = "Create the model with ChatOpenAI(..., stream_usage=True) to have streams priced."
    else:
        fix = "Use a chat model integration that reports usage_metadata."
    logger.warning(
        "FluxGate: a %s%s call through LangChain reported no token usage, so its event has "
        "cost=None (cost_source='usage-missing'). %s",
        "streamed " if info.streamed else "",
        info.provider or "chat model",
        fix,
    )


def _warn_input_missing(info: CallInfo) -> None:
    key = f"input:{info.provider}"
    if key in _warned:
        return
    _warned.add(key)
    logger.warning(
        "FluxGate: a %s%s call through LangChain reported 0 input tokens with output tokens "
        "(LangChain builds streamed Anthropic usage from message_delta only, langchain#35509), "
        "so its cost is recorded as incomplete (cost=None, cost_source='usage-incomplete') "
        "rather than under-charged. Call the model without streaming, or use a "
        "langchain-anthropic version that reads input counts from message_start.",
        "streamed " if info.streamed else "",
        info.provider or "chat model",
    )


def _warn_ttl_missing(info: CallInfo) -> None:
    key = f"ttl:{info.provider}"
    if key in _warned:
        return
    _warned.add(key)
    logger.warning(
        "FluxGate: a %s%s call through LangChain reported cache writes without their TTL "
        "split (langchain-anthropic builds streamed usage from message_delta, which has "
        "none), and its request mixes 5m and 1h cache_control breakpoints. Its event is "
        "recorded at the most it may have cost (every write at the 1h rate, "
        "metadata cost_is_upper_bound; in-process cost_source='usage-incomplete') rather "
        "than under-charged. Call the model without "
        "streaming, or give all the request's breakpoints one TTL, to have it priced exactly.",
        "streamed " if info.streamed else "",
        info.provider,
    )
