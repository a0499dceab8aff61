"""Provider clients for the LLM service, made from ``FLUXGATE["PROVIDERS"]``, tracked, with
the SDK's own retries off (FluxGate owns retry policy). Each provider kind knows how to send
a :class:`ServiceRequest` and read the answer's text; usage, cost and the event come from the
tracked client, as for any SDK call.

A sync client is made once per process and shared by every thread. An async client belongs
to one event loop: its connection pool (``httpx.AsyncClient``) holds connections opened on
the loop that used it first, and reused on another loop it fails with ``RuntimeError: Event
loop is closed`` (as under ``runserver``/WSGI, where every async view runs on a loop of its
own, or a second ``asyncio.run``). So async clients are kept per loop (keyed weakly by the
loop), shared by that loop's calls, and closed as the loop shuts down
(``loop.shutdown_asyncgens()``, which ``asyncio.run`` and asgiref's ``async_to_sync`` call);
a loop closed without that is forgotten, its clients dropped, when the next loop asks.

``PROVIDERS`` entries: ``openai``, ``anthropic`` and ``gemini`` are their own kind; any
other name is an OpenAI-compatible endpoint (OpenRouter, vLLM, ...) unless it says
``"type"``: ``{"openrouter": {"type": "openai", "base_url": "...", "api_key": "..."}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import sys
import threading
import weakref
from collections.abc import AsyncGenerator, Callable
from typing import Any

from ..conf import fluxgate_settings, on_reload
from .types import ServiceRequest

logger = logging.getLogger("fluxgate.service")

ENV_KEYS = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
}
DEFAULT_MAX_TOKENS = 1024  # Anthropic requires max_tokens
#: The operation of the call the service makes, per provider kind (as tracked clients
#: name it).
OPERATIONS = {"openai": "chat", "anthropic": "messages", "gemini": "generate_content"}


def provider_kind(name: str) -> str:
    options = fluxgate_settings.PROVIDERS.get(name) or {}
    return options.get("type") or (name if name in ("openai", "anthropic", "gemini") else "openai")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _LoopClients:
    """The async clients of one event loop, closed when it shuts down."""

    __slots__ = ("clients", "closed", "closer", "retired", "watched")

    def __init__(self) -> None:
        self.clients: dict[str, Any] = {}
        #: Clients no longer handed out (the settings changed), still closed with the loop.
        self.retired: list[tuple[str, Any]] = []
        #: The async generator whose finalisation (at ``shutdown_asyncgens``) closes them.
        self.closer: AsyncGenerator[None, None] | None = None
        self.watched = False
        self.closed = False

    def drain(self) -> list[tuple[str, Any]]:
        doomed = [*self.clients.items(), *self.retired]
        self.clients.clear()
        self.retired.clear()
        return doomed


class ProviderClients:
    """Tracked SDK clients made on first use: one sync client per provider for the process,
    and one async client per provider for each event loop (see the module doc).

    ``make(name, asynchronous)`` makes a client (default: the service's tracked SDK
    clients); the gateway keeps its pooled HTTP clients per loop with its own ``make``."""

    def __init__(self, make: Callable[[str, bool], Any] | None = None) -> None:
        self._make = make
        self._clients: dict[str, Any] = {}
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def get(
        self,
        name: str,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Any:
        """The sync client of provider ``name``; with ``loop``, the async client of that
        loop. Callable from any thread (the service asks from a worker thread, off the
        loop)."""
        if loop is None:
            client = self._clients.get(name)
            if client is None:
                with self._lock:
                    client = self._clients.get(name)
                    if client is None:
                        client = self._clients[name] = (self._make or _make_client)(name, False)
            return client
        if loop.is_closed():
            raise RuntimeError("Event loop is closed")
        with self._lock:
            stale = self._forget_closed_loops()
            holder = self._async.get(loop)
            if holder is None:
                holder = self._async[loop] = _LoopClients()
            client = holder.clients.get(name)
            if client is None:
                client = holder.clients[name] = (self._make or _make_client)(name, True)
            watch = not holder.watched
            holder.watched = True
        _finish_closers(stale)
        if watch:
            if _running_loop() is loop:
                self._watch(loop, holder)
            else:  # from a worker thread: before the loop resumes its caller
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(self._watch, loop, holder)
        return client

    def clear(self) -> None:
        """Forget every client (the settings changed). Async clients of running loops are
        no longer handed out, and are still closed as their loops shut down."""
        with self._lock:
            self._clients.clear()
            stale = self._forget_closed_loops()
            for holder in self._async.values():
                holder.retired += holder.clients.items()
                holder.clients.clear()
        _finish_closers(stale)

    # -- closing with the loop ---------------------------------------------------------

    def _watch(self, loop: asyncio.AbstractEventLoop, holder: _LoopClients) -> None:
        """On ``loop``'s thread: start an async generator that ``loop`` finalises at
        ``shutdown_asyncgens()``, closing the loop's clients then (on the loop, so that
        their connections close cleanly)."""
        if holder.closer is not None or holder.closed or loop.is_closed():
            return
        closer = self._close_at_shutdown(loop, holder)
        # Its first step registers it with the running loop (the loop's asyncgen hooks)
        # and reaches its ``yield`` without awaiting anything.
        with contextlib.suppress(StopIteration):
            closer.asend(None).send(None)
        holder.closer = closer  # the loop keeps it weakly: kept alive here

    async def _close_at_shutdown(
        self, loop: asyncio.AbstractEventLoop, holder: _LoopClients
    ) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with self._lock:
                if self._async.get(loop) is holder:
                    del self._async[loop]
                doomed = [] if holder.closed else holder.drain()
                holder.closed = True
            for name, client in doomed:
                try:
                    await _aclose(name, client)
                except Exception:  # a client that can't close cleanly is dropped anyway
                    logger.debug("Closing the %s client failed", name, exc_info=True)

    def _forget_closed_loops(self) -> list[AsyncGenerator[None, None]]:
        """Under the lock: drop the clients of loops closed without shutting down their
        async generators (their connections can't be closed on a closed loop; dropping
        them frees their sockets). Returns their closers, for :func:`_finish_closers`."""
        closers = []
        for loop in [loop for loop in self._async if loop.is_closed()]:
            holder = self._async.pop(loop)
            holder.closed = True
            for _, client in holder.drain():
                _mark_closed(client)
            if holder.closer is not None:
                closers.append(holder.closer)
                holder.closer = None
        return closers


def _finish_closers(closers: list[AsyncGenerator[None, None]]) -> None:
    """Run the closers of closed loops to their end (their holder is marked closed: they
    await nothing), so that no finaliser later schedules them on a closed loop."""
    for closer in closers:
        with contextlib.suppress(BaseException):
            closer.aclose().send(None)


async def _aclose(name: str, client: Any) -> None:
    """Close an async client (google-genai's ``Client``: its ``.aio`` pool and its sync
    one; the service calls it through ``.aio``; an ``httpx.AsyncClient``: ``aclose()``)."""
    if type(client).__module__.startswith("google."):
        aio = vars(client).get("_aio")
        if aio is not None and hasattr(aio, "aclose"):
            await aio.aclose()
        if hasattr(client, "close"):
            client.close()
        return
    closer = getattr(client, "aclose", None) or client.close
    await closer()


def _mark_closed(client: Any) -> None:
    """Mark the httpx pool of a client dropped with its closed loop as closed, so that the
    SDK's ``__del__`` does not schedule its close on whichever loop is running then."""
    http: Any = getattr(client, "_client", None)
    state = getattr(http, "_state", None)
    if state is not None:
        with contextlib.suppress(Exception):
            http._state = type(state).CLOSED


