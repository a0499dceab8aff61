"""The recorder interface: what every recorder (sync, thread, celery) implements."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from ..records import EventRecord


class BaseRecorder(abc.ABC):
    """Receives every ``EventRecord``; must never raise into, or block, the caller."""

    #: The recorder stores records after the caller's call returns (in a thread, through
    #: a broker): the pipeline journals each record before handing it over
    #: (:mod:`.journal`), and the recorder releases it once stored or spooled.
    uses_journal: bool = False

    @abc.abstractmethod
    def record(self, record: EventRecord) -> None:
        """Accept one record for persistence."""

    def record_batch(self, records: Sequence[EventRecord]) -> None:
        """Accept many records at once (the ingest API)."""
        for record in records:
            self.record(record)

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything recorded so far is persisted (or spooled)."""
        return True

    def close(self) -> None:
        """Flush and release resources (settings change, shutdown)."""
        self.flush(timeout=5)
