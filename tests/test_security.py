"""Security review, as tests: secrets at rest, secrets and prompts in logs/events/errors,
CSRF on session writes, admin access per team, and raw SQL only where audited.

Complements the API permission matrix (tests/test_api_permissions.py), the key tests of
tests/test_api_resources.py and tests/test_admin.py, and the error redaction of
tests/test_api_events.py.
"""

from __future__ import annotations

import ast
import hmac
import io
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.middleware.csrf import _get_new_csrf_string
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import URLPattern, URLResolver, get_resolver

from fluxgate_django import BudgetExceeded, track_anthropic, track_openai, tracking_context
from fluxgate_django import budgets as budgets_module
from fluxgate_django.models import ApiKey, Budget, Event, Team, hash_secret
from fluxgate_django.testing import FakeReply
from tests.api_helpers import API, make_budget, make_world, patch_json, post_json
from tests.helpers import fluxgate_overrides, parse_source

ROOT = Path(__file__).resolve().parent.parent

OPENAI_KEY = "sk-proj-SECRET0openai0key0a1b2c3d4e5f6"
ANTHROPIC_KEY = "sk-ant-api03-SECRET0anthropic0key0a1b2c3"
PROMPT = "CANARY-PROMPT-7f3a9c: summarise the merger memo"
COMPLETION = "CANARY-COMPLETION-e41b0d"
KEYS = (OPENAI_KEY, ANTHROPIC_KEY)


MESSAGES = [{"role": "user", "content": PROMPT}]


def tracked_openai(fake: Any) -> Any:
    import openai

    return track_openai(
        openai.OpenAI(api_key=OPENAI_KEY, base_url=fake.openai_base_url, max_retries=0)
    )


def every_stored_value() -> str:
    """Every column of every row of every table of the installed apps, as text."""
    parts = []
    for model in apps.get_models(include_auto_created=True):
        for row in model._default_manager.values_list():
            parts.append(repr(row))
    return "\n".join(parts)


# -- API keys at rest ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_api_key_secrets_are_stored_nowhere(admin_client):
    w = make_world()
    admin_a = w.client("admin_a")
    created = post_json(admin_a, f"{API}api-keys/", {"team": "a", "name": "deploy"}).json()
    response = admin_client.post(
        "/admin/fluxgate_django/apikey/add/", {"team": w.team_a.pk, "name": "from-admin"}
    )
    assert response.status_code == 302
    secrets = [w.secret_a, w.secret_b, created["secret"]]
    keys = list(ApiKey.objects.all())
    assert len(keys) == 4
    tails = [s.split("_", 3)[3] for s in secrets]  # the random part, after the prefix

    stored = every_stored_value()
    dump = io.StringIO()
    call_command("dumpdata", stdout=dump)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {connection.ops.quote_name(ApiKey._meta.db_table)}")
        raw = repr(cursor.fetchall())
    for text in (stored, dump.getvalue(), raw):
        assert not [s for s in secrets + tails if s in text]
    for key, secret in zip(keys[:3], secrets, strict=False):
        assert key.hashed_key == hash_secret(secret)


