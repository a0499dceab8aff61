"""FluxGate's pytest plugin (``fluxgate_django.testing.pytest_plugin``, a ``pytest11`` entry
point): ``fluxgate_fake`` and ``fluxgate_events``.

The README's example (``README_EXAMPLE``, the file a new project copies) is run by pytest in
a fresh temporary project with its own settings (``pytester``, in a subprocess: this
process's Django is already configured), so it proves the plugin is found through its entry
point and works with pytest-django in a project that is not this one. The other tests use
the fixtures in this suite, next to its own conftest fixtures (``fake``...).
"""

from __future__ import annotations

import os
import textwrap
import threading
from pathlib import Path

import openai
import pytest
from django.db import connections

from fluxgate_django import track_openai
from fluxgate_django.models import Event, Team
from fluxgate_django.testing import FakeProvider, FakeReply

pytest_plugins = ["pytester"]

#: The README's "Testing your own code" example: a complete test file for a new project.
README_EXAMPLE = '''\
# tests/test_llm_costs.py. The fixtures fluxgate_fake and fluxgate_events come with
# django-fluxgate (a pytest plugin); they need pytest-django and its DJANGO_SETTINGS_MODULE.
import openai
import pytest

from fluxgate_django import track_openai
from fluxgate_django.testing import FakeReply

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client(fluxgate_fake):
    """A real OpenAI client, tracked, talking to the bundled fake provider."""
    with openai.OpenAI(api_key="sk-test", base_url=fluxgate_fake.openai_base_url,
                       max_retries=0) as raw:
        yield track_openai(raw)


def test_summary_cost(client, fluxgate_fake, fluxgate_events):
    fluxgate_fake.enqueue(FakeReply(text="ok", input_tokens=1000, cached_tokens=200,
                                    output_tokens=50))
    resp = client.with_context(feature="summary").chat.completions.create(
        model="gpt-4o", messages=HI
    )
    assert resp.choices[0].message.content == "ok"
    assert resp.fluxgate.cost > 0

    event = fluxgate_events.get()  # the one event this test recorded
    assert event.feature == "summary"
    assert event.cost_usd == resp.fluxgate.cost
    assert event.cache_read_tokens == 200


def test_rate_limit(client, fluxgate_fake, fluxgate_events):
    fluxgate_fake.enqueue(FakeReply(status=429))  # the next call gets a rate-limit error
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o", messages=HI)
    assert fluxgate_events.get().status == "ERROR"


def test_each_test_starts_clean(client, fluxgate_fake, fluxgate_events):
    # Nothing another test queued is left, and no other test's events are seen.
    assert fluxgate_fake.pending == 0 and fluxgate_events.count() == 0
    client.chat.completions.create(model="gpt-4o", messages=HI)
    assert fluxgate_fake.request_count == 1
    assert fluxgate_events.get().status == "SUCCESS"
'''

#: A fresh project's settings: only what a site using FluxGate has, and FluxGate's default
#: recorder ("thread"); the database is SQLite in a file next to them (the developer's own
#: database, which the tests must never touch), or PostgreSQL when DATABASE_URL says so.
FRESH_SETTINGS = '''\
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "fresh-project-not-secret"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "fluxgate_django",
]
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL.startswith(("postgres://", "postgresql://")):
    import dj_database_url

    DATABASES = {"default": dict(dj_database_url.parse(DATABASE_URL))}
    DATABASES["default"]["TEST"] = {"NAME": f"test_fluxgate_fresh_{os.getpid()}"}
else:
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "dev.sqlite3"}
    }
FLUXGATE = {"RECORDER": "thread", "SPOOL_DIR": str(BASE_DIR / "spool")}
'''

FRESH_INI = """\
[pytest]
DJANGO_SETTINGS_MODULE = fresh_settings
pythonpath = .
# Plugins of this repository's dev environment that a new project does not have (and
# that take seconds to import).
addopts = -p no:cacheprovider --strict-markers
    -p no:hypothesispytest -p no:schemathesis -p no:langsmith_plugin -p no:anyio
filterwarnings = error
"""


