"""The public :class:`FakeProvider`: lifecycle (start / stop / context manager), base URLs
for each SDK, and control of the replies it gives."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from .replies import FakeReply, FakeRequest, _ReplyBook
from .server import _Server


class FakeProvider:
    """A loopback HTTP server speaking the OpenAI, Anthropic and Gemini APIs, for tests and demos.

    Point ``openai.OpenAI(base_url=fake.openai_base_url)``,
    ``anthropic.Anthropic(base_url=fake.anthropic_base_url)`` or
    ``genai.Client(api_key=..., http_options=HttpOptions(base_url=fake.gemini_base_url))``
    at it. Replies are chosen in
    this order: the FIFO queue (``enqueue``), the per-model reply (``on_model``), then
    ``default_reply``. Every request is recorded in ``requests``. All methods are
    thread-safe.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        default_reply: FakeReply | None = None,
        embedding_dimensions: int = 8,
    ) -> None:
        self.host = host
        self.port = port
        self.embedding_dimensions = embedding_dimensions
        self._replies = _ReplyBook(default_reply or FakeReply())
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeProvider:
        """Bind and serve from a daemon thread; returns ``self``."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server((self.host, self.port), self)
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"FakeProvider:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection (idempotent)."""
        server = self._server
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_all_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    @property
    def running(self) -> bool:
        """Whether the server is started."""
        return self._server is not None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (the provider must be started)."""
        if self._server is None:
            raise RuntimeError("FakeProvider is not started; call start() first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """Base URL for ``openai.OpenAI(base_url=...)``: ``url + "/v1"``."""
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        """Base URL for ``anthropic.Anthropic(base_url=...)``: ``url``."""
        return self.url

    @property
    def gemini_base_url(self) -> str:
        """Base URL for ``genai.Client(http_options=HttpOptions(base_url=...))``: ``url``.

        The SDK adds the API version (``/v1beta``) and ``/models/{model}:generateContent``.
        """
        return self.url

    # -- control ------------------------------------------------------------------------

    @property
    def default_reply(self) -> FakeReply:
        """The reply used when the queue is empty and no per-model reply matches."""
        return self._replies.default_reply

    @default_reply.setter
    def default_reply(self, reply: FakeReply) -> None:
        self._replies.default_reply = reply

    def enqueue(self, *replies: FakeReply) -> None:
        """Queue replies for the next requests (FIFO, whatever the endpoint)."""
        self._replies.enqueue(replies)

    def on_model(self, model: str, reply: FakeReply) -> None:
        """Answer every request naming ``model`` with ``reply`` (when the queue is empty)."""
        self._replies.on_model(model, reply)

    def reset(self) -> None:
        """Clear the queue, per-model replies and recorded requests; restore the default."""
        self._replies.reset()

    @property
    def pending(self) -> int:
        """How many queued replies are still unused."""
        return self._replies.pending

    @property
    def requests(self) -> list[FakeRequest]:
        """A snapshot of the requests received so far (health checks excluded)."""
        return self._replies.requests

    @property
    def request_count(self) -> int:
        """How many requests were received (health checks excluded)."""
        return self._replies.request_count

    @property
    def last_request(self) -> FakeRequest | None:
        """The most recent request, or ``None``."""
        return self._replies.last_request

    # -- used by the request handler ----------------------------------------------------

    def _record(self, request: FakeRequest) -> None:
        self._replies.record(request)

    def _pick_reply(self, model: Any) -> FakeReply:
        return self._replies.pick(model)
