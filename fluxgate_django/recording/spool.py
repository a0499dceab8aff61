"""A local JSON-lines spool for events the database could not take.

Written when the database is unreachable; replayed by the next successful write and by
``manage.py fluxgate_replay_spool``. Each process appends to its own file; a replay
claims a file by renaming it, so two processes never replay the same events (and
replays are idempotent by ``tracking_id`` anyway).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from ..conf import fluxgate_settings
from ..records import EventRecord

logger = logging.getLogger("fluxgate.spool")

_lock = threading.RLock()
_pending: bool | None = None  # None: not looked yet in this process


def spool_dir() -> Path:
    configured = fluxgate_settings.SPOOL_DIR
    path = Path(configured) if configured else Path(tempfile.gettempdir()) / "fluxgate-spool"
    path.mkdir(parents=True, exist_ok=True)
    return path


def append(records: Sequence[EventRecord]) -> None:
    """Append records durably (fsync'd once per batch)."""
    global _pending
    lines = "".join(json.dumps(r.to_json(), separators=(",", ":")) + "\n" for r in records)
    with _lock:
        path = spool_dir() / f"events-{os.getpid()}.jsonl"
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())
        _pending = True


def has_pending() -> bool:
    global _pending
    if _pending is None:
        try:
            _pending = any(spool_dir().glob("events-*.jsonl"))
        except OSError:
            _pending = False
    return _pending


def replay(write: Callable[..., int]) -> int:
    """Write every spooled event with ``write(records, replay_spool=False)``; returns count."""
    global _pending
    written = 0
    with _lock:
        for path in sorted(spool_dir().glob("events-*.jsonl")) + _orphaned_replays():
            original = (
                path.name.split("-", 2)[2] if path.name.startswith("replaying-") else path.name
            )
            claimed = path.with_name(f"replaying-{os.getpid()}-{original}")
            try:
                path.rename(claimed)
            except OSError:
                continue  # another process claimed it
            records = _read(claimed)
            if records and write(records, replay_spool=False) < len(records):
                # The database went away again: those records are back in the spool.
                claimed.unlink(missing_ok=True)
                _pending = True
                return written
            claimed.unlink(missing_ok=True)
            written += len(records)
        _pending = any(spool_dir().glob("events-*.jsonl"))
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
