"""A loopback fake LLM provider speaking the OpenAI, Anthropic and Gemini wire formats.

Real SDK clients (``openai.OpenAI`` / ``AsyncOpenAI``, ``anthropic.Anthropic`` /
``AsyncAnthropic``, ``google.genai.Client``) talk to it over HTTP, so every code path of the
SDKs (typed models, SSE streaming, ``parse()`` helpers, error mapping, timeouts) is exercised
for real::

    with FakeProvider() as fake:
        client = openai.OpenAI(api_key="sk-test", base_url=fake.openai_base_url, max_retries=0)
        fake.enqueue(FakeReply(text="hi", input_tokens=1000, cached_tokens=200, output_tokens=5))
        client.chat.completions.create(model="gpt-4o", messages=[...])

Usage is reported exactly the way each provider reports it:

* OpenAI ``prompt_tokens`` / ``input_tokens`` *include* cached (and cache-write) tokens and
  ``completion_tokens`` / ``output_tokens`` *include* reasoning tokens.
* Anthropic ``input_tokens`` *excludes* cache reads and writes, which are reported separately.
* Gemini ``promptTokenCount`` *includes* ``cachedContentTokenCount``, and
  ``candidatesTokenCount`` *excludes* ``thoughtsTokenCount`` (``FakeReply.output_tokens`` →
  candidates, ``reasoning_tokens`` → thoughts). Zero counts are left out, as Gemini does.

``FakeReply.input_tokens`` / ``output_tokens`` are put verbatim into the provider's input /
output field. When left ``None`` they are derived from the request / reply text (about four
characters a token); a derived OpenAI or Gemini prompt count also adds ``cached_tokens``
(and OpenAI's ``cache_write_tokens``) so that it always includes them.

Pure standard library: importable without Django and without the SDKs.
Run ``python -m fluxgate_django.testing.fake_provider --port 8765`` to serve by hand.

Modules: ``replies`` (FakeReply, FakeRequest, the queued / per-model / default replies),
``provider`` (FakeProvider), ``server`` (HTTP server and request handler), ``routes``,
``turn`` (per-request token counts), one module per wire format (``openai``,
``embeddings``, ``anthropic``, ``gemini``), ``wire`` (shared JSON / SSE encoding) and
``__main__`` (the command line).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .provider import FakeProvider
from .replies import DEFAULT_TEXT, FakeReply, FakeRequest

# The reply renderers by endpoint kind, looked up per request: tests patch an entry, e.g.
# ``monkeypatch.setitem(fake_provider._SSE_BUILDERS, "messages", builder)``.
from .server import _JSON_BUILDERS as _JSON_BUILDERS
from .server import _SSE_BUILDERS as _SSE_BUILDERS

if TYPE_CHECKING:
    from .__main__ import main

__all__ = ["DEFAULT_TEXT", "FakeProvider", "FakeReply", "FakeRequest", "main"]


def __getattr__(name: str) -> Any:
    # ``main`` lives in ``__main__``, imported only when asked for: importing it from here
    # eagerly would make ``python -m`` warn that the module was imported twice.
    if name == "main":
        from .__main__ import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
