"""The two parts a provider contributes to the tracking core (see ``core.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..records import CallInfo, Status, Usage

if TYPE_CHECKING:
    from .core import ClientState, TrackedCall


class StreamAccumulator(Protocol):
    """Reads usage, model and finish reason off a provider's stream events."""

    def observe(self, event: Any) -> None: ...

    def result(self, info: CallInfo) -> Usage | None:
        """Fill ``info`` (model, finish_reason, status) and return usage (None: none seen)."""
        ...


class UsageReader(Protocol):
    """What the core reads through, for one provider: it only reads, never acts."""

    provider: str

    def operation(self, method: str, url: str) -> str | None:
        """The tracked operation for this request (``"chat"``, ``"messages"``...), or None."""
        ...

    def read_response(self, operation: str, response: Any, info: CallInfo) -> Usage | None:
        """Fill ``info`` from a complete response and return its usage."""
        ...

    def stream_accumulator(self, operation: str) -> StreamAccumulator: ...

    def status_for_error(self, error: BaseException) -> Status: ...


class Transport(Protocol):
    """Where one SDK family's calls are intercepted (see the module doc)."""

    def install(self, client: Any, state: ClientState) -> None:
        """Put :func:`tracked_method` wrappers on ``client`` (this instance only)."""
        ...

    def copy(self, client: Any) -> Any:
        """An untracked copy of ``client`` sharing its connections (for ``with_context``)."""
        ...

    def start(
        self, state: ClientState, args: tuple[Any, ...], kwargs: dict[str, Any], stream: bool
    ) -> TrackedCall | None:
        """The call these arguments make, or None when it is not tracked."""
        ...

    def unwrap(self, call: TrackedCall, result: Any) -> Any:
        """The response inside ``result`` (``UNREADABLE``; a coroutine from async code)."""
        ...

    def deliver(self, call: TrackedCall, result: Any, response: Any, stream: bool) -> Any:
        """Record ``response`` or observe the stream; returns what the caller gets."""
        ...
