"""Send events to a FluxGate site's ingest API from a background thread.

Outside a Django process the handler cannot write events itself, so it posts them in
batches to ``POST {base_url}/fluxgate/api/events/`` (``Authorization: Bearer <api key>``,
body ``{"events": [...]}``). The site deduplicates by ``tracking_id``, so a batch whose
answer was lost can safely be sent again.

Guarantees:

* The caller never waits on the network: :meth:`RemoteSender.send` only appends to an
  in-memory queue.
* Nothing is lost while the site is briefly down: on a connection error, a timeout, a 5xx
  or a 429 the batch stays at the head of the queue and is retried with exponential
  backoff (``Retry-After`` honoured).
* The queue is bounded (``max_queue``). When it is full, new events are dropped, counted
  in :attr:`RemoteSender.dropped` and reported with an error log — never silently. A batch
  the site refuses for good (another 4xx, e.g. a bad API key) is counted in
  :attr:`RemoteSender.rejected` and logged.
* At interpreter exit the queue is flushed (for up to ``FLUXGATE_EXIT_FLUSH_SECONDS``, 5 s
  by default); what could not be delivered is logged with its count.

Standard library only (``urllib``), so the package needs nothing but ``langchain-core``.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from typing import Any

logger = logging.getLogger("fluxgate.langchain")

INGEST_PATH = "/fluxgate/api/events/"
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_USER_AGENT = "fluxgate-langchain/0.1"


class RemoteSender:
    """A bounded queue of events and one daemon thread posting them in batches."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        max_queue: int = 10_000,
        batch_size: int = 100,
        interval: float = 1.0,
        timeout: float = 10.0,
        initial_backoff: float = 0.5,
        max_backoff: float = 60.0,
    ) -> None:
        if not base_url or not api_key:
            raise ValueError("RemoteSender needs a base_url and an api_key")
        self.url = base_url.rstrip("/") + INGEST_PATH
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.interval = interval
        self.timeout = timeout
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        #: Events delivered, dropped because the queue was full, and refused by the site.
        self.sent = 0
        self.dropped = 0
        self.rejected = 0
        self._api_key = api_key
        self._queue: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._flush_wanted = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._last_drop_report = 0.0
        self._drops_reported = 0

    # -- caller side -------------------------------------------------------------------

    def send(self, event: dict[str, Any]) -> bool:
        """Queue one event (never blocks on I/O). False if the queue was full."""
        if self._pid != os.getpid():
            self._start()
        with self._cond:
            if len(self._queue) >= self.max_queue:
                self.dropped += 1
                self._report_drops()
                return False
            self._queue.append(event)
            if len(self._queue) >= self.batch_size:
                self._cond.notify_all()
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything queued now; False if ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if self._thread is None or self._pid != os.getpid():
                return not self._queue
            self._flush_wanted = True
            self._cond.notify_all()
            while self._queue or self._in_flight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    @property
    def pending(self) -> int:
        """Events not yet delivered (a batch being sent stays queued until it is)."""
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float | None = 5.0) -> bool:
        """Flush (up to ``timeout``), then stop the thread. Returns whether all was sent."""
        delivered = self.flush(timeout)
        with self._cond:
            self._closed = True
            left = len(self._queue)
            self._cond.notify_all()
        if left:
            logger.error(
                "FluxGate: %d LangChain events could not be delivered to %s and are lost "
                "(the site was unreachable). %d were dropped earlier because the queue "
                "was full.",
                left,
                self.url,
                self.dropped,
            )
        return delivered

    # -- worker ------------------------------------------------------------------------

    def _start(self) -> None:
        with _registry_lock:
            if self._pid == os.getpid():
                return
            if self._pid:
                # A forked child: the parent still sends what it had queued.
                self._cond = threading.Condition()
                self._queue.clear()
                self._in_flight = 0
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._run, name="fluxgate-langchain-sender", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        backoff = 0.0
        while True:
            with self._cond:
                batch = self._next_batch(backoff)
                if batch is None:
                    return
                self._in_flight = len(batch)
            ok, retry_after, reason = self._post(batch)
            with self._cond:
                self._in_flight = 0
                if ok is None:  # retry later: the batch stays at the head of the queue
                    backoff = min(self.max_backoff, max(backoff * 2, self.initial_backoff))
                    if retry_after is not None:
                        backoff = min(self.max_backoff, max(backoff, retry_after))
                    logger.warning(
                        "FluxGate: could not send %d LangChain events to %s (%s); "
                        "retrying in %.1fs (%d queued).",
                        len(batch),
                        self.url,
                        reason,
                        backoff,
                        len(self._queue),
                    )
                else:
                    backoff = 0.0
                    for _ in batch:
                        self._queue.popleft()
                    if ok:
                        self.sent += len(batch)
                    else:
                        self.rejected += len(batch)
                        logger.error(
                            "FluxGate: %s refused %d LangChain events (%s); they are not "
                            "recorded. Check FLUXGATE_URL and FLUXGATE_API_KEY.",
                            self.url,
                            len(batch),
                            reason,
                        )
                if not self._queue:
                    self._flush_wanted = False
                self._cond.notify_all()

    def _next_batch(self, backoff: float) -> list[dict[str, Any]] | None:
        """Wait (holding the condition) until a batch is due; None when closed and empty."""
        deadline = time.monotonic() + (backoff or self.interval)
        while True:
            queued = len(self._queue)
            due = not backoff and (queued >= self.batch_size or self._flush_wanted)
            remaining = deadline - time.monotonic()
            if self._closed:
                return None  # close() has flushed what it could and reported the rest
            if queued and (due or remaining <= 0):
                return list(itertools.islice(self._queue, self.batch_size))
            if remaining <= 0:
                deadline = time.monotonic() + self.interval
                remaining = self.interval
            self._cond.wait(remaining)

    def _post(self, batch: list[dict[str, Any]]) -> tuple[bool | None, float | None, str]:
        """``(True, ...)`` delivered, ``(False, ...)`` refused for good, ``(None, retry_after,
        reason)`` try again."""
        body = json.dumps({"events": batch}, default=str, separators=(",", ":")).encode()
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {self._api_key}",
                "Content-Type": "application/json",
                "User-Agent": _USER_AGENT,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
            return True, None, ""
        except urllib.error.HTTPError as exc:
            exc.close()
            reason = f"HTTP {exc.code}"
            if exc.code in _RETRY_STATUSES:
                return None, _retry_after(exc.headers.get("Retry-After")), reason
            return False, None, reason
        except (OSError, ValueError) as exc:  # URLError, connection reset, timeout
            return None, None, type(exc).__name__
        except Exception as exc:  # never let the sender thread die
            logger.exception("FluxGate: unexpected error sending LangChain events")
            return None, None, type(exc).__name__

    def _report_drops(self) -> None:
        """Log drops at once, then at most every 10 s with the running count."""
        now = time.monotonic()
        if self._drops_reported and now - self._last_drop_report < 10:
            return
        self._last_drop_report = now
        self._drops_reported = self.dropped
        logger.error(
            "FluxGate: the LangChain event queue for %s is full (%d events waiting; the "
            "site is unreachable or too slow): %d events dropped so far.",
            self.url,
            len(self._queue),
            self.dropped,
        )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value)) + random.random() * 0.1
    except ValueError:
        return None


_registry: dict[tuple[str, str], RemoteSender] = {}
_registry_lock = threading.RLock()


def get_sender(base_url: str, api_key: str) -> RemoteSender:
    """The process's one sender for a site and key (its thread starts on first send)."""
    key = (base_url.rstrip("/"), api_key)
    with _registry_lock:
        sender = _registry.get(key)
        if sender is None:
            sender = _registry[key] = RemoteSender(base_url, api_key)
            if len(_registry) == 1:
                atexit.register(_flush_at_exit)
        return sender


def flush_all(timeout: float | None = None) -> bool:
    """Flush every sender of this process; False if one did not finish in time."""
    with _registry_lock:
        senders = list(_registry.values())
    deadline = None if timeout is None else time.monotonic() + timeout
    done = True
    for sender in senders:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        done = sender.flush(left) and done
    return done


def _flush_at_exit() -> None:
    try:
        seconds = float(os.environ.get("FLUXGATE_EXIT_FLUSH_SECONDS", "5"))
    except ValueError:
        seconds = 5.0
    with _registry_lock:
        senders = list(_registry.values())
    deadline = time.monotonic() + seconds
    for sender in senders:
        sender.close(max(0.0, deadline - time.monotonic()))
