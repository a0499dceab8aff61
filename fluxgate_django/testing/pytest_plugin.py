"""FluxGate's pytest plugin: the fake provider and the test's events as fixtures.

Installed with django-fluxgate (a ``pytest11`` entry point), so a project that uses
`pytest-django <https://pytest-django.readthedocs.io/>`_ gets, with no conftest:

``fluxgate_fake``
    The bundled :class:`~fluxgate_django.testing.FakeProvider`, started once per session
    and reset before and after each test (queued replies, per-model replies, recorded
    requests and counters cleared; the default reply restored), so a 429 queued in one
    test never answers the next. Point a real SDK client at ``fluxgate_fake.openai_base_url``
    or ``fluxgate_fake.anthropic_base_url``.

``fluxgate_events``
    The ``Event`` rows recorded during this test, oldest first: a queryset of
    :class:`~fluxgate_django.models.Event` that flushes FluxGate's recorder
    (:func:`fluxgate_django.flush`) each time it is read (``.get()``, ``.count()``,
    iteration, ``.filter(...)`` then any of those...).

Both request pytest-django's ``db`` fixture themselves, so a test needs no
``django_db`` mark (with ``transactional_db`` or ``@pytest.mark.django_db(transaction=True)``
the test runs transactional instead, as pytest-django decides). While either is in use,
whatever ``RECORDER`` the site's settings choose, events are written by
:class:`PytestRecorder` in the test's own database connection, so they are rolled back (or
flushed) with the test's other data and never reach the developer's database: one recorded
in the test's thread off an event loop is written at once (as by the ``sync`` recorder);
one recorded on an event loop (``asyncio.run``, an async client) or in another thread, where
the test's connection can't be used, is written by the next :func:`fluxgate_django.flush`
in the test's thread (every read of ``fluxgate_events`` flushes; so does the end of the
test, before the database is torn down). FluxGate's per-process caches (team slugs,
budgets, price overrides, estimate calibration) are forgotten before and after the test,
since a rollback sends no signal.

Nothing here is autouse: a test that uses neither fixture sees no change. The plugin
module itself imports neither Django nor the SDKs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from ..recording.base import BaseRecorder
    from ..records import EventRecord
    from .fake_provider import FakeProvider

__all__ = ["fluxgate_events", "fluxgate_fake"]  # and PytestRecorder (made on first use)

#: Seconds ``fluxgate_events`` waits for the recorder before failing the test.
FLUSH_TIMEOUT = 30.0

_FIXTURES = ("fluxgate_fake", "fluxgate_events")
_RECORDER_PATH = f"{__name__}.PytestRecorder"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test using FluxGate's fixtures without pytest-django: say what is missing (instead
    of pytest's "fixture 'db' not found")."""
    names = getattr(item, "fixturenames", ())
    used = [name for name in _FIXTURES if name in names]
    if used and not item.config.pluginmanager.hasplugin("django"):
        pytest.fail(
            f"{', '.join(used)} (FluxGate's pytest plugin) needs pytest-django for its "
            "test database: pip install pytest-django, and set DJANGO_SETTINGS_MODULE "
            "(pytest.ini / pyproject.toml, or --ds)",
            pytrace=False,
        )


def _forget_process_state() -> None:
    """Drop FluxGate's per-process caches of database rows: a rolled-back test leaves them
    pointing at rows that no longer exist (a rollback sends no post_delete)."""
    from .. import ledger, teams
    from ..estimate import calibration
    from ..pricing import price_book

    teams.forget()
    ledger.clear_cache()
    price_book.reset_overrides()
    calibration.clear()


def _flush_or_fail() -> None:
    from .. import flush

    if not flush(timeout=FLUSH_TIMEOUT):
        pytest.fail(
            "FluxGate could not write every event recorded in this test: a budget "
            f"settlement took over {FLUSH_TIMEOUT:g} s, or events recorded on an event loop "
            "or in another thread are waiting for a read of fluxgate_events (or "
            "fluxgate_django.flush()) in the test's own thread, outside any event loop",
            pytrace=False,
        )


#: The thread running the current test: the one whose database connection holds its data.
_test_thread: int = threading.main_thread().ident or 0


def _in_test_thread() -> bool:
    if threading.get_ident() != _test_thread:
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    return False


_recorder_class: type[BaseRecorder] | None = None


