"""FluxGateHandler's run state: bounded, thread-safe, no leak after 100k calls, and cheap."""

from __future__ import annotations

import gc
import itertools
import logging
import threading
import time
import tracemalloc
import uuid

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables import RunnableLambda

from fluxgate_langchain import FluxGateHandler
from fluxgate_langchain.handler import LLMRun
from fluxgate_langchain.sinks import Sink

SERIALIZED = {"name": "ChatOpenAI", "id": ["langchain", "chat_models", "openai", "ChatOpenAI"]}
METADATA = {"ls_provider": "openai", "ls_model_name": "gpt-4o"}
PARAMS = {"model": "gpt-4o", "stream": False}
MESSAGES = [[HumanMessage("hi")]]


class CountingSink(Sink):
    """Keeps the handler's bookkeeping but only counts what it would record."""

    def __init__(self) -> None:
        self.records = 0
        self.statuses: dict[str, int] = {}
        self.lock = threading.Lock()

    def record(self, run, info, usage, **fields) -> None:
        with self.lock:
            self.records += 1
            self.statuses[info.status.value] = self.statuses.get(info.status.value, 0) + 1


def result(input_tokens=100, output_tokens=20) -> LLMResult:
    message = AIMessage(
        "ok",
        usage_metadata={
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        },
        response_metadata={"model_name": "gpt-4o-2024-08-06", "finish_reason": "stop"},
    )
    return LLMResult(generations=[[ChatGeneration(message=message)]])


def handler_with(sink: Sink, **kwargs) -> FluxGateHandler:
    handler = FluxGateHandler(**kwargs)
    handler._sink = sink
    return handler


def one_call(handler: FluxGateHandler, i: int, response: LLMResult) -> None:
    """What LangChain calls for ``(prompt | model).invoke()``: a chain around a chat model run;
    every 10th streams, every 7th fails, every 13th is a stream abandoned half-way."""
    chain_id, run_id = uuid.uuid4(), uuid.uuid4()
    handler.on_chain_start({"name": "rag"}, {}, run_id=chain_id, tags=["seq:step:1"])
    handler.on_chat_model_start(
        SERIALIZED,
        MESSAGES,
        run_id=run_id,
        parent_run_id=chain_id,
        tags=["seq:step:2"],
        metadata=METADATA,
        invocation_params=PARAMS,
    )
    if i % 10 == 0:
        handler.on_llm_new_token("o", run_id=run_id)
        handler.on_llm_new_token("k", run_id=run_id)
    if i % 7 == 0:
        error = RuntimeError("provider down")
        handler.on_llm_error(error, run_id=run_id, response=LLMResult(generations=[]))
        handler.on_chain_error(error, run_id=chain_id)
    elif i % 13 == 0:
        handler.on_llm_error(GeneratorExit(), run_id=run_id, response=LLMResult(generations=[]))
        handler.on_chain_error(GeneratorExit(), run_id=chain_id)
    else:
        handler.on_llm_end(response, run_id=run_id)
        handler.on_chain_end({}, run_id=chain_id)


@pytest.mark.django_db
def test_no_run_state_is_left_after_100k_calls():
    sink = CountingSink()
    handler = handler_with(sink, feature="load")
    response = result()
    gc.collect()
    runs_alive_before = _count_runs_alive()
    for i in range(100_000):
        one_call(handler, i, response)
    gc.collect()
    assert sink.records == 100_000
    assert sink.statuses["ERROR"] == len(range(0, 100_000, 7))
    assert handler.runs_in_flight == 0 and len(handler._chains) == 0
    assert handler._runs.evicted == handler._chains.evicted == 0
    assert _count_runs_alive() == runs_alive_before


def _count_runs_alive() -> int:
    # type() rather than isinstance(): the latter wakes Django's lazy objects.
    return sum(1 for o in gc.get_objects() if type(o) is LLMRun)


@pytest.mark.django_db
def test_memory_does_not_grow_with_the_number_of_calls():
    handler = handler_with(CountingSink())
    response = result()
    for i in range(2000):  # warm caches (imports, prices, context) before measuring
        one_call(handler, i, response)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(5000):
        one_call(handler, i, response)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < 128 * 1024, grown  # 5000 runs' state would be megabytes


@pytest.mark.django_db
def test_runs_whose_end_never_comes_are_bounded_and_reported(caplog):
    handler = handler_with(CountingSink(), max_runs=100)
    with caplog.at_level(logging.WARNING, logger="fluxgate"):
        for _ in range(250):
            handler.on_chat_model_start(
                SERIALIZED, MESSAGES, run_id=uuid.uuid4(), metadata=METADATA
            )
    assert handler.runs_in_flight == 100
    assert handler._runs.evicted == 150
    warnings = [r for r in caplog.records if "runs in flight" in r.getMessage()]
    assert len(warnings) == 1 and "max_runs" in warnings[0].getMessage()


@pytest.mark.django_db(transaction=True)
def test_one_handler_shared_by_threads():
    sink = CountingSink()
    handler = handler_with(sink)
    response = result()
    errors = []

    def worker(offset):
        try:
            for i in range(2000):
                one_call(handler, offset + i, response)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n * 2000,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sink.records == 16_000
    assert handler.runs_in_flight == 0 and len(handler._chains) == 0


@pytest.mark.django_db
def test_real_runs_leave_no_state_behind():
    """Through LangChain itself: invoke, batch (threads), stream, abandoned streams, errors."""
    sink = CountingSink()
    handler = handler_with(sink)
    config = {"callbacks": [handler]}

    def model():
        # itertools.repeat, not a generator: batch() calls next() from several threads.
        return GenericFakeChatModel(messages=itertools.repeat(AIMessage("a b c d")))

    llm = model()
    chain = RunnableLambda(lambda x: x, name="prep") | llm
    for i in range(300):
        chain.invoke("hi", config=config)
        llm.batch(["a", "b", "c"], config=config)
        stream = llm.stream("hi", config=config)
        next(stream)
        stream.close()
        if i % 50 == 0:
            broken = RunnableLambda(lambda x: 1 / 0, name="boom") | llm
            with pytest.raises(ZeroDivisionError):
                broken.invoke("x", config=config)
    assert sink.records == 300 * 5
    assert handler.runs_in_flight == 0 and len(handler._chains) == 0


@pytest.mark.django_db
def test_per_call_overhead_is_well_under_a_millisecond():
    """Hooks for one chain + chat model run (start/end of both, context, usage, timing),
    excluding the recorder (measured separately, it is the app's)."""
    handler = handler_with(CountingSink(), feature="perf", user="u1")
    response = result()
    for _ in range(2000):
        one_call(handler, 1, response)
    n = 20_000
    started = time.perf_counter()
    for _ in range(n):
        one_call(handler, 1, response)
    per_call_us = (time.perf_counter() - started) / n * 1e6
    print(f"\nFluxGateHandler overhead: {per_call_us:.1f} µs per chain + chat model run")
    assert per_call_us < 250