clients = ProviderClients()
on_reload(clients.clear)


def provider_options(name: str) -> dict[str, Any]:
    """``FLUXGATE["PROVIDERS"][name]``, its key from the environment when settings give
    none (``OPENAI_API_KEY``...)."""
    options = dict(fluxgate_settings.PROVIDERS.get(name) or {})
    kind = provider_kind(name)
    if not options.get("api_key"):
        options["api_key"] = os.environ.get(ENV_KEYS.get(name, ""), "") or os.environ.get(
            ENV_KEYS.get(kind, ""), ""
        )
    return options


_STAINLESS_SDKS = {
    "openai": ("openai", "OpenAI", "AsyncOpenAI"),
    "anthropic": ("anthropic", "Anthropic", "AsyncAnthropic"),
}


def _make_client(name: str, asynchronous: bool) -> Any:
    from ..tracking import track_anthropic, track_openai

    kind = provider_kind(name)
    options = provider_options(name)
    if kind in _STAINLESS_SDKS:
        import importlib

        package, sync_class, async_class = _STAINLESS_SDKS[kind]
        sdk = importlib.import_module(package)
        cls = getattr(sdk, async_class if asynchronous else sync_class)
        extra: dict[str, Any] = {}
        if asynchronous and (http_client := _async_http_client(sdk)) is not None:
            extra["http_client"] = http_client
        client = cls(
            api_key=options.get("api_key") or "missing-key",
            base_url=options.get("base_url"),
            timeout=options.get("timeout", 30),
            max_retries=0,
            **extra,
        )
        return track_openai(client, provider=name) if kind == "openai" else track_anthropic(client)
    if kind == "gemini":
        from ..tracking import track_gemini

        try:
            from google import genai
            from google.genai import types
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "Gemini needs google-genai: pip install 'django-fluxgate[gemini]'"
            ) from exc
        # FluxGate owns retry policy: one attempt per call.
        http_options: dict[str, Any] = {"retry_options": types.HttpRetryOptions(attempts=1)}
        if options.get("base_url"):
            http_options["base_url"] = options["base_url"]
        if options.get("timeout"):
            http_options["timeout"] = int(float(options["timeout"]) * 1000)
        client = genai.Client(
            api_key=options.get("api_key") or "missing-key",
            http_options=types.HttpOptions(**http_options),
        )
        return track_gemini(client)
    raise ValueError(f"Unknown provider type {kind!r} for provider {name!r}")


