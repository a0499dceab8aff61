"""FluxGate for LangChain: record every LLM call of a chain, agent or graph as a FluxGate
event, with the same fields, prices and context as FluxGate's tracked SDK clients::

    from fluxgate_langchain import FluxGateHandler

    chain.invoke(x, config={"callbacks": [FluxGateHandler(feature="rag", user="u1")]})

Needs only ``langchain-core`` (``pip install 'django-fluxgate[langchain]'``). Importing it
imports neither Django nor the FluxGate Django app: inside a Django site it records through
the app; elsewhere it sends events to a FluxGate site (``FLUXGATE_URL``,
``FLUXGATE_API_KEY``). See :class:`FluxGateHandler`.

Embeddings fire no LangChain callbacks: wrap the model, ``track_embeddings(OpenAIEmbeddings())``,
to have its requests recorded (Django mode; see :mod:`fluxgate_langchain.embeddings`).
"""

from __future__ import annotations

from .embeddings import FluxGateEmbeddings, track_embeddings
from .handler import FluxGateHandler
from .remote import RemoteSender, flush_all

__all__ = ["FluxGateEmbeddings", "FluxGateHandler", "RemoteSender", "flush", "track_embeddings"]


def flush(timeout: float | None = None) -> bool:
    """Block until every event sent to a remote FluxGate site so far is delivered (False if
    ``timeout`` passed first). In Django mode use ``fluxgate_django.flush()``."""
    return flush_all(timeout)
