"""Recorders persist ``EventRecord``s: ``sync`` (in the caller), ``thread`` (default:
batched in a background thread) or ``celery``; chosen by ``FLUXGATE["RECORDER"]``."""

from __future__ import annotations

import threading
import time

from django.utils.module_loading import import_string

from .. import ledger
from ..conf import RECORDER_ALIASES, fluxgate_settings, on_reload
from .base import BaseRecorder
from .write import write_events

__all__ = ["BaseRecorder", "flush", "get_recorder", "write_events"]

_recorder: BaseRecorder | None = None
_lock = threading.Lock()


def get_recorder() -> BaseRecorder:
    """The configured recorder, created once per process (and again after a settings change)."""
    global _recorder
    recorder = _recorder
    if recorder is not None:
        return recorder
    with _lock:
        if _recorder is None:
            name = fluxgate_settings.RECORDER
            cls = import_string(RECORDER_ALIASES.get(name, name))
            _recorder = cls()
        return _recorder


def flush(timeout: float | None = None) -> bool:
    """Block until every record handed to the recorder so far is written, and every
    budget settlement under way (a call that ended on an event loop) is done.

    Returns False if ``timeout`` seconds passed first.
    """
    started = time.monotonic()
    settled = ledger.settler.wait(timeout=2.0 if timeout is None else min(timeout, 2.0))
    left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
    return get_recorder().flush(timeout=left) and settled


@on_reload
def _reset_recorder() -> None:
    global _recorder
    with _lock:
        old, _recorder = _recorder, None
    if old is not None:
        old.close()
