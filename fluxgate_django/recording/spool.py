"""A local JSON-lines spool for events the database could not take.

Written when a batch can't be written (the writer's retries used up, the thread
recorder's overflow); replayed by the next successful write, by the ``fluxgate.replay_spool``
task and by ``manage.py fluxgate_replay_spool``. Each process appends to its own file; a
replay claims a file by renaming it, so two processes never replay the same events (and
replays are idempotent by ``tracking_id`` anyway). A replay first takes in the journals
of dead processes (:func:`recover_journals`): they become spool files.

The spool lives in the site's private directory (:mod:`.private`: ``0700``, files
``0600``) and every line carries a MAC keyed by ``SECRET_KEY``. A replay reads a file
line by line: a line that fails the MAC (planted by another user, written by another
site) or can't be read is never stored — it is logged, counted and kept aside in
``rejected.jsonl`` (with the reason) — and the good lines beside it are written anyway.
The writer quarantines what the database refuses for its data, so only a database
failure stops a replay; the lines not written yet then stay in the spool.

The spool is bounded by ``FLUXGATE["SPOOL_MAX_BYTES"]`` (all its files together): past
it, events are dropped, never silently — each drop is logged as an error with counts,
and :data:`dropped` counts them for this process. Its size is kept in memory (counted
once from the files, then as this process appends and replays, and counted again from
the files every :data:`SIZE_RECOUNT_SECONDS` for other processes' files): appending a
batch costs one ``open``, ``write`` and ``fsync``, however many files there are.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from django.db import DatabaseError

from ..conf import fluxgate_settings
from ..records import EventRecord
from . import journal, private

logger = logging.getLogger("fluxgate.spool")

_lock = threading.RLock()
_pending: bool | None = None  # None: not looked yet in this process


def _after_fork_in_child() -> None:
    # A parent's thread may have held the lock at the fork (replaying, recovering a
    # journal): the child's copy would stay locked for ever, and its recovery with it.
    global _lock, _pending
    _lock = threading.RLock()
    _pending = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

#: Events this process could not spool because the spool was full (each drop is logged).
dropped = 0
#: Spool lines this process refused to replay (no valid MAC, unreadable; each logged).
rejected = 0

#: Where refused lines are kept, one JSON object per line (``reason``, ``source``, ``line``).
REJECTED_FILE = "rejected.jsonl"

#: The spool's size as this process knows it, and when its files were last counted (by
#: directory: a settings change may move it).
_sizes: dict[Path, list[float]] = {}
SIZE_RECOUNT_SECONDS = 60.0

try:  # psycopg's own errors (COPY) are not Django's DatabaseError
    import psycopg

    _DATABASE_ERRORS: tuple[type[BaseException], ...] = (DatabaseError, psycopg.Error)
except ImportError:  # pragma: no cover - SQLite-only sites
    _DATABASE_ERRORS = (DatabaseError,)


@dataclasses.dataclass
class Replay:
    """What a replay did: lines written (stored, or quarantined by the writer for their
    data), rejected (no valid MAC, unreadable: kept aside, never stored), and why it
    stopped with lines left in the spool (a database failure), if it did."""

    written: int = 0
    rejected: int = 0
    files: int = 0
    error: str = ""


def spool_dir() -> Path:
    """The site's private directory (``SPOOL_DIR``, or a default of the site's own)."""
    return private.site_dir()


def _spool_files(directory: Path) -> list[Path]:
    return [*directory.glob("events-*.jsonl"), *directory.glob("replaying-*.jsonl")]


def size_bytes(directory: Path | None = None) -> int:
    """Bytes held by the spool's files (every process's, replays in progress included),
    counted from the files."""
    total = 0
    for path in _spool_files(directory or spool_dir()):
        try:
            total += path.stat().st_size
        except OSError:  # claimed and removed by a replay meanwhile
            pass
    return total


def used_bytes(directory: Path) -> int:
    """The spool's size as this process knows it (see the module docstring)."""
    with _lock:
        known = _sizes.get(directory)
        now = time.monotonic()
        if known is None or now - known[1] >= SIZE_RECOUNT_SECONDS:
            known = _sizes[directory] = [size_bytes(directory), now]
        return int(known[0])