def _pytest_recorder_class() -> type[BaseRecorder]:
    """``PytestRecorder``, made on first use: the plugin is imported before Django is set up,
    and the recording package needs it."""
    global _recorder_class
    if _recorder_class is not None:
        return _recorder_class
    from ..recording.base import BaseRecorder
    from ..recording.write import write_events

    class PytestRecorder(BaseRecorder):
        """The recorder while ``fluxgate_fake`` or ``fluxgate_events`` is in use: every event
        is written in the test's own thread, so on its database connection and in its
        transaction.

        In the test's thread off an event loop a record is written at once (as by the
        ``sync`` recorder). Elsewhere — on a running event loop, where Django allows no
        database access, or in another thread, whose connection is outside the test's
        transaction — it is kept, and written by the next :meth:`flush` called in the
        test's thread. The site's spool is not replayed into the test's database.
        """

        def __init__(self) -> None:
            self._held: list[EventRecord] = []
            self._lock = threading.Lock()

        def record(self, record: EventRecord) -> None:
            self.record_batch([record])

        def record_batch(self, records: Sequence[EventRecord]) -> None:
            with self._lock:
                self._held.extend(records)
            if _in_test_thread():
                self._write_held()

        def _write_held(self) -> None:
            with self._lock:
                held, self._held = self._held, []
            if held:
                write_events(held, replay_spool=False)

        def flush(self, timeout: float | None = None) -> bool:
            if _in_test_thread():
                self._write_held()
            with self._lock:
                return not self._held

        def close(self) -> None:
            self._write_held()  # (the settings changed mid-test: written where we are)

    PytestRecorder.__module__ = __name__
    _recorder_class = PytestRecorder
    return PytestRecorder


def __getattr__(name: str) -> Any:
    if name == "PytestRecorder":  # (FLUXGATE["RECORDER"] names it by its dotted path)
        return _pytest_recorder_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@pytest.fixture
def _fluxgate_recording(db: None) -> Iterator[None]:
    """The test's database (pytest-django's ``db``: transactional if the test asks for it),
    events written by :class:`PytestRecorder` in the test's connection, flushed before the
    database is rolled back, and fresh per-process caches."""
    from django.conf import settings
    from django.test.utils import override_settings

    global _test_thread
    _test_thread = threading.get_ident()
    user = getattr(settings, "FLUXGATE", None) or {}
    override = override_settings(FLUXGATE={**user, "RECORDER": _RECORDER_PATH})
    override.enable()
    _forget_process_state()
    try:
        yield
        _flush_or_fail()
    finally:
        _forget_process_state()
        override.disable()


@pytest.fixture(scope="session")
def _fluxgate_fake_server() -> Iterator[FakeProvider]:
    from .fake_provider import FakeProvider

    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def fluxgate_fake(
    _fluxgate_fake_server: FakeProvider, _fluxgate_recording: None
) -> Iterator[FakeProvider]:
    """The bundled fake provider (one per session), reset before and after the test."""
    _fluxgate_fake_server.reset()
    try:
        yield _fluxgate_fake_server
    finally:
        _fluxgate_fake_server.reset()


_queryset_class: type | None = None


def _recorded_events_class() -> type:
    """``RecordedEvents``: a QuerySet that flushes the recorder before each read. Made on
    first use (the plugin is imported before Django is configured)."""
    global _queryset_class
    if _queryset_class is not None:
        return _queryset_class
    from django.db.models import QuerySet

    class RecordedEvents(QuerySet):  # type: ignore[type-arg]
        """Events recorded during the test; every read flushes FluxGate's recorder first."""

        def _fetch_all(self) -> None:
            if self._result_cache is None:  # type: ignore[has-type]
                _flush_or_fail()
            super()._fetch_all()  # type: ignore[misc]

        def count(self) -> int:
            _flush_or_fail()
            return super().count()

        def exists(self) -> bool:
            _flush_or_fail()
            return super().exists()

        def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            _flush_or_fail()
            return super().aggregate(*args, **kwargs)

        def iterator(self, chunk_size: int | None = None) -> Iterator[Any]:
            _flush_or_fail()
            return super().iterator(chunk_size=chunk_size)

    _queryset_class = RecordedEvents
    return RecordedEvents


@pytest.fixture
def fluxgate_events(_fluxgate_recording: None) -> QuerySet[Any]:
    """The ``Event`` rows recorded during this test (oldest first), flushed on each read."""
    from django.db.models import Max

    from ..models import Event

    _flush_or_fail()  # what was recorded before the test is not the test's
    before = Event.objects.aggregate(last=Max("pk"))["last"] or 0
    events: QuerySet[Any] = _recorded_events_class()(model=Event)
    return events.filter(pk__gt=before).order_by("pk")
