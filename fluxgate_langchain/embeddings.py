"""``track_embeddings``: FluxGate events for a LangChain embeddings model's requests.

LangChain fires no callbacks for embeddings (``Embeddings.embed_documents`` /
``embed_query`` take no ``run_manager``; LangChain declined to add them, langchain#15258),
so no callback handler — FluxGate's, Langfuse's or LangSmith's — sees an embeddings call
or its usage, and ``OpenAIEmbeddings`` drops the usage OpenAI returns. Those calls are
billed all the same. The only exact source is the API response itself: FluxGate tracks the
OpenAI client the embeddings model calls through (the tracked-SDK path, so one event per
request, priced by the one pipeline, budgets enforced), and ``track_embeddings`` returns
a wrapper that attributes those events to LangChain (``source="langchain"``) with the
context given::

    from fluxgate_langchain import track_embeddings

    embeddings = track_embeddings(OpenAIEmbeddings(model="text-embedding-3-small"),
                                  feature="ingest")
    vector_store = FAISS.from_documents(docs, embeddings)

``OpenAIEmbeddings`` batches its inputs (``chunk_size``): each request is one event.
Django mode only (the tracked clients record through the app).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from langchain_core.embeddings import Embeddings

__all__ = ["FluxGateEmbeddings", "track_embeddings"]


def track_embeddings(embeddings: Embeddings, **context: Any) -> FluxGateEmbeddings:
    """Record every request ``embeddings`` (an ``OpenAIEmbeddings``, ``AzureOpenAIEmbeddings``
    or another LangChain embeddings model built on an ``openai`` client) makes as a FluxGate
    event; ``context``: ``tracking_context`` fields (``feature=``, ``user=``, ``team=``...).

    The model's own ``openai`` clients are tracked in place (a gateway such as OpenRouter is
    named from their base URL, as for chat models); raises ``TypeError`` for an embeddings
    model that has none, whose usage FluxGate could not see.
    """
    return FluxGateEmbeddings(embeddings, **context)


class FluxGateEmbeddings(Embeddings):
    """A LangChain ``Embeddings`` that delegates to ``inner`` with FluxGate tracking its
    requests (see :func:`track_embeddings`). Other attributes are ``inner``'s."""

    def __init__(self, inner: Embeddings, **context: Any) -> None:
        _track_clients(inner)
        self.inner = inner
        self.context = context

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        with self._scope():
            return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        with self._scope():
            return self.inner.embed_query(text)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        with self._scope():
            return await self.inner.aembed_documents(texts)

    async def aembed_query(self, text: str) -> list[float]:
        with self._scope():
            return await self.inner.aembed_query(text)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # (not set yet: don't recurse)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"FluxGateEmbeddings({self.inner!r})"

    @contextlib.contextmanager
    def _scope(self) -> Iterator[None]:
        """The context the tracked client's events are made in: this wrapper's fields over
        the ambient ones, and ``source="langchain"``."""
        from fluxgate_django.context import tracking_context
        from fluxgate_django.pipeline import ServiceAttempt, service_attempt
        from fluxgate_django.records import Source

        with contextlib.ExitStack() as stack:
            if self.context:
                stack.enter_context(tracking_context(**self.context))
            if service_attempt.get() is None:  # (inside an LLMService attempt: its own)
                token = service_attempt.set(ServiceAttempt(Source.LANGCHAIN, 0))
                stack.callback(service_attempt.reset, token)
            yield


def _track_clients(embeddings: Any) -> None:
    """Track the ``openai`` clients behind ``embeddings.client`` / ``.async_client`` (the
    SDK's ``Embeddings`` resources) in place; TypeError when there are none."""
    from fluxgate_django.tracking import is_instrumented, track_openai

    found = False
    for name in ("client", "async_client"):
        client = getattr(getattr(embeddings, name, None), "_client", None)
        if client is None or not type(client).__module__.startswith("openai"):
            continue
        found = True
        if not is_instrumented(client):
            track_openai(client)  # (a gateway is named from the client's base URL)
    if not found:
        raise TypeError(
            "track_embeddings() takes a LangChain embeddings model that calls the openai SDK "
            f"(OpenAIEmbeddings, AzureOpenAIEmbeddings), not {type(embeddings).__name__}: "
            "FluxGate could not see its usage"
        )
