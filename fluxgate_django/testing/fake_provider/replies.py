"""The reply model: what the fake answers (:class:`FakeReply`), what it received
(:class:`FakeRequest`), and the queued / per-model / default replies it picks from."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .routes import _GEMINI_PATH

DEFAULT_TEXT = "Hello from the fake provider."


@dataclass
class FakeReply:
    """What the fake provider answers to one request.

    Token fields are reported verbatim in the provider's own fields; ``None`` means "derive
    from the text" (ceil(chars / 4), at least 1 for input). Derived output tokens include
    ``reasoning_tokens`` and are capped by the request's ``max_tokens`` /
    ``max_completion_tokens`` / ``max_output_tokens``.

    ``finish_reason`` ``None`` means the provider default (``stop`` / ``end_turn`` /
    ``completed``). Aliases are translated per provider: ``length`` and ``max_tokens`` are
    the same thing, ``content_filter`` makes a Responses API reply ``incomplete``,
    ``refusal`` makes an OpenAI reply a refusal (``message.refusal`` / a ``refusal`` part).
    Gemini takes its own ``FinishReason`` names (``"SAFETY"``, ``"RECITATION"``,
    ``"MAX_TOKENS"``...; ``length`` / ``content_filter`` are translated), and
    ``"BLOCKED"`` (or ``"BLOCKED:<BlockedReason>"``) answers a blocked prompt:
    ``promptFeedback.blockReason`` (default ``SAFETY``) and no candidates.

    ``status`` outside 2xx answers with an error body in the provider's format (Google's
    ``{"error": {"code", "message", "status"}}`` for Gemini).
    """

    text: str = DEFAULT_TEXT
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    finish_reason: str | None = None
    served_model: str | None = None
    status: int = 200
    error_message: str | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0
    drop_connection: bool = False
    chunks: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Extra fields merged into an OpenAI-format ``usage`` (e.g. OpenRouter's ``cost``).
    usage_extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FakeRequest:
    """One request received by the fake provider (``headers`` keys are lowercased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    query: str = ""

    @property
    def model(self) -> str | None:
        """The ``model`` named in the JSON body (or, for Gemini, in the path), if any."""
        if isinstance(self.body, dict):
            model = self.body.get("model")
            if isinstance(model, str):
                return model
        gemini = _GEMINI_PATH.match(self.path)
        return gemini.group("model") if gemini else None

    @property
    def stream(self) -> bool:
        """Whether the request asked for a streamed (SSE) reply."""
        if self.path.endswith(":streamGenerateContent"):
            return True
        return isinstance(self.body, dict) and bool(self.body.get("stream"))


class _ReplyBook:
    """The replies to give and the requests received, behind one lock (thread-safe).

    Replies are chosen in this order: the FIFO queue, the per-model reply, then the default.
    """

    def __init__(self, default_reply: FakeReply) -> None:
        self._initial_default = default_reply
        self._default_reply = default_reply
        self._lock = threading.Lock()
        self._queue: deque[FakeReply] = deque()
        self._by_model: dict[str, FakeReply] = {}
        self._requests: list[FakeRequest] = []

    @property
    def default_reply(self) -> FakeReply:
        with self._lock:
            return self._default_reply

    @default_reply.setter
    def default_reply(self, reply: FakeReply) -> None:
        with self._lock:
            self._default_reply = reply

    def enqueue(self, replies: tuple[FakeReply, ...]) -> None:
        with self._lock:
            self._queue.extend(replies)

    def on_model(self, model: str, reply: FakeReply) -> None:
        with self._lock:
            self._by_model[model] = reply

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self._by_model.clear()
            self._requests.clear()
            self._default_reply = self._initial_default

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    @property
    def requests(self) -> list[FakeRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    @property
    def last_request(self) -> FakeRequest | None:
        with self._lock:
            return self._requests[-1] if self._requests else None

    def record(self, request: FakeRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def pick(self, model: Any) -> FakeReply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            if isinstance(model, str) and model in self._by_model:
                return self._by_model[model]
            return self._default_reply