@pytest.mark.django_db
def test_api_keys_are_compared_in_constant_time(monkeypatch):
    team = Team.objects.create(name="A", slug="a")
    key, secret = ApiKey.objects.create_key(team=team, name="ci")
    calls = []
    real = hmac.compare_digest

    def compare_digest(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("fluxgate_django.models.teams.hmac.compare_digest", compare_digest)
    wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")

    with CaptureQueriesContext(connection) as queries:
        assert ApiKey.objects.get_from_secret(secret) == key
        assert ApiKey.objects.get_from_secret(wrong) is None

    # The hashes are compared by hmac.compare_digest, never by the database (an index
    # lookup on the hash would leak timing) nor by ==.
    assert calls == [(key.hashed_key, hash_secret(secret)), (key.hashed_key, hash_secret(wrong))]
    sql = " ".join(q["sql"] for q in queries.captured_queries)
    assert key.hashed_key not in sql and hash_secret(wrong) not in sql
    assert ApiKey.objects.get_from_secret("fg_live_nope") is None
    assert len(calls) == 2


# -- provider keys and prompts: never in logs, events or error messages ------------------------


@pytest.fixture
def debug_logs(caplog):
    """Every logger at DEBUG, the SDKs' and httpx's included."""
    caplog.set_level(logging.DEBUG)
    for name in ("fluxgate", "openai", "anthropic", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def log_text(records: list[logging.LogRecord]) -> str:
    return "\n".join(f"{r.name}: {r.getMessage()}\n{r.exc_text or ''}" for r in records)


@pytest.mark.django_db
def test_provider_keys_and_prompts_stay_out_of_logs_events_and_errors(fake, debug_logs):
    import anthropic
    import openai

    oa = track_openai(
        openai.OpenAI(api_key=OPENAI_KEY, base_url=fake.openai_base_url, max_retries=0)
    )
    an = track_anthropic(
        anthropic.Anthropic(api_key=ANTHROPIC_KEY, base_url=fake.anthropic_base_url, max_retries=0)
    )
    messages = [{"role": "user", "content": PROMPT}]
    errors = []
    with fluxgate_overrides(RAISE_ERRORS=False), tracking_context(feature="secret-test"):
        fake.enqueue(FakeReply(text=COMPLETION))
        oa.chat.completions.create(model="gpt-4o-mini", messages=messages)
        fake.enqueue(FakeReply(text=COMPLETION))
        for _ in oa.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True):
            pass
        fake.enqueue(FakeReply(text=COMPLETION))
        an.messages.create(model="claude-sonnet-4-6", max_tokens=50, messages=messages)
        # The provider refuses the key and echoes it (as OpenAI does, in part).
        fake.enqueue(FakeReply(status=401, error_message=f"Incorrect API key: {OPENAI_KEY}"))
        with pytest.raises(openai.AuthenticationError) as info:
            oa.chat.completions.create(model="gpt-4o-mini", messages=messages)
        errors.append(info.value)
        fake.enqueue(FakeReply(status=500, error_message="upstream failed"))
        with pytest.raises(anthropic.InternalServerError):
            an.messages.create(model="claude-sonnet-4-6", max_tokens=50, messages=messages)

    records = debug_logs.records
    ours = [r for r in records if r.name.startswith("fluxgate")]
    # Nothing FluxGate logs carries a key, a prompt or a completion ...
    assert not [s for s in (*KEYS, PROMPT, COMPLETION) if s in log_text(ours)]
    # ... and no logger at all (SDKs at DEBUG included) shows a key: headers are not logged.
    assert not [k for k in KEYS if k in log_text(records)]

    events = list(Event.objects.all())
    assert len(events) == 5
    stored = every_stored_value()
    assert not [s for s in (*KEYS, PROMPT, COMPLETION) if s in stored]  # STORE_CONTENT off
    failed = Event.objects.get(status="ERROR", provider="openai")
    assert failed.error_message.endswith("sk-***") and OPENAI_KEY not in failed.error_message
    # What the caller gets is the SDK's own exception, unchanged (its text is the
    # provider's); FluxGate adds nothing to it.
    assert type(errors[0]) is openai.AuthenticationError


@pytest.mark.django_db
def test_with_store_content_only_the_content_column_has_the_text(fake):
    import openai

    oa = track_openai(
        openai.OpenAI(api_key=OPENAI_KEY, base_url=fake.openai_base_url, max_retries=0)
    )
    with fluxgate_overrides(STORE_CONTENT=True):
        fake.enqueue(FakeReply(text=COMPLETION))
        oa.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}]
        )

    event = Event.objects.get()
    assert PROMPT in repr(event.content) and COMPLETION in repr(event.content)
    columns = {
        f.attname: getattr(event, f.attname)
        for f in Event._meta.concrete_fields
        if f.attname != "content"
    }
    assert not [name for name, value in columns.items() if PROMPT in str(value)]
    assert not [k for k in KEYS if k in every_stored_value()]