def _account(directory: Path, delta: int) -> None:
    with _lock:
        known = _sizes.get(directory)
        if known is not None:
            known[0] = max(0, known[0] + delta)


#: How a journal file's header line (not an event) starts.
_HEADER = b'{"journal":'


def pending_events(directory: Path | None = None) -> int:
    """Events in the spool now (reads every file: for reports, not for the hot path)."""
    count = 0
    for path in _spool_files(directory or spool_dir()):
        try:
            with open(path, "rb") as fh:
                count += sum(1 for line in fh if line.strip() and not line.startswith(_HEADER))
        except OSError:
            pass
    return count


def append(records: Sequence[EventRecord]) -> int:
    """Append records durably (one ``write`` and one fsync per batch); returns how many
    were spooled.

    Records that would take the spool past ``SPOOL_MAX_BYTES`` are dropped, and the
    drop is logged as an error.
    """
    global _pending, dropped
    lines = [private.encode(r).encode() for r in records]
    with _lock:
        directory = spool_dir()
        limit = int(fluxgate_settings.SPOOL_MAX_BYTES)
        used = used_bytes(directory)
        room = limit - used
        kept = 0
        for line in lines:
            size = len(line)
            if size > room:
                break
            room -= size
            kept += 1
        if kept:
            data = b"".join(lines[:kept])
            _append_locked(directory / f"events-{os.getpid()}.jsonl", data)
            _account(directory, len(data))
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


