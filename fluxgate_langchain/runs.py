"""Per-run state: one :class:`LLMRun` per model call in flight, keyed by LangChain
``run_id`` in a bounded map.

LangChain calls a handler's hooks from the caller's thread, from a thread pool (sync
``batch``) or on an event loop, and a run that is abandoned may never see its end hook.
So state lives in a dict with a hard size limit: a run that ends is popped at once, and
past the limit the oldest entries are evicted (counted and logged) instead of growing
without bound (the leak of langchain#32300 / langfuse#2974).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

if TYPE_CHECKING:
    from fluxgate_django.context import TrackingContext

logger = logging.getLogger("fluxgate.langchain")

V = TypeVar("V")


class LLMRun:
    """One chat model (or LLM) call in flight: what its event will be made of."""

    __slots__ = (
        "ctx",
        "first_token_at",
        "operation",
        "parent_run_id",
        "prompt",
        "provider",
        "request",
        "requested_model",
        "reservation",
        "run_id",
        "started",
        "tracking_id",
    )

    def __init__(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        ctx: TrackingContext,
        provider: str,
        requested_model: str,
        operation: str,
    ) -> None:
        self.run_id = run_id
        self.parent_run_id = parent_run_id
        self.ctx = ctx
        self.provider = provider
        self.requested_model = requested_model
        self.operation = operation
        self.tracking_id = uuid.uuid4()
        #: The budget reservation held for the call (a ``guard.Reservation``), if any.
        self.reservation: Any = None
        self.prompt: Any = None
        self.first_token_at: float | None = None
        self.started = time.perf_counter()
        #: The request's messages and parameters (Anthropic: read for their cache TTLs
        #: only when the usage has no TTL split, a streamed call).
        self.request: tuple[Any, ...] = ()

    def record_fields(self) -> dict[str, Any]:
        """The ``make_record`` keywords that place the call in its LangChain run tree."""
        return {"run_id": str(self.run_id), "parent_run_id": str(self.parent_run_id or "")}


class RunMap(Generic[V]):
    """A thread-safe ``run_id → state`` map holding at most ``limit`` entries."""

    __slots__ = ("_items", "_kind", "_lock", "_warned", "evicted", "limit")

    def __init__(self, limit: int, kind: str) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        #: Entries dropped because the map was full (runs whose end was never seen).
        self.evicted = 0
        self._kind = kind
        self._items: dict[UUID, V] = {}
        self._lock = threading.Lock()
        self._warned = False

    def put(self, run_id: UUID, value: V) -> None:
        with self._lock:
            items = self._items
            items[run_id] = value
            if len(items) <= self.limit:
                return
            del items[next(iter(items))]  # the oldest (dicts keep insertion order)
            self.evicted += 1
            warn = not self._warned
            self._warned = True
        if warn:
            logger.warning(
                "FluxGate: more than %d LangChain %s runs in flight on one handler; the "
                "oldest is forgotten (its end was never reported). Raise max_runs= if "
                "that many really run at once.",
                self.limit,
                self._kind,
            )

    def get(self, run_id: UUID | None) -> V | None:
        if run_id is None:
            return None
        return self._items.get(run_id)

    def pop(self, run_id: UUID) -> V | None:
        with self._lock:
            return self._items.pop(run_id, None)

    def __len__(self) -> int:
        return len(self._items)
