"""The demo command, and the test project's settings, checks and views."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import override_settings

from fluxgate_django.management.commands.fluxgate_demo import (
    SELF_HOSTED_MODEL,
    FeatureCost,
    format_cost_table,
)
from fluxgate_django.models import ApiKey, Event, Team
from fluxgate_django.testing import FakeReply

REPO = Path(__file__).resolve().parent.parent
TESTPROJECT = REPO / "testproject"
DEMO_FEATURES = {
    "chat",
    "summarize",
    "code-review",
    "translation",
    "embeddings-search",
    "ticket-triage",
}
# The thread recorder writes from its own thread: the demo must flush() before reporting.
THREAD_RECORDER = {"RECORDER": "thread", "RAISE_ERRORS": True}


def run_demo(**options) -> str:
    out = StringIO()
    call_command("fluxgate_demo", no_input=True, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
@override_settings(FLUXGATE=THREAD_RECORDER)
def test_demo_records_a_realistic_workload_and_prints_the_cost_table():
    output = run_demo(calls=20)

    # Only this run's events (another test's committed leftovers must not confuse this one).
    events = Event.objects.filter(metadata__has_key="demo_run", source="sdk")
    assert events.count() == 20
    assert len(set(events.values_list("metadata__demo_run", flat=True))) == 1
    assert set(events.values_list("feature", flat=True)) == DEMO_FEATURES
    assert {"openai", "anthropic"} <= set(events.values_list("provider", flat=True))

    priced = events.filter(status="SUCCESS").exclude(feature="ticket-triage")
    assert priced.exists()
    for event in priced:
        assert isinstance(event.cost_usd, Decimal) and event.cost_usd > 0, event
    unpriced = events.filter(feature="ticket-triage")
    assert unpriced.exists()
    assert all(e.cost_usd is None and e.cost_source == "unknown" for e in unpriced)
    assert set(unpriced.values_list("model", flat=True)) == {SELF_HOSTED_MODEL}

    errors = events.filter(status="ERROR")
    assert errors.count() == 3
    assert {e.error_type for e in errors} <= {"InternalServerError", "RateLimitError"}
    assert events.filter(streamed=True).exists()
    assert events.filter(cache_read_tokens__gt=0).exists()
    assert events.filter(reasoning_tokens__gt=0).exists()
    assert events.filter(user__username="alice").exists()
    assert events.exclude(end_user_id="").exists()

    for feature in DEMO_FEATURES:
        assert feature in output
    triage_row = next(line for line in output.splitlines() if line.startswith("ticket-triage"))
    assert "unpriced" in triage_row and "$" not in triage_row
    assert "20 LLM calls made (3 provider errors caught)" in output
    assert "Admin login: admin / admin" in output

    # Seed 000 through LLMService: four routed tasks on four providers, a fallback, an A/B.
    routed = Event.objects.filter(metadata__has_key="demo_run", source="service")
    providers = {
        feature: set(
            routed.filter(feature=feature, status="SUCCESS").values_list("provider", flat=True)
        )
        for feature in ("summarize", "code-review", "chat", "translation")
    }
    assert providers["code-review"] == {"anthropic"}
    assert providers["translation"] == {"openrouter"}
    assert providers["chat"] <= {"gemini", "openai"} and providers["chat"]
    assert "openai" in providers["summarize"]
    fallback = routed.get(fallback_attempt=1)
    assert (fallback.feature, fallback.provider, fallback.status) == (
        "summarize",
        "anthropic",
        "SUCCESS",
    )
    assert routed.filter(feature="summarize", status="ERROR", fallback_attempt=0).count() == 1
    assert routed.filter(feature="ab-test-gpt").exists()
    assert routed.filter(feature="ab-test-claude").exists()
    assert "through LLMService routes" in output

    # Through the site's own gateway with the stock SDKs and a key of team search: a call,
    # a stream, and a streamed route whose OpenAI model is down (503) and whose Claude
    # model serves it (translated back to OpenAI chunks).
    gateway = Event.objects.filter(metadata__has_key="demo_run", source="gateway")
    assert [
        (e.metadata["demo_call"], e.provider, e.model, e.streamed, e.status, e.fallback_attempt)
        for e in gateway.order_by("metadata__demo_call", "fallback_attempt")
    ] == [
        (0, "openai", "gpt-4o-mini", False, "SUCCESS", 0),
        (1, "anthropic", "claude-haiku-4-5", True, "SUCCESS", 0),
        (2, "openai", "gpt-4.1-mini", True, "ERROR", 0),
        (2, "anthropic", "claude-haiku-4-5", True, "SUCCESS", 1),
    ]
    key = ApiKey.objects.get(name="demo gateway")
    assert key.team.slug == "search" and key.revoked_at is not None  # (no usable key left)
    assert {(e.team.slug, e.feature, e.metadata["api_key"]) for e in gateway} == {
        ("search", "gateway", key.prefix)
    }
    assert gateway.get(metadata__demo_call=2, status="SUCCESS").metadata["gateway_model"] == (
        "route:faq"
    )
    lines = output.splitlines()
    title = next(i for i, line in enumerate(lines) if line.startswith("Through the gateway"))
    assert re.match(r"Through the gateway at http://127\.0\.0\.1:\d+/fluxgate/ ", lines[title])
    assert f"team search's key {key.prefix}" in lines[title]
    rows = [line.split() for line in lines[title + 3 : title + 6]]
    served_calls = gateway.filter(status="SUCCESS").order_by("metadata__demo_call")
    for row, served in zip(rows, served_calls, strict=True):
        assert served.cost_usd is not None and served.cost_usd > 0
        assert row[3:5] == [
            f"{served.provider}/{served.model}",
            f"${served.cost_usd.quantize(Decimal('0.000001'))}",
        ]
    assert rows[2][:3] == ["openai", "route:faq", "yes"]
    assert lines[title + 5].endswith("(fell back from openai/gpt-4.1-mini: 503)")
    gateway_row = next(line for line in lines if line.startswith("gateway "))
    assert gateway_row.split()[1:3] == ["4", "1"]  # (in the cost table: 4 attempts, 1 failed)


@pytest.mark.django_db(transaction=True)
@override_settings(FLUXGATE=THREAD_RECORDER)
def test_demo_is_rerunnable_and_never_resets_the_admin_password():
    User = get_user_model()
    User.objects.create_superuser("admin", "admin@example.com", "s3cret-pass")
    run_demo(calls=3)
    output = run_demo(calls=3)
    assert "admin (existing user, password unchanged)" in output
    assert User.objects.get(username="admin").check_password("s3cret-pass")
    assert set(Team.objects.values_list("slug", flat=True)) == {"search", "support", "growth"}
    assert Event.objects.filter(metadata__has_key="demo_run", source="sdk").count() == 6
    # Each run makes its own gateway key (an earlier run's is gone) and revokes it.
    (key,) = ApiKey.objects.filter(name="demo gateway")
    assert key.revoked_at is not None
    assert Event.objects.filter(source="gateway", metadata__api_key=key.prefix).count() == 4
    assert Event.objects.filter(source="gateway", status="SUCCESS").count() == 6


def test_cost_table_never_shows_unpriced_as_zero():
    rows = [
        FeatureCost("chat", 3, 1, 300, 30, Decimal("0.0123456789"), 0, 41.5),
        FeatureCost("mixed", 2, 0, 200, 20, Decimal("0.001"), 1, 10.0),
        FeatureCost("self-hosted", 2, 0, 200, 20, None, 2, None),
        FeatureCost("tiny", 1, 0, 10, 0, Decimal("0.0000002"), 0, 3.0),
    ]
    lines = format_cost_table(rows).splitlines()
    assert lines[0] == "Cost by feature"
    chat, mixed, hosted, tiny = lines[3:7]
    assert "$0.012346" in chat and chat.endswith("42")
    assert "$0.001000 + 1 unpriced" in mixed
    assert hosted.split()[-2:] == ["unpriced", "-"]
    assert "<$0.000001" in tiny  # priced, but less than the table shows: not "$0.000000"
    assert "$0.013346 + 3 unpriced" in lines[-1]


# -- the test project -------------------------------------------------------------------


def _testproject_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "FLUXGATE_FAKE_URL")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["DJANGO_SETTINGS_MODULE"] = "testproject.settings"
    env.update(extra)
    return env


def test_testproject_manage_py_check_passes():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--fail-level", "WARNING"],
        cwd=TESTPROJECT,
        env=_testproject_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_testproject_settings_follow_the_environment():
    script = (
        "import json, django; django.setup(); from django.conf import settings as s; "
        "print(json.dumps({'db': s.DATABASES['default']['ENGINE'], "
        "'cache': s.CACHES['default']['BACKEND'], 'broker': s.CELERY_BROKER_URL, "
        "'providers': s.FLUXGATE['PROVIDERS'], 'apps': s.INSTALLED_APPS, "
        "'middleware': s.MIDDLEWARE}))"
    )
    env = _testproject_env(
        DATABASE_URL="postgres://u:p@db.invalid:5432/fluxgate",
        REDIS_URL="redis://cache.invalid:6379/1",
        FLUXGATE_FAKE_URL="http://127.0.0.1:9/",
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=TESTPROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    conf = json.loads(result.stdout)
    assert conf["db"] == "django.db.backends.postgresql"
    assert conf["cache"] == "django.core.cache.backends.redis.RedisCache"
    assert conf["broker"] == "redis://cache.invalid:6379/1"
    assert conf["providers"]["openai"]["base_url"] == "http://127.0.0.1:9/v1"
    assert conf["providers"]["anthropic"]["base_url"] == "http://127.0.0.1:9"
    assert "fluxgate_django" in conf["apps"]
    assert "fluxgate_django.middleware.FluxGateContextMiddleware" in conf["middleware"]


@pytest.fixture
def testproject_urls(monkeypatch, fake):
    monkeypatch.syspath_prepend(str(TESTPROJECT))
    providers = {
        "openai": {"api_key": "sk-test", "base_url": fake.openai_base_url, "max_retries": 0},
        "anthropic": {"api_key": "sk-ant-test", "base_url": fake.anthropic_base_url},
    }
    fluxgate = {"RECORDER": "sync", "RAISE_ERRORS": True, "PROVIDERS": providers}
    with override_settings(ROOT_URLCONF="testproject.urls", FLUXGATE=fluxgate):
        yield


@pytest.mark.django_db
def test_testproject_demo_views_make_tracked_calls(client, fake, testproject_urls):
    fake.enqueue(FakeReply(text="Hi there", input_tokens=12, output_tokens=3))
    response = client.get("/chat/", {"q": "Hello"}, headers={"X-Request-ID": "req-1"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["reply"] == "Hi there"
    event = Event.objects.get(tracking_id=body["fluxgate"]["tracking_id"])
    assert (event.feature, event.request_id, event.provider) == ("chat", "req-1", "openai")
    assert Decimal(body["fluxgate"]["cost_usd"]) == event.cost_usd > 0

    response = client.get("/summarize/", {"text": "A long text."})
    assert response.status_code == 200, response.content
    event = Event.objects.get(tracking_id=response.json()["fluxgate"]["tracking_id"])
    assert (event.feature, event.step, event.provider) == ("summarize", "summary", "anthropic")


@pytest.mark.django_db
def test_testproject_view_reports_provider_errors(client, fake, testproject_urls):
    fake.enqueue(FakeReply(status=500))
    response = client.get("/chat/")
    assert response.status_code == 502
    assert "InternalServerError" in response.json()["error"]
    assert Event.objects.get().status == "ERROR"