@pytest.mark.django_db
def test_budget_refusals_name_no_prompt_or_key(fake):
    import openai

    team = Team.objects.create(name="A", slug="a")
    Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.000001"))
    budgets_module.clear_cache()
    oa = track_openai(
        openai.OpenAI(api_key=OPENAI_KEY, base_url=fake.openai_base_url, max_retries=0)
    )
    with tracking_context(team="a"), pytest.raises(BudgetExceeded) as info:
        oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": PROMPT}])
    budgets_module.clear_cache()
    text = f"{info.value} {info.value!r}"
    assert PROMPT not in text and OPENAI_KEY not in text
    assert fake.request_count == 0


def test_fluxgate_leaves_the_sdk_loggers_alone(fake):
    """The SDKs log request bodies at DEBUG (their choice, off by default); FluxGate never
    turns that on: no logger levels or handlers set, no OPENAI_LOG / ANTHROPIC_LOG."""
    import openai

    names = ("", "openai", "anthropic", "httpx", "httpcore")

    def state() -> dict[str, Any]:
        loggers = {n: logging.getLogger(n) for n in names}
        return {n: (lg.level, list(lg.handlers)) for n, lg in loggers.items()}

    before = state()
    oa = track_openai(
        openai.OpenAI(api_key=OPENAI_KEY, base_url=fake.openai_base_url, max_retries=0)
    )
    with fluxgate_overrides(RAISE_ERRORS=False):
        oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert state() == before
    for package in ("fluxgate_django", "fluxgate_langchain"):
        for path in (ROOT / package).rglob("*.py"):
            source = path.read_text()
            for needle in (
                "OPENAI_LOG",
                "ANTHROPIC_LOG",
                "setLevel(",
                "basicConfig(",
                "addHandler(",
            ):
                assert needle not in source, (path, needle)


# -- CSRF on session-authenticated writes ------------------------------------------------------

WRITES = [
    ("post", "events/"),
    ("post", "teams/"),
    ("post", "budgets/"),
    ("put", "budgets/{budget}/"),
    ("patch", "budgets/{budget}/"),
    ("delete", "budgets/{budget}/"),
    ("post", "api-keys/"),
    ("post", "api-keys/{key}/revoke/"),
    ("post", "complete/"),
    ("put", "config/strategy/"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("method", "path"), WRITES, ids=[f"{m} {p}" for m, p in WRITES])
def test_every_session_write_needs_the_csrf_token(method, path):
    w = make_world()
    budget = make_budget(w.team_a)
    url = API + path.format(budget=budget.pk, key=w.key_a.pk)
    client = w.client("staff", enforce_csrf_checks=True)

    def send(**extra: Any) -> Any:
        if method == "post":
            return post_json(client, url, {}, **extra)
        if method in ("put", "patch"):
            return (
                patch_json(client, url, {}, **extra)
                if method == "patch"
                else client.put(url, "{}", content_type="application/json", **extra)
            )
        return client.delete(url, **extra)

    refused = send()
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]

    token = _get_new_csrf_string()
    client.cookies[settings.CSRF_COOKIE_NAME] = token
    accepted = send(headers={"X-CSRFToken": token})
    assert "CSRF" not in accepted.content.decode()