def _append_locked(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` under an exclusive ``flock``, fsync'd.

    A replay renames a file and then takes the same lock before reading it: an append
    that opened the file before the rename finishes first, and one that got the lock
    after the rename (on a file no longer at ``path``) starts over on a new file.
    """
    while True:
        fd = private.open_private(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                continue  # claimed by a replay meanwhile (the finally closes fd)
            _write_all(fd, data)
            os.fsync(fd)
            return
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def has_pending() -> bool:
    global _pending
    if _pending is None:
        try:
            _pending = any(spool_dir().glob("events-*.jsonl"))
        except OSError:
            _pending = False
    return _pending


def replay(write: Callable[..., int]) -> int:
    """Write every spooled event; returns how many were written (see :func:`replay_all`)."""
    return replay_all(write).written


def replay_all(write: Callable[..., int]) -> Replay:
    """Write every spooled event (and every dead process's journal) with
    ``write(records, replay_spool=False, spool_on_error=False)``, in batches of
    ``BATCH_SIZE``, file by file, line by line.

    ``write`` is :func:`~fluxgate_django.recording.write.write_events`: it raises on a
    database failure (the lines not written yet stay in the spool, and the replay
    stops: see :attr:`Replay.error`), and quarantines what the database refuses for its
    data. Any other exception (a bug) gives the unwritten lines back and is raised.
    """
    global _pending
    result = Replay()
    recover_journals()
    with _lock:
        directory = spool_dir()
        for path in sorted(directory.glob("events-*.jsonl")) + _orphaned_replays(directory):
            original = (
                path.name.split("-", 2)[2] if path.name.startswith("replaying-") else path.name
            )
            claimed = path.with_name(f"replaying-{os.getpid()}-{original}")
            try:
                path.rename(claimed)
            except OSError:
                continue  # another process claimed it
            result.files += 1
            if not _replay_file(claimed, write, result):
                break
        _pending = any(directory.glob("events-*.jsonl"))
    if result.written or result.rejected:
        logger.info(
            "FluxGate replayed the spool: %d events written, %d lines rejected%s",
            result.written,
            result.rejected,
            f", stopped: {result.error}" if result.error else "",
        )
    return result


def _replay_file(path: Path, write: Callable[..., int], result: Replay) -> bool:
    """Replay one claimed file; False if a database failure stopped it (what is not
    written is back in the spool)."""
    with open(path, "rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # (an append begun before the claim ends)
        data = fh.read()
    _account(path.parent, -len(data))
    reader = private.LineReader()
    good = _decode_lines(path.name, data, reader, result)
    batch_size = max(1, int(fluxgate_settings.BATCH_SIZE))
    for start in range(0, len(good), batch_size):
        chunk = good[start : start + batch_size]
        try:
            result.written += write([r for _, r in chunk], replay_spool=False, spool_on_error=False)
        except BaseException as exc:
            # Not written: back in the spool, under a name of its own (this process may
            # have started a new file meanwhile), before the claimed file goes.
            _give_back(path.parent, [line for line, _ in good[start:]], reader.header)
            path.unlink(missing_ok=True)
            if not isinstance(exc, _DATABASE_ERRORS):
                raise
            result.error = f"{type(exc).__name__}: {exc}".strip()
            logger.warning(
                "FluxGate could not replay %d spooled events (%s); they stay in the spool",
                len(good) - start,
                result.error,
            )
            return False
    path.unlink(missing_ok=True)
    return True


def _decode_lines(
    source: str, data: bytes, reader: private.LineReader, result: Replay
) -> list[tuple[bytes, EventRecord]]:
    """The (line, record) pairs of a file's lines whose MAC holds; the others rejected."""
    global rejected
    good: list[tuple[bytes, EventRecord]] = []
    refused: list[tuple[int, bytes, str]] = []
    lines = data.split(b"\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = reader.read(line)
            if record is not None:
                good.append((line, record))
        except (ValueError, TypeError, KeyError) as exc:  # (ForgedLine is a ValueError)
            if n == len(lines):  # no newline after it: cut short by a crash mid-write
                logger.warning("FluxGate skipped unreadable spool line %s:%d (torn)", source, n)
                refused.append((n, line, "torn last line (a process died writing it)"))
            elif isinstance(exc, private.ForgedLine):
                reason = f"no valid MAC ({exc}): planted, another site's, or damaged"
                refused.append((n, line, reason))
            else:
                refused.append((n, line, f"unreadable ({type(exc).__name__})"))
    if refused:
        rejected += len(refused)
        result.rejected += len(refused)
        _keep_rejected(source, refused)
    return good


def _keep_rejected(source: str, refused: list[tuple[int, bytes, str]]) -> None:
    """Log refused lines (never their content) and keep them in :data:`REJECTED_FILE`."""
    for n, _line, reason in refused:
        if not reason.startswith("torn"):
            logger.error(
                "FluxGate refused spool line %s:%d (%s): it is not stored", source, n, reason
            )
    at = dt.datetime.now(dt.timezone.utc).isoformat()
    entries = [
        json.dumps(
            {
                "rejected_at": at,
                "reason": reason,
                "source": f"{source}:{n}",
                "line": line.decode("utf-8", "backslashreplace"),
            }
        )
        + "\n"
        for n, line, reason in refused
    ]
    try:
        fd = private.open_private(spool_dir() / REJECTED_FILE)
        try:
            _write_all(fd, "".join(entries).encode())
        finally:
            os.close(fd)
    except OSError:
        logger.exception("FluxGate could not keep %d refused spool lines", len(refused))


def _give_back(directory: Path, lines: list[bytes], header: bytes | None) -> None:
    """Put lines (already with their MAC; journal rows after their header) back in the
    spool as a new file, atomically."""
    global _pending
    if not lines:
        return
    data = b"".join(line + b"\n" for line in ([header, *lines] if header else lines))
    name = f"events-{os.getpid()}-{uuid.uuid4().hex}.jsonl"
    temp = directory / f".{name}.tmp"
    fd = private.open_private(temp, os.O_WRONLY | os.O_TRUNC)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, directory / name)
    _account(directory, len(data))
    _pending = True


def _orphaned_replays(directory: Path) -> list[Path]:
    """Files a process claimed for replay and then died with (its pid is gone)."""
    orphans = []
    for path in directory.glob("replaying-*-events-*.jsonl"):
        try:
            pid = int(path.name.split("-")[1])
        except ValueError:
            continue
        if pid != os.getpid() and not private.process_alive(pid):
            orphans.append(path)
    return orphans


def recover_journals() -> int:
    """Move the journals of dead processes into the spool; returns how many files."""
    global _pending
    with _lock:
        try:
            directory = spool_dir()
            moved = journal.recover(directory)
        except OSError:
            logger.exception("FluxGate could not recover the journals of dead processes")
            return 0
        if moved:
            _pending = True
            size = 0
            for path in moved:
                try:
                    size += path.stat().st_size
                except OSError:
                    pass
            _account(directory, size)
    return len(moved)