_ssl_contexts: dict[str, ssl.SSLContext] = {}


def _async_http_client(sdk: Any) -> Any:
    """The SDK's default async HTTP client, verifying TLS with one SSL context per process:
    loading the CA bundle costs ~50 ms, once per client, and a loop-bound client is made
    for every event loop (under WSGI, every request to an async view). The context is
    loop-agnostic and made as the HTTP library makes its own (``create_ssl_context()``:
    certifi, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``). None (the SDK makes its own client)
    when this SDK version doesn't offer what that needs."""
    default_cls = getattr(sdk, "DefaultAsyncHttpxClient", None)
    if default_cls is None:
        return None
    http_lib: Any = next(
        (
            sys.modules.get(base.__module__.partition(".")[0])
            for base in default_cls.__mro__
            if base.__name__ == "AsyncClient" and base.__module__.startswith("httpx")
        ),
        None,
    )
    try:
        context = shared_ssl_context(http_lib)
        return None if context is None else default_cls(verify=context)
    except Exception:  # an SDK or HTTP library that takes neither: the SDK's own default
        logger.debug("Using the SDK's own async HTTP client", exc_info=True)
        return None


def shared_ssl_context(http_lib: Any) -> ssl.SSLContext | None:
    """The process's one SSL context for the HTTP library ``http_lib`` (``httpx`` or
    ``httpx2``), made as it makes its own (``create_ssl_context()``); None when the
    library has no such function."""
    create = getattr(http_lib, "create_ssl_context", None)
    if create is None:
        return None
    with _ssl_lock:
        context = _ssl_contexts.get(http_lib.__name__)
        if context is None:
            context = _ssl_contexts[http_lib.__name__] = create()
    return context


_ssl_lock = threading.Lock()


def _forget_ssl_contexts() -> None:
    _ssl_contexts.clear()  # (SSL_CERT_FILE may have changed with the settings)


on_reload(_forget_ssl_contexts)


# -- one request, per provider kind -------------------------------------------------------


def call_arguments(
    kind: str, model: str, request: ServiceRequest, timeout: float | None
) -> tuple[tuple[str, ...], dict[str, Any]]:
    """(attribute path of the SDK method, keyword arguments) for one attempt."""
    if kind == "anthropic":
        system: list[dict[str, Any]] = []
        if request.system:
            system.append({"type": "text", "text": request.system})
        system += [{"type": "text", "text": doc} for doc in request.documents]
        if system:
            # One cache breakpoint after the stable prefix (system prompt + documents).
            system[-1]["cache_control"] = {"type": "ephemeral"}
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": list(request.messages),
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        }
        if system:
            kwargs["system"] = system
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.tools:
            kwargs["tools"] = list(request.tools)
        if timeout is not None:
            kwargs["timeout"] = timeout
        return ("messages", "create"), kwargs
    if kind == "gemini":
        from google.genai import types

        contents = [
            types.Content(
                role="model" if m["role"] == "assistant" else "user",
                parts=[types.Part(text=m["content"])],
            )
            for m in request.messages
        ]
        system_text = "\n\n".join(filter(None, [request.system, *request.documents]))
        config = types.GenerateContentConfig(
            system_instruction=system_text or None,
            max_output_tokens=request.max_tokens,
            temperature=request.temperature,
            http_options=types.HttpOptions(timeout=int(timeout * 1000)) if timeout else None,
        )
        return ("models", "generate_content"), {
            "model": model,
            "contents": contents,
            "config": config,
        }
    # OpenAI and OpenAI-compatible: a stable prefix (system prompt, then documents) lets
    # OpenAI's automatic prompt caching reuse it.
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages += [{"role": "system", "content": doc} for doc in request.documents]
    messages += list(request.messages)
    kwargs = {"model": model, "messages": messages}
    if request.max_tokens is not None:
        kwargs["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        kwargs["temperature"] = request.temperature
    if request.tools:
        kwargs["tools"] = list(request.tools)
    if timeout is not None:
        kwargs["timeout"] = timeout
    return ("chat", "completions", "create"), kwargs


def method_of(client: Any, path: tuple[str, ...]) -> Any:
    target = client
    for part in path:
        target = getattr(target, part)
    return target


def answer_text(kind: str, response: Any) -> str:
    """The text of a provider response (its usage, model and finish reason are on
    ``response.fluxgate``, as the tracked client read them)."""
    if kind == "anthropic":
        return "".join(b.text for b in response.content if getattr(b, "type", "") == "text")
    if kind == "gemini":
        return response.text or ""
    choices = response.choices
    return (choices[0].message.content or "") if choices else ""
