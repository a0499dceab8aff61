"""Who and what an LLM call is for: a frozen value in a ``ContextVar``.

``tracking_context(feature="chat")`` merges fields onto the current context for a block
(inner values win, ``metadata`` is merged, ``tags`` are combined); ``current_context()``
reads it. Because it lives in a ``contextvars.ContextVar`` it follows the code through
threads started with ``contextvars.copy_context()``, asyncio tasks (each task gets a copy)
and, with the Celery integration, into tasks.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import inspect
from collections.abc import Mapping
from contextvars import ContextVar
from decimal import Decimal
from typing import Any


class Deferred(abc.ABC):
    """A context value looked up only when an LLM call needs it (the middleware's user and
    team: a request that makes no LLM call costs no query). :meth:`resolve` gives the
    plain value; the record builder and the budget guard call it."""

    __slots__ = ()

    @abc.abstractmethod
    def resolve(self) -> Any:
        """The plain value (looked up on first use)."""

    def ready(self) -> bool:
        """Whether :meth:`resolve` can answer without I/O (already looked up)."""
        return False


def resolved(value: Any) -> Any:
    """``value``, or what it stands for if it is :class:`Deferred`."""
    return value.resolve() if isinstance(value, Deferred) else value


@dataclasses.dataclass(frozen=True, slots=True)
class TrackingContext:
    """Attribution for LLM calls. Every field is optional."""

    feature: str | None = None
    #: An id (str/int), a dict ``{"id", "email", "name"}`` or a Django user instance.
    user: Any = None
    #: A ``Team`` slug, id or instance (or a :class:`Deferred` one, from the middleware).
    team: Any = None
    step: str | None = None
    session_id: str | None = None
    conversation_id: str | None = None
    request_id: str | None = None
    service_tier: str | None = None
    #: Cost reported by OpenRouter for the call; used instead of our own price.
    openrouter_cost: Decimal | None = None
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tags: tuple[str, ...] = ()

    def merge(self, **fields: Any) -> TrackingContext:
        """A new context with ``fields`` on top of this one (``None`` values are ignored)."""
        unknown = set(fields) - _FIELD_NAMES
        if unknown:
            raise TypeError(
                f"Unknown tracking context field(s): {', '.join(sorted(unknown))}. "
                f"Known: {', '.join(sorted(_FIELD_NAMES))}"
            )
        changes: dict[str, Any] = {}
        for name, value in fields.items():
            if value is None:
                continue
            if name == "metadata":
                changes["metadata"] = {**self.metadata, **value}
            elif name == "tags":
                new = (value,) if isinstance(value, str) else tuple(value)
                changes["tags"] = self.tags + tuple(t for t in new if t not in self.tags)
            elif name == "openrouter_cost":
                changes[name] = Decimal(str(value))
            else:
                changes[name] = value
        if not changes:
            return self
        return dataclasses.replace(self, **changes)

    def overlay(self, other: TrackingContext) -> TrackingContext:
        """This context with every field set on ``other`` on top."""
        if other is EMPTY_CONTEXT:
            return self
        if self is EMPTY_CONTEXT:
            return other
        return self.merge(**{f: getattr(other, f) for f in _FIELD_NAMES})

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set, as a plain dict (for task headers and debugging)."""
        out: dict[str, Any] = {}
        for name in _FIELD_NAMES:
            value = getattr(self, name)
            if value not in (None, {}, ()):
                out[name] = value
        return out


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(TrackingContext))
EMPTY_CONTEXT = TrackingContext()

_current: ContextVar[TrackingContext] = ContextVar("fluxgate_context", default=EMPTY_CONTEXT)


def current_context() -> TrackingContext:
    """The tracking context in force here."""
    return _current.get()


class tracking_context(contextlib.ContextDecorator):
    """Attribute the LLM calls made inside the block.

    Usable as a context manager, or as a decorator of sync and async functions::

        with tracking_context(feature="summarize", user={"id": "u1"}):
            client.chat.completions.create(...)

        @tracking_context(feature="report")
        async def build_report(): ...
    """

    def __init__(self, **fields: Any) -> None:
        EMPTY_CONTEXT.merge(**fields)  # unknown field names fail here, not at first use
        self.fields = fields
        self._tokens: list[Any] = []

    def __enter__(self) -> TrackingContext:
        ctx = _current.get().merge(**self.fields)
        self._tokens.append(_current.set(ctx))
        return ctx

    def __exit__(self, *exc_info: object) -> None:
        _current.reset(self._tokens.pop())

    def _recreate_cm(self) -> tracking_context:
        # A fresh instance per decorated call: calls may run concurrently.
        return tracking_context(**self.fields)

    def __call__(self, func: Any) -> Any:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def inner(*args: Any, **kwargs: Any) -> Any:
                with self._recreate_cm():
                    return await func(*args, **kwargs)

            return inner
        return super().__call__(func)


def set_context(ctx: TrackingContext) -> Any:
    """Make ``ctx`` current; returns a token for :func:`reset_context` (middleware, tasks)."""
    return _current.set(ctx)


def reset_context(token: Any) -> None:
    _current.reset(token)
