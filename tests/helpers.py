"""Small helpers shared by the pricing and recording tests."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.test import override_settings

#: A minimal chat request.
MSGS = [{"role": "user", "content": "hi"}]


def fluxgate_overrides(**changes: Any) -> override_settings:
    """``override_settings(FLUXGATE=...)`` with ``changes`` merged onto the FLUXGATE in force.

    Use it as a context manager (the current settings are read when it is called).
    Entering and leaving it reloads FluxGate's settings, which also resets the price book
    and replaces the recorder (the old one is flushed and closed).
    """
    return override_settings(FLUXGATE={**settings.FLUXGATE, **changes})


def write_twice_at_once(monkeypatch: Any, records: list[Any]) -> None:
    """Write the same batch from two threads whose INSERTs run at the same moment (a
    requeued Celery message, a client re-sending an ingest batch): each writer waits at
    the INSERT until the other has got there too. Needs a shared (PostgreSQL) database."""
    import dataclasses
    import threading

    from django.db import connection

    from fluxgate_django.recording import write as base

    together = threading.Barrier(2, timeout=10)
    insert = base.insert_new

    def insert_together(*args: Any, **kwargs: Any) -> Any:
        together.wait()  # both writers have done everything that comes before the INSERT
        return insert(*args, **kwargs)

    monkeypatch.setattr(base, "insert_new", insert_together)

    def write() -> None:
        try:
            base.write_events([dataclasses.replace(r) for r in records])
        finally:
            connection.close()

    writers = [threading.Thread(target=write) for _ in range(2)]
    for t in writers:
        t.start()
    for t in writers:
        t.join(30)


_parsed: dict[Any, tuple[float, Any]] = {}


def parse_source(path: Any) -> Any:
    """``ast.parse`` of a source file (parsed once per session while it is unchanged),
    with the garbage collector held off: CPython 3.11 can raise "AST constructor
    recursion depth mismatch" when a collection runs finalizers in the middle of a parse
    (seen after async tests). (Not ``gc.collect()`` first: on a late test's heap that
    took ~0.5 s a file, a minute per static check.)"""
    import ast
    import gc

    mtime = path.stat().st_mtime
    cached = _parsed.get(path)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    enabled = gc.isenabled()
    gc.disable()
    try:
        tree = ast.parse(path.read_text(), str(path))
    finally:
        if enabled:
            gc.enable()
    _parsed[path] = (mtime, tree)
    return tree
