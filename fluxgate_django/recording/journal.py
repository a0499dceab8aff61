"""A per-process journal: an event a caller was told about survives its process being killed.

Before a tracked call returns, :func:`append` copies its record into this process's
journal segment, a file mapped into memory (``mmap``, ``MAP_SHARED``): the copy is the
page cache's own memory, so when the process dies — ``kill -9``, the OOM killer — the
kernel still has the line, as after a ``write(2)``, without a system call on the caller's
path (a ``write(2)`` gives up the GIL and must take it back: measured at ~30 µs a call,
and milliseconds at the 99th percentile, next to a busy writer thread). Each segment is
allocated in full when it is made (``posix_fallocate``), so a full disk is an error then,
never a ``SIGBUS`` in a caller. The recorder writes (or spools, or hands to the broker)
the record in a batch and then :meth:`Journal.release`\\ s it.

The journal is a series of segments, ``journal/<pid>-<token>-<n>.jsonl`` in the site's
private directory (:mod:`.private`: a header line naming the fields, then one JSON array
of field values per record — half the work of a spool line — each line with its MAC). The
recorder starts a new segment for every batch it takes (:meth:`Journal.rotate`, which
fsyncs the one it closes: a machine crash loses at most the events of one batch
interval), and a closed segment is deleted once every record in it is released.

A process holds an exclusive ``flock`` on its ``<pid>-<token>.lock`` file while it lives;
the kernel drops it when the process dies, however it dies. :func:`recover` (run by the
next process that starts recording, by ``manage.py fluxgate_replay_spool`` and by the
``fluxgate.replay_spool`` task) takes the lock of each dead process and moves its
segments into the spool, which writes them — idempotently by ``tracking_id``, so records
of a segment that were written before the crash are not stored twice. Taking the lock
is what keeps two processes from recovering the same journal, and a pid reused by a new
process from hiding a dead one's journal.

``FLUXGATE["JOURNAL"] = False`` turns it off (a process crash then loses the events of
the last ``FLUSH_INTERVAL``).
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import mmap
import os
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from ..conf import fluxgate_settings, on_reload
from ..records import EventRecord
from . import private

logger = logging.getLogger("fluxgate.journal")

_ERROR_LOG_INTERVAL = 60.0
#: Bytes of one segment (a batch interval's records at ~300 bytes each; a segment that
#: fills up is followed by a new one at once).
SEGMENT_BYTES = 4 << 20


class Segment:
    """One journal file: its descriptor and mapping, how much of it is used, and how many
    of its records are not released."""

    __slots__ = (
        "fd", "lines", "map", "outstanding", "path", "pinned", "sealed", "size", "synced", "used",
    )  # fmt: skip

    def __init__(self, path: Path, fd: int, mapped: mmap.mmap, used: int) -> None:
        self.path = path
        self.fd = fd
        self.map = mapped
        self.size = len(mapped)
        self.used = used  # bytes written (the rest of the file is zeros)
        self.lines = 0
        self.outstanding = 0
        self.sealed = False
        self.synced = False  # fsync'd since it was sealed
        self.pinned = False  # holds a record that was lost in memory: kept for recovery


class Journal:
    """This process's journal (see the module docstring). Thread-safe."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pid = os.getpid()
        self.name = f"{self.pid}-{uuid.uuid4().hex[:12]}"
        self._lock = threading.Lock()
        self._where: dict[int, tuple[Segment, EventRecord]] = {}
        #: Every segment not deleted yet (sealed ones wait for their records' release).
        self._segments: set[Segment] = set()
        self._sequence = itertools.count(1)  # (next() is atomic: callers and the writer)
        self._closed = False
        self._last_error = 0.0
        private.make_private_dir(directory)
        self._lock_fd = self._take_lock()
        self._segment = self._open_segment()

    # -- the caller's side ---------------------------------------------------------------

    def append(self, records: Sequence[EventRecord]) -> bool:
        """Journal ``records`` (one copy into the mapped segment); False if they could not
        be (logged)."""
        if len(records) == 1:
            return self.append_one(records[0])
        encode_row = private.encode_row
        try:
            data = b"".join([encode_row(r) for r in records])
        except Exception as exc:  # (a value that can't be encoded: the recorder has it)
            self._log_error("FluxGate could not journal %d events (%s)", len(records), exc)
            return False
        size = len(data)
        with self._lock:
            if self._closed:
                return False
            segment = self._segment
            start = segment.used
            if start + size > segment.size:
                fresh = self._next_segment(size, len(records))
                if fresh is None:
                    return False
                segment = fresh
                start = segment.used
            segment.map[start : start + size] = data
            segment.used = start + size
            segment.lines += len(records)
            segment.outstanding += len(records)
            where = self._where
            for record in records:
                where[id(record)] = (segment, record)
        return True

    def append_one(self, record: EventRecord) -> bool:
        """:meth:`append` of one record (a tracked call's: the caller's path, kept short)."""
        try:
            data = private.encode_row(record)
        except Exception as exc:  # (a value that can't be encoded: the recorder has it)
            self._log_error("FluxGate could not journal an event (%s)", exc)
            return False
        with self._lock:
            if self._closed:
                return False
            segment = self._segment
            start = segment.used
            end = start + len(data)
            if end > segment.size:
                fresh = self._next_segment(len(data), 1)
                if fresh is None:
                    return False
                segment = fresh
                start = segment.used
                end = start + len(data)
            segment.map[start:end] = data
            segment.used = end
            segment.lines += 1
            segment.outstanding += 1
            self._where[id(record)] = (segment, record)
        return True

    def _next_segment(self, size: int, count: int) -> Segment | None:
        """The current segment is full before the writer's next rotate (rare: SEGMENT_BYTES
        of records in one batch interval): the next segment now (call it holding the lock);
        the writer fsyncs and deletes the full one (:meth:`_sweep`), not the caller."""
        try:
            segment = self._open_segment(size)
        except (OSError, ValueError) as exc:
            self._log_error("FluxGate could not journal %d events (%s)", count, exc)
            return None
        self._segment.sealed = True
        self._segment = segment
        return segment

    # -- the recorder's side -------------------------------------------------------------

    def rotate(self, min_lines: int = 1) -> None:
        """Start a new segment if the current one has ``min_lines`` lines; then fsync
        every sealed segment not fsync'd yet, and delete those whose records are all
        released (the others go once they are)."""
        with self._lock:
            if self._closed or self._segment.lines < max(1, min_lines):
                return
        try:
            new = self._open_segment()
        except (OSError, ValueError) as exc:
            self._log_error("FluxGate could not start a journal segment (%s)", exc)
            return
        # Its first pages made writable here, before callers copy into it, as many as the
        # last segment used, twice over (a page's first write otherwise faults in the
        # caller, ~10-50 µs).
        _prefault(new, 2 * self._segment.used)
        with self._lock:
            closed = self._closed
            if not closed:
                self._segment.sealed = True
                self._segment = new
        if closed:
            self._delete(new)
            return
        self._sweep()

    def _sweep(self) -> None:
        with self._lock:
            sealed = [s for s in self._segments if s.sealed and s is not self._segment]
        for segment in sealed:
            if segment.outstanding == 0 and not segment.pinned:
                self._delete(segment)
            elif not segment.synced:
                _sync(segment)
                segment.synced = True

    def release(self, records: Sequence[EventRecord]) -> None:
        """``records`` are stored (written, spooled or handed to the broker)."""
        self._forget(records, pin=False)

    def abandon(self, records: Sequence[EventRecord]) -> None:
        """``records`` could not be stored (a bug): their segments are kept, to be
        recovered once this process is gone."""
        self._forget(records, pin=True)

    def _forget(self, records: Sequence[EventRecord], *, pin: bool) -> None:
        done = []
        with self._lock:
            where = self._where
            for record in records:
                entry = where.pop(id(record), None)
                if entry is None:
                    continue
                segment, journaled = entry
                if journaled is not record:  # (not journaled: an id reused meanwhile)
                    where[id(record)] = entry
                    continue
                segment.outstanding -= 1
                segment.pinned |= pin
                if segment.sealed and not segment.outstanding and not segment.pinned:
                    done.append(segment)
        for segment in done:
            self._delete(segment)

    def pending(self) -> int:
        """Records journaled and not released yet."""
        with self._lock:
            return len(self._where)

    def close(self) -> None:
        """At exit, after the recorder's last flush: delete what is fully released and,
        if nothing is left, the lock file; anything left is recovered by the next process."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._segment.sealed = True
            segments = set(self._segments)
        left = False
        for segment in segments:
            if segment.outstanding or segment.pinned:
                left = True
                _sync(segment)
                _release_file(segment, keep=segment.used)  # (no trailing zeros to recover)
            else:
                self._delete(segment)
        if not left:
            lock = self.directory / f"{self.name}.lock"
            lock.unlink(missing_ok=True)
        os.close(self._lock_fd)

    # -- files ---------------------------------------------------------------------------

    def _take_lock(self) -> int:
        """Create and lock ``<name>.lock``: under a temporary name first, so a recovery
        never sees it unlocked."""
        temp = self.directory / f".{self.name}.locking"
        fd = private.open_private(temp, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(temp, self.directory / f"{self.name}.lock")
        return fd

    def _open_segment(self, at_least: int = 0) -> Segment:
        """A new segment file, allocated in full and mapped, its header line written."""
        path = self.directory / f"{self.name}-{next(self._sequence)}.jsonl"
        header = private.header_line()
        size = max(SEGMENT_BYTES, len(header) + at_least)
        fd = private.open_private(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)  # (ENOSPC here, not SIGBUS in a caller later)
            mapped = mmap.mmap(fd, size)
        except (OSError, ValueError):
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        mapped[: len(header)] = header
        segment = Segment(path, fd, mapped, len(header))
        self._segments.add(segment)
        return segment

    def _delete(self, segment: Segment) -> None:
        """Close and delete ``segment`` (once: a writer's release and a sweep may both
        find it done)."""
        with self._lock:
            if segment not in self._segments:
                return
            self._segments.discard(segment)
        _release_file(segment)
        segment.path.unlink(missing_ok=True)

    def _log_error(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_error >= _ERROR_LOG_INTERVAL:
            self._last_error = now
            logger.error(message, *args)

    def _after_fork_in_child(self) -> None:
        """The parent's journal is the parent's: close our copies of its descriptors
        (without unlocking: the lock belongs to the parent's open file)."""
        for segment in self._segments:
            try:
                segment.map.close()  # (unmaps the child's copy only)
            except (OSError, ValueError, BufferError):
                pass
        for fd in {self._lock_fd} | {s.fd for s in self._segments}:
            try:
                os.close(fd)
            except OSError:
                pass


#: ``madvise(MADV_POPULATE_WRITE)`` (Linux 5.14; Python 3.11's ``mmap`` lacks the name):
#: maps a segment's pages writable, as a write to each would, without changing a byte.
_POPULATE_WRITE: int | None = getattr(
    mmap, "MADV_POPULATE_WRITE", 23 if sys.platform.startswith("linux") else None
)
#: Least, and bytes at a time, of a new segment :func:`_prefault` maps.
PREFAULT_MIN = 64 << 10
_PREFAULT_CHUNK = 64 << 10


def _prefault(segment: Segment, size: int) -> None:
    """Map the first ``size`` bytes (at least ``PREFAULT_MIN``) of a segment no caller
    writes to yet, so that callers' copies into them don't fault (the dirty pages of
    zeros past its last record are written with it: what a segment used, twice over).
    Does nothing where the kernel can't (then a caller's first copy into a page faults)."""
    global _POPULATE_WRITE
    option = _POPULATE_WRITE
    if option is None:
        return
    size = min(segment.size, max(PREFAULT_MIN, size))
    try:
        for start in range(0, size, _PREFAULT_CHUNK):
            segment.map.madvise(option, start, min(_PREFAULT_CHUNK, size - start))
    except (OSError, ValueError):
        _POPULATE_WRITE = None  # (an older kernel: EINVAL)


def _sync(segment: Segment) -> None:
    """Flush a segment's pages to disk (bounds what a machine crash loses)."""
    try:
        segment.map.flush()
        os.fsync(segment.fd)
    except (OSError, ValueError):
        pass


def _release_file(segment: Segment, keep: int | None = None) -> None:
    """Unmap and close a segment's file; ``keep``: first cut it to that many bytes."""
    try:
        segment.map.close()
    except (OSError, ValueError, BufferError):
        pass
    try:
        if keep is not None:
            os.ftruncate(segment.fd, keep)
    except OSError:
        pass
    try:
        os.close(segment.fd)
    except OSError:
        pass


def _trim(path: Path) -> int:
    """Cut a segment of a dead process after its last whole line (the rest of the file
    is zeros, or a record whose copy the death cut short: never acknowledged); returns
    its new size."""
    with open(path, "r+b") as file:
        data = file.read()
        end = data.rfind(b"\n", 0, len(data.rstrip(b"\0"))) + 1
        if end != len(data):
            file.truncate(end)
    return end


# -- this process's journal ----------------------------------------------------------------

_journal: Journal | None = None
#: Journals replaced by a settings change (a new SPOOL_DIR) that still hold records a
#: recorder has not released: kept open (and locked, so nobody recovers them while this
#: process lives) until their records are released.
_retired: list[Journal] = []
_journal_lock = threading.Lock()
_disabled_pid = 0  # the journal could not be opened in this process (logged once)


def journal_dir() -> Path:
    return private.site_dir() / "journal"


def get_journal() -> Journal | None:
    """This process's journal (opened on first use), or None when ``JOURNAL`` is off."""
    enabled = _enabled
    if enabled is None:
        enabled = _read_enabled()
    if not enabled:
        return None
    journal = _journal
    if journal is not None and (_FORK_HOOKS or journal.pid == os.getpid()):
        # (A forked child starts with no journal: the at-fork hook below clears it.)
        return journal
    return _open()


#: ``FLUXGATE["JOURNAL"]``, read once (per settings change): the caller's path reads it.
_enabled: bool | None = None


def _read_enabled() -> bool:
    global _enabled
    _enabled = bool(fluxgate_settings.JOURNAL)
    return _enabled


def _open() -> Journal | None:
    global _journal, _disabled_pid
    with _journal_lock:
        journal = _journal
        if journal is not None and journal.pid == os.getpid():
            return journal
        if _disabled_pid == os.getpid():
            return None
        try:
            _journal = Journal(journal_dir())
        except OSError as exc:
            _disabled_pid = os.getpid()
            logger.error("FluxGate could not open its journal (%s)", exc)
            return None
        return _journal


def append(records: Sequence[EventRecord]) -> bool:
    """Journal ``records`` (one copy into the mapped segment); False if the journal is
    off or failed."""
    journal = get_journal()
    return journal is not None and journal.append(records)


def append_one(record: EventRecord) -> bool:
    """:func:`append` of one record (a tracked call's)."""
    journal = _journal
    if journal is None or not _enabled or not _FORK_HOOKS:
        journal = get_journal()  # (the same answer, the long way)
        if journal is None:
            return False
    return journal.append_one(record)


def _mine() -> list[Journal]:
    pid = os.getpid()
    return [j for j in (_journal, *_retired) if j is not None and j.pid == pid]


def release(records: Sequence[EventRecord]) -> None:
    """``records`` are stored (written, spooled, handed to the broker) or given up."""
    for journal in _mine():
        journal.release(records)
    if _retired:
        _close_drained()


def abandon(records: Sequence[EventRecord]) -> None:
    """``records`` could not be stored (a bug): their lines stay in the journal, which
    the next process recovers."""
    for journal in _mine():
        journal.abandon(records)
    if _retired:
        _close_drained()


def rotate(min_lines: int = 1) -> None:
    """Start a new segment, fsyncing the last one (the recorder: once per batch)."""
    journal = _journal
    if journal is not None and journal.pid == os.getpid():
        journal.rotate(min_lines)


def close(*, final: bool = False) -> None:
    """Close this process's journal. ``final`` (at exit, after the recorder's last flush):
    retired journals too, and no new journal is opened by this process after it. What is
    left in a closed journal is recovered by the next process."""
    global _journal, _disabled_pid
    with _journal_lock:
        journal, _journal = _journal, None
        retired = list(_retired) if final else []
        if final:
            _retired.clear()
            _disabled_pid = os.getpid()
    for j in [journal, *retired]:
        if j is not None and j.pid == os.getpid():
            j.close()


def _retire() -> None:
    """A settings change: the next record opens a new journal (maybe elsewhere); this
    one is closed once the records it holds are released."""
    global _journal
    with _journal_lock:
        journal, _journal = _journal, None
        if journal is not None and journal.pid == os.getpid():
            _retired.append(journal)
    _close_drained()


def _close_drained() -> None:
    with _journal_lock:
        drained = [j for j in _retired if not j.pending()]
        for j in drained:
            _retired.remove(j)
    for j in drained:
        j.close()


# -- recovery ------------------------------------------------------------------------------


def recover(into: Path) -> list[Path]:
    """Move the segments of every dead process's journal into the directory ``into`` as
    ``events-j<name>-<n>.jsonl`` (spool files); returns the new paths.

    A journal is dead when its lock can be taken; the lock is held while its segments
    are moved, and removed last, so a recovery that dies half-way is finished by the next.
    """
    directory = journal_dir()
    moved: list[Path] = []
    own = _journal.name if _journal is not None and _journal.pid == os.getpid() else None
    for lock in sorted(directory.glob("*.lock")):
        name = lock.name.removesuffix(".lock")
        if name == own:
            continue
        try:
            fd = os.open(lock, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            continue  # recovered by another process meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its process is alive (or another one is recovering it)
            try:
                if os.fstat(fd).st_ino != os.stat(lock).st_ino:
                    continue  # removed (recovered) between our open and our lock
            except FileNotFoundError:
                continue
            moved += _move_segments(directory, name, into)
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)
    moved += _move_unlocked_segments(directory, into)
    if moved:
        logger.warning(
            "FluxGate recovered %d journal segment(s) of processes that died: %s",
            len(moved),
            ", ".join(p.name for p in moved),
        )
    return moved


def _move_segments(directory: Path, name: str, into: Path) -> list[Path]:
    moved = []
    empty = len(private.header_line())  # (a segment holding no record: its header at most)
    for segment in sorted(directory.glob(f"{name}-*.jsonl")):
        target = into / f"events-j{segment.name}"
        try:
            if _trim(segment) <= empty:
                segment.unlink()
                continue
            os.rename(segment, target)
        except FileNotFoundError:
            continue
        moved.append(target)
    return moved


def _move_unlocked_segments(directory: Path, into: Path) -> list[Path]:
    """Segments whose lock file is gone (a recovery that died between its moves and its
    unlink, or a lock removed by hand) and whose process is dead."""
    moved = []
    locks = {p.name.removesuffix(".lock") for p in directory.glob("*.lock")}
    for segment in directory.glob("*-*-*.jsonl"):
        name = segment.name.rsplit("-", 1)[0]
        if name in locks:
            continue
        try:
            pid = int(name.split("-", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid() or private.process_alive(pid):
            continue
        moved += _move_segments(directory, name, into)
    return moved


def _after_fork_in_child() -> None:
    global _journal, _journal_lock
    _journal_lock = threading.Lock()
    for journal in [_journal, *_retired]:
        if journal is not None:
            journal._after_fork_in_child()
    _journal = None
    _retired.clear()


#: Whether a forked child runs :func:`_after_fork_in_child` (then the caller's path need
#: not compare pids: a ``getpid()`` system call per record).
_FORK_HOOKS = hasattr(os, "register_at_fork")
if _FORK_HOOKS:
    os.register_at_fork(after_in_child=_after_fork_in_child)


@on_reload
def _retire_on_reload() -> None:
    # (A new directory or JOURNAL setting: the next record opens the journal again.)
    global _enabled
    _enabled = None
    _retire()