def _url_callbacks(patterns: list[Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for p in patterns:
        if isinstance(p, URLResolver):
            out += _url_callbacks(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            out.append((prefix + str(p.pattern), p.callback))
    return out


def test_no_fluxgate_view_skips_csrf_for_sessions():
    """Django views must not be csrf_exempt; DRF views (csrf_exempt at Django level) must
    authenticate sessions with DRF's SessionAuthentication, which enforces CSRF."""
    from rest_framework.authentication import BaseAuthentication, SessionAuthentication

    from fluxgate_django.api.authentication import ApiKeyAuthentication

    resolver = get_resolver("fluxgate_django.urls")
    views = _url_callbacks(resolver.url_patterns)
    assert len(views) > 10
    for route, callback in views:
        cls = getattr(callback, "cls", None)
        if cls is None:
            # (The gateway's views take a key header only, never a session: see below.)
            exempt = getattr(callback, "csrf_exempt", False)
            assert not exempt or getattr(callback, "fluxgate_key_only", False), route
            continue
        for auth in cls.authentication_classes:
            assert issubclass(auth, BaseAuthentication), route
            if issubclass(auth, SessionAuthentication):
                assert auth.enforce_csrf is SessionAuthentication.enforce_csrf, route
            elif auth is not ApiKeyAuthentication:  # a Bearer key: never sent by a browser
                # Anything else (DRF's default Basic auth on the router's root view) only
                # on read-only views: a browser may replay Basic credentials by itself.
                assert not _unsafe_methods(callback), (route, auth)


@pytest.mark.django_db
def test_the_gateway_ignores_a_signed_in_session(client, django_user_model):
    """The gateway is exempt from CSRF because a session cookie never authenticates it: a
    signed-in superuser's POST without a key is a 401, and no provider is asked."""
    user = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    for url, body in [
        ("/fluxgate/v1/chat/completions", {"model": "gpt-4o", "messages": []}),
        ("/fluxgate/anthropic/v1/messages", {"model": "claude-sonnet-4-6", "messages": []}),
    ]:
        response = client.post(url, body, content_type="application/json")
        assert response.status_code == 401, (url, response.content)


def _unsafe_methods(callback: Any) -> set[str]:
    handlers = getattr(callback, "actions", None) or {
        m: m for m in callback.cls.http_method_names if hasattr(callback.cls, m)
    }
    return {m for m in handlers if m in ("post", "put", "patch", "delete")}


# -- the admin, per team ------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_team_admin_without_model_permissions_sees_no_fluxgate_model_pages(
    django_user_model,
):
    team = Team.objects.create(name="A", slug="a")
    user = django_user_model.objects.create_user("lead", "lead@example.com", "pw", is_staff=True)
    from fluxgate_django.models import TeamMembership

    TeamMembership.objects.create(user=user, team=team, role="admin")
    client = Client()
    client.force_login(user)
    # (The cost report page is the one page for team admins: it shows their teams only,
    # see tests/test_reports_admin.py.)
    names = [
        m._meta.model_name
        for m in apps.get_app_config("fluxgate_django").get_models()
        if f"/admin/fluxgate_django/{m._meta.model_name}/" in _admin_urls()
        and m._meta.model_name != "costreport"
    ]
    assert {"event", "apikey", "budget", "team"} <= set(names)
    for name in names:
        response = client.get(f"/admin/fluxgate_django/{name}/")
        assert response.status_code == 403, name


def _admin_urls() -> set[str]:
    from django.contrib import admin

    return {
        f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        for model in admin.site._registry
    }


# -- raw SQL only in audited places ---------------------------------------------------------

#: Every call that hands SQL text to the database, with why it is safe. A new one fails
#: this test until it is audited and listed here.
AUDITED_SQL = {
    ("fluxgate_django/api/ingest.py", "stored_tracking_ids", "execute"): (
        "SELECT of the Event table's tracking_id column (quote_name of the model's own "
        "names) with one %s placeholder per id; the ids (validated UUIDs) are parameters"
    ),
    ("fluxgate_django/counters.py", "reserve", "execute"): (
        "table name from quote_name(Model._meta.db_table), fixed SQL (the MAX_SCALE "
        "constant is a float of this module); counter ids and units as %s placeholders; "
        "nothing from a request is formatted in"
    ),
    ("fluxgate_django/counters.py", "settle_counters", "executemany"): (
        "same: quoted table name, fixed assignments, values as placeholders"
    ),
    ("fluxgate_django/counters.py", "settle_counters", "execute"): (
        "PostgreSQL: quoted table name, fixed assignments, one fixed (%s, %s, %s) row of "
        "placeholders per counter in a VALUES list; the units and ids are parameters"
    ),
    ("fluxgate_django/counters.py", "settle_once", "execute"): (
        "PostgreSQL: quoted counter and token table names, fixed CTEs and assignments (the "
        "SCALE_DECAY constant is this module's float), one fixed row of typed %s "
        "placeholders per (tracking id, counter) in a VALUES list; every value a parameter"
    ),
    ("fluxgate_django/counters.py", "_in_ledger_thread", "execute"): (
        "fixed SET lock_timeout = %s; the value (this module's constant) is a parameter"
    ),
    ("fluxgate_django/counters.py", "_insert_tokens", "execute"): (
        "INSERT ... ON CONFLICT DO NOTHING into the quoted token table; the tracking id "
        "(a parsed UUID) and the time are parameters"
    ),
    ("fluxgate_django/counters.py", "_apply", "executemany"): (
        "UPDATE of the quoted counter table with fixed assignments (SCALE_DECAY constant); "
        "units, ratio and id as placeholders"
    ),
    ("fluxgate_django/recording/sql.py", "insert", "executemany"): (
        "INSERT built once from the Event model's own columns (quote_name), values as placeholders"
    ),
    ("fluxgate_django/recording/sql.py", "insert_new", "execute"): (
        "INSERT ... VALUES built from the Event model's columns (quote_name) and one "
        "fixed row of %s placeholders per row; the values are passed as parameters"
    ),
    ("fluxgate_django/recording/sql.py", "_copy_insert", "execute"): (
        "CREATE TEMPORARY TABLE / DELETE / INSERT ... SELECT built once from the Event "
        "model's columns and a fixed staging table name (quote_name); no values at all"
    ),
    ("fluxgate_django/recording/sql.py", "_copy_insert", "copy"): (
        "COPY of the staging table's fixed column list; the values go through psycopg's "
        "write_row, never into the SQL text"
    ),
    ("fluxgate_django/reports/rollup_batch.py", "save", "executemany"): (
        "rollup upsert built from model columns (quote_name), values as placeholders"
    ),
    ("fluxgate_django/reports/rollups.py", "save", "execute"): (
        "StagedEvents.save: CREATE TEMPORARY TABLE / DELETE / INSERT ... SELECT ... ON "
        "CONFLICT built once from the rollup models' columns and a fixed staging table "
        "name (quote_name), and the rebuild's own aggregate SELECT (an ORM queryset "
        "compiled once; its constant parameters bound by the driver's quoting, "
        "compose_sql)"
    ),
    ("fluxgate_django/reports/rollups.py", "rebuild_rollups", "execute"): (
        "LOCK/SET constants, and INSERT ... SELECT from an ORM queryset's "
        "sql_with_params() (its parameters passed separately) and quoted model columns; "
        "`since` is a date, passed as a placeholder"
    ),
}

#: Methods that take SQL text: any ``.execute()``/``.raw()``... counts (over-reporting
#: is harmless: it only asks for an audit), ``.copy()`` only on a cursor (COPY).
_SQL_METHODS = {"execute", "executemany", "executescript", "raw", "extra"}


def _sql_calls() -> set[tuple[str, str, str]]:
    found = set()
    for package in ("fluxgate_django", "fluxgate_langchain"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            rel = path.relative_to(ROOT).as_posix()
            tree = parse_source(path)
            for func in ast.walk(tree):
                if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(func):
                    if isinstance(node, ast.Call) and _is_sql_call(node):
                        found.add((rel, func.name, _name(node)))
                        _assert_not_formatted(node, rel)
    return found


def _name(call: ast.Call) -> str:
    return getattr(call.func, "attr", None) or getattr(call.func, "id", "")


def _is_sql_call(call: ast.Call) -> bool:
    name = _name(call)
    if name == "RawSQL":
        return True
    if not isinstance(call.func, ast.Attribute):
        return False
    return name in _SQL_METHODS or (name == "copy" and "cursor" in ast.unparse(call.func.value))


def _assert_not_formatted(call: ast.Call, where: str) -> None:
    """No ``%``-formatting or ``.format()`` of SQL: values go as parameters."""
    if not call.args:
        return
    sql = call.args[0]
    assert not (isinstance(sql, ast.BinOp) and isinstance(sql.op, ast.Mod)), where
    assert not (isinstance(sql, ast.Call) and getattr(sql.func, "attr", None) == "format"), where


def test_raw_sql_only_in_audited_places():
    found = _sql_calls()
    unaudited = found - AUDITED_SQL.keys()
    assert not unaudited, f"raw SQL to audit (and list in AUDITED_SQL with why): {unaudited}"
    assert AUDITED_SQL.keys() - found == set(), "AUDITED_SQL lists places that are gone"
