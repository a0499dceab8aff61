"""A local JSON-lines spool for events the database could not take.

Written when the database is unreachable; replayed by the next successful write and by
``manage.py fluxgate_replay_spool``. Each process appends to its own file; a replay
claims a file by renaming it, so two processes never replay the same events (and
replays are idempotent by ``tracking_id`` anyway).

The spool is bounded by ``FLUXGATE["SPOOL_MAX_BYTES"]`` (all its files together): past
it, events are dropped, never silently — each drop is logged as an error with counts,
and :data:`dropped` counts them for this process.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from ..conf import fluxgate_settings
from ..records import EventRecord

logger = logging.getLogger("fluxgate.spool")

_lock = threading.RLock()
_pending: bool | None = None  # None: not looked yet in this process

#: Events this process could not spool because the spool was full (each drop is logged).
dropped = 0


def spool_dir() -> Path:
    configured = fluxgate_settings.SPOOL_DIR
    path = Path(configured) if configured else Path(tempfile.gettempdir()) / "fluxgate-spool"
    path.mkdir(parents=True, exist_ok=True)
    return path


def size_bytes(directory: Path | None = None) -> int:
    """Bytes held by the spool's files (every process's, replays in progress included)."""
    total = 0
    for path in (directory or spool_dir()).glob("*.jsonl"):
        try:
            total += path.stat().st_size
        except OSError:  # claimed and removed by a replay meanwhile
            pass
    return total


def append(records: Sequence[EventRecord]) -> int:
    """Append records durably (fsync'd once per batch); returns how many were spooled.

    Records that would take the spool past ``SPOOL_MAX_BYTES`` are dropped, and the
    drop is logged as an error.
    """
    global _pending, dropped
    lines = [json.dumps(r.to_json(compact=True), separators=(",", ":")) + "\n" for r in records]
    with _lock:
        directory = spool_dir()
        limit = int(fluxgate_settings.SPOOL_MAX_BYTES)
        used = size_bytes(directory)
        room = limit - used
        kept = 0
        for line in lines:
            size = len(line.encode("utf-8"))
            if size > room:
                break
            room -= size
            kept += 1
        if kept:
            path = directory / f"events-{os.getpid()}.jsonl"
            with open(path, "a", encoding="utf-8") as fh:
                fh.write("".join(lines[:kept]))
                fh.flush()
                os.fsync(fh.fileno())
            _pending = True
        if kept < len(lines):
            dropped += len(lines) - kept
            logger.error(
                "FluxGate spool %s is full (%d of %d bytes, SPOOL_MAX_BYTES): dropped %d of "
                "%d events; %d dropped by this process so far",
                directory,
                used,
                limit,
                len(lines) - kept,
                len(lines),
                dropped,
            )
    return kept


def has_pending() -> bool:
    global _pending
    if _pending is None:
        try:
            _pending = any(spool_dir().glob("events-*.jsonl"))
        except OSError:
            _pending = False
    return _pending


def replay(write: Callable[..., int]) -> int:
    """Write every spooled event with ``write(records, replay_spool=False)``; returns count.

    ``write`` is :func:`~fluxgate_django.recording.base.write_events`, which spools what it
    cannot write: if the database goes away again, the rest stays in the spool.
    """
    global _pending
    written = 0
    with _lock:
        directory = spool_dir()
        for path in sorted(directory.glob("events-*.jsonl")) + _orphaned_replays():
            original = (
                path.name.split("-", 2)[2] if path.name.startswith("replaying-") else path.name
            )
            claimed = path.with_name(f"replaying-{os.getpid()}-{original}")
            try:
                path.rename(claimed)
            except OSError:
                continue  # another process claimed it
            records = _read(claimed)
            try:
                complete = not records or write(records, replay_spool=False) == len(records)
            except BaseException:
                # A bug (not an outage, which ``write`` spools): give the file back, under
                # a name of its own (this process may have started a new file meanwhile).
                claimed.rename(directory / f"events-{os.getpid()}-{uuid.uuid4().hex}.jsonl")
                _pending = True
                raise
            # Written, or (the database went away again) back in the spool by ``write``.
            claimed.unlink(missing_ok=True)
            if not complete:
                _pending = True
                return written
            written += len(records)
        _pending = any(directory.glob("events-*.jsonl"))
    if written:
        logger.info("FluxGate replayed %d spooled events", written)
    return written


def _orphaned_replays() -> list[Path]:
    """Files a process claimed for replay and then died with (its pid is gone)."""
    orphans = []
    for path in spool_dir().glob("replaying-*-events-*.jsonl"):
        pid = int(path.name.split("-")[1])
        if pid != os.getpid() and not _alive(pid):
            orphans.append(path)
    return orphans


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: Path) -> list[EventRecord]:
    records = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(EventRecord.from_json(json.loads(line)))
            except (ValueError, TypeError, KeyError):
                # A torn last line after a crash: keep the rest.
                logger.warning("FluxGate skipped unreadable spool line %s:%d", path.name, n)
    return records
