"""Celery: the recorder's one-task-per-batch publishing and fallbacks, the periodic tasks,
and the tracking context carried into tasks run by a real worker (Redis broker,
PostgreSQL shared with the worker; skipped with the reason where those are missing)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import types
import uuid
import weakref
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

import fluxgate_django
from fluxgate_django import tracking_context
from fluxgate_django.celery_support import (
    RECORD_EVENTS_TIME_LIMIT,
    beat_schedule,
    context_from_header,
    context_to_header,
    visibility_timeout_for,
)
from fluxgate_django.context import EMPTY_CONTEXT
from fluxgate_django.models import Budget, Event, SpendCounter, Team, TeamMembership
from fluxgate_django.recording import celery as celery_recorder
from fluxgate_django.recording import write as base
from fluxgate_django.records import pack_records
from fluxgate_django.testing import DEFAULT_TEXT
from tests import services
from tests.helpers import MSGS, fluxgate_overrides
from tests.services import (
    Worker,
    database_refused,
    make_app,
    make_record,
    new_queue,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("spool_dir")  # (tests/conftest.py)

needs_shared_db = pytest.mark.django_db(transaction=True)

CELERY = {"RECORDER": "celery", "RAISE_ERRORS": True, "FLUSH_INTERVAL": 60, "BATCH_SIZE": 1000}


# -- the recorder, against a stand-in app (no broker needed) ---------------------------------


class FakeTask:
    def __init__(self, fail: Exception | None = None) -> None:
        self.sent: list[tuple[list[Any], dict[str, Any]]] = []
        self.fail = fail

    def apply_async(self, args: list[Any], **options: Any) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append((args, options))


def fake_app(task: FakeTask) -> Any:
    """A stand-in Celery app: the recorder publishes by name (``send_task``)."""

    def send_task(name: str, args: list[Any], **options: Any) -> None:
        assert name == "fluxgate.record_events"
        task.apply_async(args, **options)

    return types.SimpleNamespace(main="site", fixups=set(), send_task=send_task)


@pytest.fixture
def openai(openai_client):
    return fluxgate_django.track_openai(openai_client)


@needs_shared_db
def test_a_batch_is_one_task_with_json_records(openai, fake):
    task = FakeTask()
    with fluxgate_overrides(**CELERY, CELERY_APP=fake_app(task)):
        with tracking_context(feature="batched", team="no-such-team"):
            ids = [
                openai.chat.completions.create(
                    model="gpt-4o-mini", messages=MSGS
                ).fluxgate.tracking_id
                for _ in range(30)
            ]
        # Sent (flush() would wait for a worker to write them: none does here).
        assert fluxgate_django.recording.get_recorder().send_pending(timeout=5)

    assert len(task.sent) == 1  # one task for the batch, not one per event
    (payload,), options = task.sent[0]
    records = celery_recorder.payload_records(json.loads(json.dumps(payload)))  # via a broker
    assert [r.tracking_id for r in records] == ids
    assert {(r.feature, r.team) for r in records} == {("batched", "no-such-team")}
    assert options["retry_policy"] == celery_recorder.PUBLISH_RETRY_POLICY
    assert Event.objects.count() == 0  # the worker writes them, not the recorder


@needs_shared_db
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "dicts-of-an-earlier-version"])
def test_the_task_writes_a_batch_once_and_settles_its_budget_once(django_user_model, packed):
    from fluxgate_django.budgets import check_budget
    from fluxgate_django.context import TrackingContext
    from fluxgate_django.models import to_units
    from fluxgate_django.tasks import record_events

    team = Team.objects.create(name="Search", slug="search")
    budget = Budget.objects.create(team=team, period="day", limit_usd=Decimal("10"))
    records = []
    for _ in range(3):
        guard = check_budget(
            TrackingContext(team="search"),
            "openai",
            "gpt-4o",
            input_tokens=14,
            max_output_tokens=50,
        )
        records.append(make_record(team="search", budget_reservation=guard.as_record_field()))
    payload = pack_records(records) if packed else [r.to_json() for r in records]

    assert record_events.run(payload) == 3
    assert record_events.run(payload) == 3  # redelivered: nothing new, nothing settled twice

    assert Event.objects.count() == 3
    counter = SpendCounter.objects.get(budget=budget)
    assert counter.spent_units == sum(to_units(r.cost_usd) for r in records)
    assert counter.reserved_units == 0


@needs_shared_db
def test_the_task_retries_while_the_database_is_unreachable(monkeypatch, spool_dir):
    from django.db import OperationalError

    from fluxgate_django.tasks import record_events

    payload = [make_record().to_json()]
    # autoretry_for: the batch stays in the broker and is retried (not spooled on the
    # worker's disk, which may be gone by the time the database is back).
    assert issubclass(OperationalError, record_events.autoretry_for)
    assert record_events.acks_late and record_events.reject_on_worker_lost
    assert record_events.ignore_result  # no result-backend write per batch
    with database_refused(monkeypatch), pytest.raises(OperationalError):
        record_events.run(payload)
    assert not list(spool_dir.glob("*.jsonl"))


@needs_shared_db
@pytest.mark.parametrize("database", ["up", "down"])
def test_broker_down_writes_directly_or_spools(
    openai, fake, monkeypatch, caplog, database, spool_dir
):
    task = FakeTask(fail=ConnectionRefusedError(111, "Connection refused"))
    with fluxgate_overrides(**CELERY, CELERY_APP=fake_app(task)):
        ids = {
            openai.chat.completions.create(model="gpt-4o-mini", messages=MSGS).fluxgate.tracking_id
            for _ in range(5)
        }
        if database == "down":
            with database_refused(monkeypatch):
                assert fluxgate_django.flush(timeout=5)
                spooled = [json.loads(line) for f in spool_dir.glob("*.jsonl") for line in
                           f.read_text().splitlines()]  # fmt: skip
            assert {uuid.UUID(item["tracking_id"]) for item in spooled} == ids
            assert Event.objects.count() == 0
            # The database is back: the next flush (here) replays the spool.
            assert fluxgate_django.flush(timeout=5)
        else:
            assert fluxgate_django.flush(timeout=5)

    assert any("could not send 5 events to the broker" in r.getMessage() for r in caplog.records)
    assert set(Event.objects.values_list("tracking_id", flat=True)) == ids
    assert not list(spool_dir.glob("*.jsonl"))


def test_the_site_app_is_found_from_the_writer_thread(monkeypatch):
    """Celery's current app is per thread: the writer thread must not get Celery's
    unconfigured fallback app (which would publish to amqp://localhost)."""
    from celery import Celery, _state

    monkeypatch.setattr(_state, "_apps", weakref.WeakSet())
    monkeypatch.setattr(_state, "default_app", None)
    site = Celery("site", broker="memory://", set_as_current=False)
    try:
        found: list[Any] = []
        thread = threading.Thread(target=lambda: found.append(celery_recorder.site_celery_app()))
        thread.start()
        thread.join()
        assert found == [site]
        with fluxgate_overrides(CELERY_APP="tests.celery_app.app"):
            from tests.celery_app import app

            assert celery_recorder.site_celery_app() is app
    finally:
        site.close()


@needs_shared_db
def test_without_a_celery_app_batches_are_written_not_sent_to_a_default_broker(
    openai, fake, monkeypatch, caplog
):
    from celery import _state

    monkeypatch.setattr(_state, "_apps", weakref.WeakSet())
    monkeypatch.setattr(_state, "default_app", None)
    monkeypatch.setattr(_state._tls, "current_app", None)
    with fluxgate_overrides(**CELERY):
        ids = {
            openai.chat.completions.create(model="gpt-4o-mini", messages=MSGS).fluxgate.tracking_id
            for _ in range(3)
        }
        assert fluxgate_django.flush(timeout=5)

    assert set(Event.objects.values_list("tracking_id", flat=True)) == ids
    assert any("no configured Celery app" in r.getMessage() for r in caplog.records)


@needs_shared_db
def test_the_task_retries_on_psycopgs_own_errors_and_keeps_a_bug_in_the_spool(
    monkeypatch, spool_dir
):
    """``COPY`` raises psycopg's errors as they are (no Django ``DatabaseError``): the task
    must retry them too, not fail and be acknowledged. A bug is no database error: the
    batch is kept in the worker's spool before the task fails."""
    import psycopg

    from fluxgate_django import tasks

    records = [make_record() for _ in range(3)]
    assert psycopg.Error in tasks.record_events.autoretry_for
    assert tasks.record_events.acks_on_timeout is False  # a killed batch goes back

    def cut(records, **kwargs):
        assert kwargs["spool_on_error"] is False
        raise psycopg.OperationalError("consuming input failed: server closed the connection")

    monkeypatch.setattr(tasks, "write_events", cut)
    with pytest.raises(psycopg.OperationalError):
        tasks.record_events.run(pack_records(records))
    assert not list(spool_dir.glob("*.jsonl"))  # it waits in the broker, retried

    def bug(records, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(tasks, "write_events", bug)
    with pytest.raises(RuntimeError):
        tasks.record_events.run(pack_records(records))
    spooled = [json.loads(line)["tracking_id"] for f in spool_dir.glob("*.jsonl")
               for line in f.read_text().splitlines()]  # fmt: skip
    assert spooled == [str(r.tracking_id) for r in records]


def test_uuid_user_keys_travel_in_the_payload(monkeypatch):
    """A UUID primary key (a custom user model) can't go into JSON as it is: it travels
    as text and is a UUID again in the worker; int keys stay ints."""
    from django.db import models

    uuid_pk = uuid.uuid4()
    records = [make_record(user={"id": "u", "pk": uuid_pk}), make_record(), make_record()]
    records[2] = __import__("dataclasses").replace(records[2], user_pk=7)
    payload = celery_recorder.pack_payload(records)
    wire = json.loads(json.dumps(payload))  # through the broker's serializer

    uuid_users = types.SimpleNamespace(_meta=types.SimpleNamespace(pk=models.UUIDField()))
    monkeypatch.setattr("django.contrib.auth.get_user_model", lambda: uuid_users)
    back = celery_recorder.payload_records(wire)
    assert [r.user_pk for r in back] == [uuid_pk, None, 7]
    assert [r.tracking_id for r in back] == [r.tracking_id for r in records]
    legacy = celery_recorder.payload_records([r.to_json() for r in records])  # older payloads
    assert legacy[0].user_pk == uuid_pk


# -- the worker settings FluxGate ships, and the check of a site's -----------------------------


def test_shipped_settings_match_the_visibility_timeout_to_the_time_limit():
    from fluxgate_django.celery_support import (
        RETRY_BACKOFF_MAX,
        celery_settings,
        visibility_timeout_for,
    )
    from fluxgate_django.tasks import record_events

    conf = celery_settings(broker_url="redis://127.0.0.1:6379/0")
    limit = conf["task_annotations"]["fluxgate.record_events"]["time_limit"]
    assert limit == record_events.time_limit
    assert (conf["task_acks_late"], conf["task_reject_on_worker_lost"]) == (True, True)
    assert conf["worker_prefetch_multiplier"] == 1
    options = conf["broker_transport_options"]
    # Longer than a live worker holds a batch (a retry's wait, then a run to the time
    # limit), and far below Redis' default hour; the sweep that restores runs every second.
    assert limit + RETRY_BACKOFF_MAX < options["visibility_timeout"] <= 30
    assert options["visibility_timeout"] == visibility_timeout_for(limit)
    assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] == 1
    assert record_events.retry_backoff_max == RETRY_BACKOFF_MAX

    slow = celery_settings(time_limit=60, broker_url="rediss://cache:6380/1")
    assert slow["broker_transport_options"]["visibility_timeout"] == visibility_timeout_for(60)
    rabbit = celery_settings(broker_url="amqp://guest@rabbit//", namespace="CELERY")
    assert rabbit["CELERY_BROKER_TRANSPORT_OPTIONS"] == {"confirm_publish": True}
    assert rabbit["CELERY_TASK_ACKS_LATE"] is True


def test_configure_celery_merges_into_the_sites_own_settings():
    from celery import Celery

    from fluxgate_django.celery_support import configure_celery, visibility_timeout_for

    app = Celery("site", set_as_current=False)
    try:
        app.conf.update(
            broker_url="sentinel://10.0.0.1:26379",
            broker_transport_options={"master_name": "mymaster", "visibility_timeout": 3600},
            task_annotations={"fluxgate.record_events": {"rate_limit": "10/s"}, "*": {"x": 1}},
        )
        configure_celery(app, time_limit=12)
        import fluxgate_django.tasks  # noqa: F401  (registers the shared tasks)

        assert app.conf.broker_transport_options["master_name"] == "mymaster"  # kept
        assert app.conf.broker_transport_options["visibility_timeout"] == (
            visibility_timeout_for(12)
        )
        assert app.conf.task_annotations["*"] == {"x": 1}
        task = app.tasks["fluxgate.record_events"]
        assert (task.time_limit, task.rate_limit, task.acks_late) == (12.0, "10/s", True)
    finally:
        app.close()


def celery_messages(monkeypatch: Any, **conf: Any) -> list[Any]:
    """The fluxgate.W00x messages for a site whose Celery app has ``conf``."""
    from celery import Celery
    from django.core.checks import run_checks

    app = Celery("site", set_as_current=False)
    app.conf.update(conf)
    try:
        with fluxgate_overrides(RECORDER="celery", CELERY_APP=app):
            return [m for m in run_checks() if m.id in ("fluxgate.W002", "fluxgate.W003")]
    finally:
        app.close()


def test_the_check_warns_when_a_killed_workers_batch_would_wait_for_long(monkeypatch):
    from fluxgate_django.celery_support import celery_settings

    redis = "redis://127.0.0.1:6379/0"
    (default,) = celery_messages(monkeypatch, broker_url=redis)
    assert default.id == "fluxgate.W002"
    assert "3700 s" in default.msg and "default, 1 hour" in default.msg
    assert "configure_celery" in default.hint
    (long,) = celery_messages(
        monkeypatch, broker_url=redis, broker_transport_options={"visibility_timeout": 600}
    )
    assert "700 s" in long.msg
    assert celery_messages(monkeypatch, **celery_settings(broker_url=redis)) == []
    assert celery_messages(monkeypatch, broker_url="amqp://guest@127.0.0.1//") == []

    (off,) = celery_messages(
        monkeypatch,
        **{
            **celery_settings(broker_url=redis),
            "task_annotations": {"fluxgate.record_events": {"acks_late": False}},
        },
    )
    assert off.id == "fluxgate.W003" and "acks_late" in off.msg
    with fluxgate_overrides(RECORDER="thread"):
        from django.core.checks import run_checks

        assert not [m for m in run_checks() if m.id in ("fluxgate.W002", "fluxgate.W003")]


# -- periodic tasks ----------------------------------------------------------------------------


def test_beat_schedule_names_registered_tasks():
    from celery import Celery

    import fluxgate_django.tasks  # noqa: F401

    app = Celery("beat-check", set_as_current=False)
    try:
        schedule = beat_schedule(retention=dt.timedelta(hours=1))
        assert {entry["task"] for entry in schedule.values()} == {
            "fluxgate.replay_spool",
            "fluxgate.check_budgets",
            "fluxgate.apply_retention",
        }
        assert all(entry["task"] in app.tasks for entry in schedule.values())
        assert schedule["fluxgate-retention"]["schedule"] == dt.timedelta(hours=1)
    finally:
        app.close()


@pytest.mark.django_db
def test_retention_deletes_old_events_in_batches_and_keeps_rollups():
    from fluxgate_django.models import UsageRollup
    from fluxgate_django.tasks import apply_retention

    old = timezone.now() - dt.timedelta(days=40)
    records = [make_record(feature="old") for _ in range(5)] + [make_record(feature="new")]
    for r in records[:5]:
        r.created_at = old
    base.write_events(records)
    rollups_before = list(UsageRollup.objects.order_by("day").values_list("day", "requests"))

    assert apply_retention.run(batch_size=2) == 0  # RETENTION_DAYS None: keep everything
    with fluxgate_overrides(RETENTION_DAYS=30):
        assert apply_retention.run(batch_size=2) == 5

    assert list(Event.objects.values_list("feature", flat=True)) == ["new"]
    assert list(UsageRollup.objects.order_by("day").values_list("day", "requests")) == (
        rollups_before
    )


@pytest.mark.django_db
def test_check_budgets_raises_alerts_a_lowered_limit_has_reached(django_user_model):
    from fluxgate_django.budgets import window_start
    from fluxgate_django.models import BudgetAlert, to_units
    from fluxgate_django.tasks import check_budgets

    team = Team.objects.create(name="Search", slug="search")
    budget = Budget.objects.create(team=team, period="month", limit_usd=Decimal("10"))
    SpendCounter.objects.create(
        budget=budget,
        window_start=window_start("month"),
        limit_units=to_units(Decimal("10")),
        blocking=True,
        spent_units=to_units(Decimal("9")),
    )
    assert check_budgets.run() == 1
    assert BudgetAlert.objects.filter(budget=budget).count() == 1  # 90% >= the 80% threshold
    assert check_budgets.run() == 1
    assert BudgetAlert.objects.filter(budget=budget).count() == 1  # once per window


def test_context_header_round_trip(django_user_model):
    user = types.SimpleNamespace(pk=7, email="ann@example.com", _meta=object())
    team = types.SimpleNamespace(slug="search", pk=3)
    ctx = EMPTY_CONTEXT.merge(
        feature="chat",
        user=user,
        team=team,
        request_id="r-1",
        openrouter_cost="0.5",
        metadata={"a": 1},
        tags=["x"],
    )
    header = context_to_header(ctx)
    assert header == {
        "feature": "chat",
        "user": {"id": "7", "pk": 7, "email": "ann@example.com"},
        "team": "search",
        "request_id": "r-1",
        "openrouter_cost": "0.5",
        "metadata": {"a": 1},
        "tags": ["x"],
    }
    back = context_from_header(header)
    assert (back.feature, back.team, back.request_id, back.tags) == (
        "chat",
        "search",
        "r-1",
        ("x",),
    )
    assert back.openrouter_cost == Decimal("0.5")


def test_a_uuid_user_key_in_the_context_header_is_plain_json(monkeypatch):
    """Task headers must be encodable by every transport (RabbitMQ's AMQP headers take no
    UUID): a UUID user key goes as text and is a UUID again in the worker."""
    from django.db import models

    pk = uuid.uuid4()
    user = types.SimpleNamespace(pk=pk, email="ann@example.com", _meta=object())
    uuid_users = types.SimpleNamespace(_meta=types.SimpleNamespace(pk=models.UUIDField()))
    for value in (user, {"id": str(pk), "pk": pk, "email": "ann@example.com"}):
        header = context_to_header(EMPTY_CONTEXT.merge(user=value, feature="f"))
        assert json.loads(json.dumps(header))["user"]["pk"] == str(pk)  # strict JSON
        with monkeypatch.context() as m:
            m.setattr("django.contrib.auth.get_user_model", lambda: uuid_users)
            assert context_from_header(json.loads(json.dumps(header))).user["pk"] == pk


# -- a real worker -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker(django_db_setup, fake_provider, tmp_path_factory):
    """One worker (prefork, one process, so that a context leaking from one task into the
    next would show) on a queue of its own, and an app to enqueue on it."""
    services.require_services()
    queue = new_queue()
    services.purge(queue)
    logs = tmp_path_factory.mktemp("celery-logs")
    app = make_app(queue)
    proc = Worker(
        queue,
        {
            "FLUXGATE_TEST_DATABASE_URL": services.database_url(),
            "FLUXGATE_TEST_BROKER_URL": services.REDIS_URL,
            "FAKE_OPENAI_URL": fake_provider.openai_base_url,
            "FLUXGATE_TEST_SPOOL_DIR": str(tmp_path_factory.mktemp("worker-spool")),
        },
        logs,
        concurrency=1,
    )
    try:
        proc.wait_ready(app)
        yield types.SimpleNamespace(app=app, proc=proc, queue=queue)
    finally:
        proc.stop()
        services.purge(queue)
        services.close_app(app)


def run_task(worker: Any, **kwargs: Any) -> dict[str, Any]:
    result = worker.app.send_task("tests.ask_llm", kwargs=kwargs)
    try:
        return result.get(timeout=30)
    except Exception as exc:
        raise AssertionError(f"{exc!r}\n{worker.proc.log()}") from exc


def stored(worker: Any, tracking_id: str) -> Event:
    assert wait_until(lambda: Event.objects.filter(tracking_id=tracking_id).exists(), 20), (
        worker.proc.log()
    )
    return Event.objects.select_related("team", "user").get(tracking_id=tracking_id)


@pytest.fixture
def member(transactional_db, request):
    user = get_user_model().objects.create_user("ann", "ann@example.com", "pw")
    # A slug of its own per test: the worker caches slugs for a minute, and a team
    # re-created under an old slug (here, after the previous test's flush) gets a new id.
    slug = f"search-{request.node.name[-20:]}".lower()
    team = Team.objects.create(name="Search", slug=slug)
    TeamMembership.objects.create(user=user, team=team, role="member")
    return user


def test_a_task_inherits_the_enqueuers_context_and_can_override_it(worker, fake, member):
    user = {"id": str(member.pk), "pk": member.pk, "email": member.email}
    slug = Team.objects.get().slug
    with tracking_context(
        feature="digest", user=user, team=slug, request_id="req-42", metadata={"k": "v"}
    ):
        inherited = run_task(worker)
        overridden = run_task(worker, feature="digest-task")
    plain = run_task(worker)  # enqueued outside any context, by the same worker process

    assert inherited["content"] == DEFAULT_TEXT and inherited["status"] == "SUCCESS"
    assert inherited["context"]["request_id"] == "req-42"
    event = stored(worker, inherited["tracking_id"])
    assert (event.feature, event.user, event.team.slug, event.request_id) == (
        "digest",
        member,
        slug,
        "req-42",
    )
    assert (event.end_user_id, event.end_user_email, event.metadata) == (
        str(member.pk),
        "ann@example.com",
        {"k": "v"},
    )
    event = stored(worker, overridden["tracking_id"])
    assert (event.feature, event.user, event.request_id) == ("digest-task", member, "req-42")
    assert event.team.slug == slug

    assert plain["context"] == {
        "feature": None,
        "user": None,
        "team": None,
        "request_id": None,
        "session_id": None,
        "metadata": {},
    }
    event = stored(worker, plain["tracking_id"])
    assert (event.feature, event.user, event.team, event.request_id) == ("", None, None, "")


def test_a_request_context_flows_into_the_task_it_enqueues(worker, fake, member, client):
    from celery import _state

    from fluxgate_django.middleware import session_fingerprint

    client.force_login(member)
    previous = _state._tls.current_app
    worker.app.set_current()  # what the view's shared_task.delay() publishes with
    try:
        response = client.get("/celery/enqueue/", headers={"X-Request-ID": "req-http-1"})
    finally:
        _state._set_current_app(previous)
    assert response.status_code == 200, response.content
    body = response.json()
    result = worker.app.AsyncResult(body["task_id"]).get(timeout=30)

    event = stored(worker, result["tracking_id"])
    assert (event.feature, event.user, event.team.slug, event.request_id) == (
        "enqueue_llm_task",
        member,
        Team.objects.get().slug,
        "req-http-1",
    )
    assert event.session_id == session_fingerprint(client.session.session_key)
    assert result["context"]["request_id"] == "req-http-1"


def test_the_testproject_celery_app_is_configured_from_its_settings():
    """``celery -A testproject worker``: broker from REDIS_URL, FluxGate's tasks and beat
    schedule, and the app the Celery recorder publishes with."""
    root = Path(__file__).resolve().parent.parent
    script = (
        "import json, threading, django; django.setup();"
        "from testproject import celery_app as app;"
        "from fluxgate_django.recording.celery import site_celery_app;"
        "app.loader.import_default_modules();"
        "found = [];"
        "t = threading.Thread(target=lambda: found.append(site_celery_app() is app));"
        "t.start(); t.join();"
        "print(json.dumps({'broker': app.conf.broker_url,"
        " 'visibility': app.conf.broker_transport_options.get('visibility_timeout'),"
        " 'beat': sorted(e['task'] for e in app.conf.beat_schedule.values()),"
        " 'tasks': sorted(t for t in app.tasks if t.startswith('fluxgate.')),"
        " 'recorder_app': found[0]}))"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "REDIS_URL": "redis://cache.invalid:6379/3",
        "PYTHONPATH": os.pathsep.join([str(root / "testproject"), str(root)]),
    }
    env.pop("DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    conf = json.loads(result.stdout.strip().splitlines()[-1])
    assert conf["broker"] == "redis://cache.invalid:6379/3"
    assert conf["visibility"] == visibility_timeout_for(RECORD_EVENTS_TIME_LIMIT)  # shipped
    assert conf["beat"] == [
        "fluxgate.apply_retention",
        "fluxgate.check_budgets",
        "fluxgate.replay_spool",
    ]
    assert "fluxgate.record_events" in conf["tasks"]
    assert conf["recorder_app"] is True


def test_without_a_celery_app_the_check_reads_the_django_settings(monkeypatch):
    from django.core.checks import run_checks
    from django.test import override_settings

    def no_app() -> None:
        raise ImportError("no such app")

    monkeypatch.setattr("fluxgate_django.checks_celery.site_celery_app", no_app)
    redis = {"CELERY_BROKER_URL": "redis://127.0.0.1:6379/0"}
    with fluxgate_overrides(RECORDER="celery"):
        with override_settings(**redis):
            assert [m.id for m in run_checks() if m.id == "fluxgate.W002"] == ["fluxgate.W002"]
        options = {"visibility_timeout": 17, "unacked_restore_interval": 1}
        with override_settings(**redis, CELERY_BROKER_TRANSPORT_OPTIONS=options):
            assert not [m for m in run_checks() if m.id == "fluxgate.W002"]  # 17 + 10 s


@pytest.fixture
def uuid_users_database(django_db_setup):
    """A database of its own, migrated with a UUID-pk user model (tests/uuid_users); the
    suite's own keeps Django's user model."""
    services.require_services()
    import psycopg

    base, _, name = services.database_url().rpartition("/")
    name = f"{name}_uuid_users"[:63]
    admin = psycopg.connect(f"{base}/postgres", autocommit=True)
    try:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{base}/{name}"
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


def test_a_uuid_pk_users_events_are_stored_through_a_worker(
    uuid_users_database, fake_provider, tmp_path
):
    """A site whose user model has a UUID primary key, recording through Celery: the
    logged-in user's events are stored with their user (they were all dropped: a UUID
    can't go into the task's JSON)."""
    root = Path(__file__).resolve().parent.parent
    queue = new_queue()
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.settings_celery_uuid",
        "FLUXGATE_TEST_DATABASE_URL": uuid_users_database,
        "FLUXGATE_TEST_BROKER_URL": services.REDIS_URL,
        "FAKE_OPENAI_URL": fake_provider.openai_base_url,
        "FLUXGATE_TEST_SPOOL_DIR": str(tmp_path / "spool"),
    }
    site_env = {**os.environ, **env, "FLUXGATE_TEST_QUEUE": queue, "PYTHONPATH": str(root)}
    migrate = subprocess.run(
        [sys.executable, "-m", "django", "migrate", "-v0"],
        cwd=root, env=site_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr
    app = make_app(queue)
    worker = Worker(queue, env, tmp_path, concurrency=1)
    try:
        worker.wait_ready(app)
        site = subprocess.run(
            [sys.executable, "-m", "tests.uuid_users.drive"],
            cwd=root, env=site_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert site.returncode == 0, f"{site.stderr}\n{worker.log()}"
        out = json.loads(site.stdout.strip().splitlines()[-1])
        assert set(out["stored"]) == set(out["sent"]), worker.log()
        assert set(out["stored"].values()) == {out["user"]}  # each with its UUID user
        uuid.UUID(out["user"])
    finally:
        worker.stop()
        services.purge(queue)
        services.close_app(app)