@pytest.fixture
def fresh_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A new project directory: its own settings and pytest.ini, no conftest."""
    # pytest-django prefers the environment's DJANGO_SETTINGS_MODULE to the ini file's.
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    pytester.makefile(".py", fresh_settings=FRESH_SETTINGS)
    pytester.makeini(FRESH_INI)
    return pytester


def _run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    return project.runpytest_subprocess(*args, timeout=240)


def test_readme_example_passes_in_a_new_project(fresh_project: pytest.Pytester) -> None:
    fresh_project.makepyfile(test_llm_costs=README_EXAMPLE)
    result = _run(fresh_project, "-v")
    # In file order: the third test runs after the 429 was queued and its event recorded.
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "plugins:*django-fluxgate-*",  # found through its entry point: no conftest here
            "*test_summary_cost PASSED*",
            "*test_rate_limit PASSED*",
            "*test_each_test_starts_clean PASSED*",
        ]
    )
    assert "Database access not allowed" not in result.stdout.str() + result.stderr.str()
    if not os.environ.get("DATABASE_URL"):
        # Everything went to pytest-django's test database: the developer's own database
        # file was never even opened.
        assert not (fresh_project.path / "dev.sqlite3").exists()
    # Nothing was spooled or journaled for lack of a database.
    spool = fresh_project.path / "spool"
    assert not spool.exists() or not any(p.is_file() for p in spool.rglob("*"))


RESET_AND_TRANSACTIONAL = '''\
import asyncio

import openai
import pytest
from django.db import connection, transaction

from fluxgate_django import track_openai
from fluxgate_django.models import Event
from fluxgate_django.testing import FakeReply

MESSAGES = [{"role": "user", "content": "hi"}]


def _client(fake):
    return track_openai(openai.OpenAI(api_key="sk-test", base_url=fake.openai_base_url,
                                      max_retries=0))


def test_a_leaves_a_429_queued(fluxgate_fake):
    fluxgate_fake.enqueue(FakeReply(text="used"), FakeReply(status=429))
    fluxgate_fake.on_model("gpt-4o", FakeReply(status=500))
    _client(fluxgate_fake).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert fluxgate_fake.pending == 1 and fluxgate_fake.request_count == 1


def test_b_does_not_see_it(fluxgate_fake, fluxgate_events):
    assert fluxgate_fake.pending == 0 and fluxgate_fake.request_count == 0
    resp = _client(fluxgate_fake).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert resp.choices[0].message.content == fluxgate_fake.default_reply.text
    assert [e.status for e in fluxgate_events] == ["SUCCESS"]


def test_c_async_client(fluxgate_fake, fluxgate_events):
    # Recorded on an event loop (no database access there): written in this test's
    # transaction when the events are read.
    async def call():
        async with openai.AsyncOpenAI(
            api_key="sk-test", base_url=fluxgate_fake.openai_base_url, max_retries=0
        ) as raw:
            client = track_openai(raw).with_context(feature="async")
            return await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    resp = asyncio.run(call())
    assert [(e.tracking_id, e.feature) for e in fluxgate_events] == [
        (resp.fluxgate.tracking_id, "async")
    ]


def test_d_rolled_back(db):
    # b's and c's events were rolled back with them (pytest-django runs the transactional
    # tests e, f, g last).
    assert Event.objects.count() == 0


def test_e_transactional(transactional_db, fluxgate_fake, fluxgate_events):
    assert not connection.in_atomic_block  # really transactional: no wrapping transaction
    with transaction.atomic():
        _client(fluxgate_fake).with_context(feature="tx").chat.completions.create(
            model="gpt-4o", messages=MESSAGES
        )
    assert fluxgate_events.get().feature == "tx"


@pytest.mark.django_db(transaction=True)
def test_f_transactional_mark(fluxgate_fake, fluxgate_events):
    _client(fluxgate_fake).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert fluxgate_events.count() == 1


def test_g_flushed(transactional_db):
    # After e and f, whose events were committed: their tables were emptied.
    assert Event.objects.count() == 0
'''


def test_fake_reset_between_tests_and_transactional_db(fresh_project: pytest.Pytester) -> None:
    fresh_project.makepyfile(test_plugin_behaviour=RESET_AND_TRANSACTIONAL)
    result = _run(fresh_project, "-v")
    result.assert_outcomes(passed=7)
    # pytest-django runs the transactional tests (e, f, g) after the others.
    result.stdout.fnmatch_lines([f"*test_{name}_*PASSED*" for name in "abcdefg"])


def test_without_pytest_django_the_message_says_what_is_missing(
    fresh_project: pytest.Pytester,
) -> None:
    fresh_project.makepyfile(
        test_no_django="def test_uses_the_fake(fluxgate_fake):\n    pass\n"
    )
    # The same project with pytest-django left out (and so its ini option).
    ini = FRESH_INI.replace("DJANGO_SETTINGS_MODULE = fresh_settings\n", "")
    fresh_project.makeini(ini.replace("--strict-markers", "--strict-markers -p no:django"))
    result = _run(fresh_project)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fluxgate_fake (FluxGate's pytest plugin) needs pytest-django*"])


# -- the fixtures in this suite, beside its own conftest fixtures ------------------------------


MESSAGES = [{"role": "user", "content": "hi"}]


def _client(fake: FakeProvider) -> openai.OpenAI:
    return track_openai(
        openai.OpenAI(api_key="sk-test", base_url=fake.openai_base_url, max_retries=0)
    )


def test_plugin_fake_is_its_own_beside_the_suites_fake(
    fake: FakeProvider, fluxgate_fake: FakeProvider, fluxgate_events
) -> None:
    """The suite's ``fake`` and the plugin's ``fluxgate_fake`` are two servers: replies queued
    on one never answer the other."""
    assert fake is not fluxgate_fake and fake.url != fluxgate_fake.url
    fake.enqueue(FakeReply(status=429))
    resp = _client(fluxgate_fake).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert resp.fluxgate.status == "SUCCESS"
    assert fake.pending == 1 and fake.request_count == 0
    assert fluxgate_fake.request_count == 1
    assert [e.tracking_id for e in fluxgate_events] == [resp.fluxgate.tracking_id]


def test_no_django_db_mark_needed(fluxgate_fake: FakeProvider, fluxgate_events) -> None:
    team = Team.objects.create(name="Search", slug="search")
    fluxgate_fake.enqueue(FakeReply(text="x", input_tokens=100, output_tokens=10))
    resp = (
        _client(fluxgate_fake)
        .with_context(team="search", feature="plugin")
        .chat.completions.create(model="gpt-4o", messages=MESSAGES)
    )
    event = fluxgate_events.get()
    assert (event.team_id, event.feature, event.input_tokens) == (team.pk, "plugin", 100)
    assert event.cost_usd == resp.fluxgate.cost and event.cost_usd > 0


def test_events_recorded_before_the_fixture_are_not_the_tests(
    db, fluxgate_fake: FakeProvider, request: pytest.FixtureRequest
) -> None:
    client = _client(fluxgate_fake)
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    events = request.getfixturevalue("fluxgate_events")  # set up after one event
    assert Event.objects.count() == 1 and events.count() == 0
    second = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert [e.tracking_id for e in events] == [second.fluxgate.tracking_id]
    assert events.filter(model="gpt-4o").exists() is False


def test_transactional_db_commits_the_events(
    transactional_db, fluxgate_fake: FakeProvider, fluxgate_events
) -> None:
    """Under ``transactional_db`` the event is committed: another connection sees it."""
    resp = _client(fluxgate_fake).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert fluxgate_events.get().tracking_id == resp.fluxgate.tracking_id
    assert _seen_from_another_connection(resp.fluxgate.tracking_id) == 1


def _seen_from_another_connection(tracking_id) -> int:
    """How many events with this id another database connection (a new thread's) sees:
    0 while they are only in the test's uncommitted transaction."""
    seen: list[int] = []

    def other_connection() -> None:
        try:
            seen.append(Event.objects.filter(tracking_id=tracking_id).count())
        finally:
            connections.close_all()

    thread = threading.Thread(target=other_connection)
    thread.start()
    thread.join(timeout=30)
    assert len(seen) == 1
    return seen[0]


def test_async_call_under_db_is_written_in_the_tests_transaction(
    fluxgate_fake: FakeProvider, fluxgate_events
) -> None:
    """An event recorded on an event loop (where Django allows no database access) is written
    by the next read, on the test's connection: inside its transaction, not beside it."""
    import asyncio

    async def call():
        async with openai.AsyncOpenAI(
            api_key="sk-test", base_url=fluxgate_fake.openai_base_url, max_retries=0
        ) as raw:
            return await track_openai(raw).chat.completions.create(
                model="gpt-4o", messages=MESSAGES
            )

    resp = asyncio.run(call())
    assert connections["default"].in_atomic_block  # pytest-django's `db`: one transaction
    event = fluxgate_events.get()
    assert event.tracking_id == resp.fluxgate.tracking_id
    assert event.cost_usd == resp.fluxgate.cost
    # Only in the test's transaction: rolled back with it, never committed beside it.
    assert _seen_from_another_connection(event.tracking_id) == 0


def test_call_from_another_thread_is_written_by_the_tests_thread(
    fluxgate_fake: FakeProvider, fluxgate_events
) -> None:
    """A call made in a worker thread (whose connection is outside the test's transaction):
    its event is written when the test reads the events, in the test's own connection, so a
    Team created in the test (uncommitted) is the event's team."""
    team = Team.objects.create(name="Growth", slug="growth")
    results = []

    def worker() -> None:
        try:
            resp = (
                _client(fluxgate_fake)
                .with_context(team=team, feature="worker")
                .chat.completions.create(model="gpt-4o", messages=MESSAGES)
            )
            results.append(resp.fluxgate.tracking_id)
        finally:
            connections.close_all()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(timeout=60)
    assert len(results) == 1
    event = fluxgate_events.get()
    assert (event.tracking_id, event.team_id, event.feature) == (results[0], team.pk, "worker")


def test_plugin_module_imports_without_django(tmp_path: Path) -> None:
    """pytest imports the plugin before Django is configured (and in projects that have no
    settings at all): importing it must not touch Django's settings or models."""
    import subprocess
    import sys

    code = textwrap.dedent(
        """
        import sys
        import fluxgate_django.testing.pytest_plugin as plugin
        assert callable(plugin.fluxgate_fake) and callable(plugin.fluxgate_events)
        loaded = [m for m in sys.modules if m.startswith(("django.db", "fluxgate_django.models"))]
        assert not loaded, loaded
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
        timeout=60, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_the_readme_shows_this_example_verbatim():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert README_EXAMPLE in readme
