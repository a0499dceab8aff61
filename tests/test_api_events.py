"""``fluxgate/api/events/``: ingest (pricing, idempotency, all-or-nothing batches,
validation, throttling, budgets) and the filtered, paginated list."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone

from fluxgate_django.budgets import window_start
from fluxgate_django.models import ApiKey, Event
from fluxgate_django.records import EventRecord, Source
from tests.api_helpers import (
    API,
    event_payload,
    make_budget,
    make_event,
    make_world,
    post_json,
)
from tests.helpers import fluxgate_overrides

pytestmark = pytest.mark.django_db

EVENTS = f"{API}events/"


@pytest.fixture
def w():
    return make_world()


@pytest.fixture
def api(w):
    return w.client("key_a")


def test_an_event_without_cost_is_priced_by_the_server(api, w):
    tracking_id = str(uuid.uuid4())
    response = post_json(
        api,
        EVENTS,
        {
            "tracking_id": tracking_id,
            "provider": "openai",
            "model": "gpt-4o",
            "input_tokens": 1000,
            "cache_read_tokens": 200,
            "output_tokens": 500,
            "feature": "search",
        },
    )
    assert response.status_code == 202, response.json()
    body = response.json()
    assert (body["accepted"], body["duplicates"]) == (1, 0)
    # 800 uncached x $2.50 + 200 cached x $1.25 + 500 out x $10, per million tokens
    assert Decimal(body["events"][0]["cost_usd"]) == Decimal("0.00725")
    event = Event.objects.get(tracking_id=tracking_id)
    assert event.cost_usd == Decimal("0.00725")
    assert event.cost_saved_usd == Decimal("0.00025")  # 200 cached tokens x ($2.50 - $1.25)
    assert event.cost_source == body["events"][0]["cost_source"] != "client"
    assert (event.team, event.source, event.feature) == (w.team_a, "api", "search")
    assert event.status == "SUCCESS"


def test_a_given_cost_is_kept_and_unpriceable_events_are_not_priced(api):
    given, missing, failed, unknown = (str(uuid.uuid4()) for _ in range(4))
    events = [
        event_payload(tracking_id=given, cost_usd="0.5", cost_source="openrouter"),
        event_payload(tracking_id=missing, cost_source="usage-missing", usage_reported=False),
        event_payload(tracking_id=failed, status="ERROR", input_tokens=0, output_tokens=0),
        event_payload(tracking_id=unknown, model="no-such-model-xyz"),
    ]
    assert post_json(api, EVENTS, {"events": events}).status_code == 202
    stored = {str(e.tracking_id): e for e in Event.objects.all()}
    assert (stored[given].cost_usd, stored[given].cost_source) == (Decimal("0.5"), "openrouter")
    assert (stored[missing].cost_usd, stored[missing].cost_source) == (None, "usage-missing")
    assert (stored[failed].cost_usd, stored[failed].cost_source) == (None, "not-billed")
    assert (stored[unknown].cost_usd, stored[unknown].cost_source) == (None, "unknown")


def test_ingest_is_idempotent_by_tracking_id(api):
    event = event_payload()
    first = post_json(api, EVENTS, event).json()
    again = post_json(api, EVENTS, {"events": [event, event_payload()]}).json()
    assert (first["accepted"], first["duplicates"]) == (1, 0)
    assert (again["accepted"], again["duplicates"]) == (1, 1)
    assert [e["duplicate"] for e in again["events"]] == [True, False]
    assert Event.objects.count() == 2


def test_a_tracking_id_repeated_in_one_batch_is_stored_once(api):
    event = event_payload()
    body = post_json(api, EVENTS, {"events": [event, event]}).json()
    assert (body["accepted"], body["duplicates"]) == (1, 1)
    assert Event.objects.count() == 1


def test_a_batch_with_one_bad_event_stores_nothing(api):
    events = [event_payload(), event_payload(input_tokens=-1), event_payload(status="NOPE")]
    response = post_json(api, EVENTS, {"events": events})
    assert response.status_code == 400
    errors = response.json()["events"]
    assert set(errors) == {"1", "2"}
    assert "input_tokens" in errors["1"] and "status" in errors["2"]
    assert not Event.objects.exists()


def test_the_event_team_is_the_key_team(api, w):
    ok = post_json(api, EVENTS, event_payload(team="a")).json()
    assert ok["accepted"] == 1
    also_ok = post_json(api, EVENTS, event_payload(team=w.team_a.pk)).json()
    assert also_ok["accepted"] == 1
    response = post_json(api, EVENTS, event_payload(team="b"))
    assert response.status_code == 400
    assert "for team 'a' only" in response.json()["team"][0]
    assert set(Event.objects.values_list("team__slug", flat=True)) == {"a"}


# (fields, field with the error, part of the message)
INVALID = [
    ({"input_tokens": -5}, "input_tokens", "greater than or equal to 0"),
    ({"output_tokens": "many"}, "output_tokens", "valid integer"),
    ({"input_tokens": 2**40}, "input_tokens", "less than or equal to"),
    ({"status": "DONE"}, "status", "not a valid choice"),
    ({"source": "sdk"}, "source", "not a valid choice"),
    ({"tracking_id": "not-a-uuid"}, "tracking_id", "valid UUID"),
    ({"feature": "x" * 101}, "feature", "no more than 100 characters"),
    ({"model": "m" * 201}, "model", "no more than 200 characters"),
    ({"provider": ""}, "provider", "may not be blank"),
    ({"provider": None}, "provider", "may not be null"),
    ({"metadata": {"blob": "x" * 17000}}, "metadata", "Too large"),
    ({"metadata": ["not", "an", "object"]}, "metadata", "JSON object"),
    ({"metadata": {"k": "nul\x00"}}, "metadata", "Null characters"),
    ({"tags": "single"}, "tags", "list"),
    ({"tags": ["t" * 101]}, "tags", "no more than 100 characters"),
    ({"tags": [str(i) for i in range(51)]}, "tags", "no more than 50"),
    ({"session_id": "bad\x00id"}, "session_id", "Null characters"),
    ({"cost_usd": "-1"}, "cost_usd", "greater than or equal to 0"),
    ({"cost_usd": "abc"}, "cost_usd", "valid number"),
    ({"latency_ms": -1}, "latency_ms", "greater than or equal to 0"),
    ({"streamed": "perhaps"}, "streamed", "valid boolean"),
    ({"created_at": "yesterday"}, "created_at", "Datetime has wrong format"),
    ({"created_at": "2999-01-01T00:00:00Z"}, "created_at", "future"),
    ({"fallback_attempt": 40000}, "fallback_attempt", "less than or equal to 32767"),
]


@pytest.mark.parametrize(("fields", "field", "message"), INVALID)
def test_invalid_events_are_400_with_field_errors(api, fields, field, message):
    response = post_json(api, EVENTS, event_payload(**fields))
    assert response.status_code == 400
    errors = response.json()
    assert field in errors, errors
    assert message in str(errors[field])
    assert not Event.objects.exists()


def test_a_number_too_large_for_a_float_is_refused(api):
    body = '{"provider": "openai", "metadata": {"k": 1e400}}'  # parses as infinity
    response = api.post(EVENTS, body, content_type="application/json")
    assert response.status_code == 400
    assert "valid JSON" in str(response.json()["metadata"])


def test_deeply_nested_metadata_is_refused(api):
    nested: Any = "leaf"
    for _ in range(50):
        nested = {"n": nested}
    response = post_json(api, EVENTS, event_payload(metadata=nested))
    assert response.status_code == 400
    assert "Nested too deeply" in str(response.json()["metadata"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"provider": ', "JSON parse error"),
        ("[" * 100_000 + "]" * 100_000, "JSON parse error"),
        ('{"provider": "openai", "latency_ms": NaN}', "JSON parse error"),
        ('"just a string"', "Expected one event object"),
        ("[]", "Expected one event object"),
    ],
)
def test_malformed_bodies_are_400(api, body, message):
    response = api.post(EVENTS, body, content_type="application/json")
    assert response.status_code == 400
    assert message in str(response.json())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"events": []}, "at least 1"),
        ({"events": "nope"}, "list"),
        ({"events": [event_payload() for _ in range(1001)]}, "no more than 1000"),
        ({"events": [event_payload(), "not an event"]}, "Expected a dictionary"),
    ],
)
def test_bad_batches_are_400(api, body, message):
    response = post_json(api, EVENTS, body)
    assert response.status_code == 400
    assert message in str(response.json())
    assert not Event.objects.exists()


def test_a_body_over_the_upload_limit_is_413(api):
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=2000):
        response = post_json(api, EVENTS, {"events": [event_payload() for _ in range(20)]})
    assert response.status_code == 413
    assert not Event.objects.exists()


def test_ingest_needs_an_api_key(w):
    for who, status in [("anon", 401), ("member_a", 403), ("staff", 403)]:
        response = post_json(w.client(who), EVENTS, event_payload())
        assert response.status_code == status, who
    assert not Event.objects.exists()


def test_bad_keys_are_401(w):
    w.key_b.revoke()
    for header in [
        "Bearer fg_live_000000000000_nope",
        f"Bearer {w.secret_b}",  # revoked
        f"Bearer {w.secret_a[:-1]}",
        "Bearer fg_live_\x00_x_y",
        "Bearer two parts",
        "Bearer",
    ]:
        response = post_json(
            w.client("anon"), EVENTS, event_payload(), headers={"Authorization": header}
        )
        assert response.status_code == 401, header
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="fluxgate"'
    assert not Event.objects.exists()


def test_last_used_is_written_at_most_once_a_minute(api, w, django_assert_max_num_queries):
    assert w.key_a.last_used_at is None
    api.get(EVENTS)
    w.key_a.refresh_from_db()
    first = w.key_a.last_used_at
    assert first is not None
    api.get(EVENTS)
    w.key_a.refresh_from_db()
    assert w.key_a.last_used_at == first


def test_a_key_costs_no_query_once_found_and_a_revoked_one_is_refused(
    w, django_assert_num_queries
):
    """API keys found are kept by the process (``API_KEY_CACHE_SECONDS``): a request
    with a known key makes no query for it. A key revoked in this process is refused at
    once; one revoked elsewhere (an UPDATE this process gets no signal of) once the time
    has passed."""
    api_a, api_b = w.client("key_a"), w.client("key_b")
    with fluxgate_overrides(API_KEY_CACHE_SECONDS=0.3):
        assert api_a.get(EVENTS).status_code == 200
        assert api_b.get(EVENTS).status_code == 200
        with django_assert_num_queries(1):  # the page of events; none for the key
            assert api_a.get(EVENTS).status_code == 200
        ApiKey.objects.filter(pk=w.key_b.pk).update(revoked_at=timezone.now())
        assert api_b.get(EVENTS).status_code == 200  # another process's revoke: not seen yet
        time.sleep(0.35)
        assert api_b.get(EVENTS).status_code == 401
        assert api_a.get(EVENTS).status_code == 200
        w.key_a.revoke()
        assert api_a.get(EVENTS).status_code == 401
    with fluxgate_overrides(API_KEY_CACHE_SECONDS=0):
        key, secret = ApiKey.objects.create_key(team=w.team_a, name="uncached")
        assert ApiKey.objects.get_from_secret(secret) == key
        ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
        assert ApiKey.objects.get_from_secret(secret) is None


def test_another_process_requests_count_at_once(w, monkeypatch):
    """Every request is an atomic increment of the shared counter: requests another
    process made (its increments in the shared cache) count at once."""
    from django.core.cache import cache

    from fluxgate_django.api.throttling import IngestRateThrottle

    monkeypatch.setattr(IngestRateThrottle, "timer", lambda self: 6000.0)
    api = w.client("key_a")
    rates = {"DEFAULT_THROTTLE_RATES": {"fluxgate_ingest": "3/min"}}
    with override_settings(REST_FRAMEWORK=rates):
        assert post_json(api, EVENTS, event_payload()).status_code == 202
        shared = f"throttle_fluxgate_ingest_key{w.key_a.pk}:100"
        assert cache.get(shared) == 1
        cache.incr(shared, 2)  # another process's two requests
        assert post_json(api, EVENTS, event_payload()).status_code == 429  # 1 + 2 + 1 > 3
        assert cache.get(shared) == 4  # refused requests count too
    assert Event.objects.count() == 1


def test_ingest_is_rate_limited_per_key(w):
    rates = {"DEFAULT_THROTTLE_RATES": {"fluxgate_ingest": "2/min"}}
    with override_settings(REST_FRAMEWORK=rates):
        api_a, api_b = w.client("key_a"), w.client("key_b")
        statuses = [post_json(api_a, EVENTS, event_payload()).status_code for _ in range(3)]
        assert statuses == [202, 202, 429]
        throttled = post_json(api_a, EVENTS, event_payload())
        assert int(throttled.headers["Retry-After"]) > 0
        assert post_json(api_b, EVENTS, event_payload()).status_code == 202
        assert api_a.get(EVENTS).status_code == 200  # only ingest is limited
    assert Event.objects.count() == 3


def test_ingested_events_are_charged_to_the_team_budgets(api, w):
    w.key_a.may_charge_budgets = True  # (its client-supplied costs count too)
    w.key_a.save()
    budget = make_budget(w.team_a, period="month", limit_usd=Decimal("1"))
    scoped = make_budget(w.team_a, feature="other", period="day", limit_usd=Decimal("1"))
    event = event_payload(input_tokens=1000, cache_read_tokens=200, output_tokens=500)
    post_json(api, EVENTS, {"events": [event, event_payload(cost_usd="0.1", feature="x")]})
    post_json(api, EVENTS, event)  # a duplicate is not charged twice
    counter = budget.counters.get(window_start=window_start("month"))
    assert counter.spent == Decimal("0.10725")
    assert counter.reserved == 0
    assert not scoped.counters.filter(spent_units__gt=0).exists()


def test_the_langchain_wire_format_is_accepted(api, w):
    record = EventRecord(
        tracking_id=uuid.uuid4(),
        created_at=timezone.now() - dt.timedelta(minutes=5),
        provider="anthropic",
        model="claude-sonnet-4-6",
        operation="messages",
        status="SUCCESS",
        source=Source.LANGCHAIN.value,
        team="a",
        feature="rag",
        end_user_id="u1",
        end_user_email="u1@example.com",
        input_tokens=4000,
        cache_read_tokens=2000,
        cache_write_tokens=1000,
        output_tokens=100,
        latency_ms=120.5,
        run_id=str(uuid.uuid4()),
        metadata={"k": "v"},
        tags=["x"],
    )
    payload = record.to_json()  # what fluxgate_langchain.sinks.remote_event sends
    for name in ("budget_reservation", "user_pk", "content"):
        payload.pop(name)
    payload.update(cache_write_1h_tokens=0, usage_reported=True)
    response = post_json(api, EVENTS, {"events": [payload]})
    assert response.status_code == 202, response.json()
    event = Event.objects.get(tracking_id=record.tracking_id)
    assert event.source == "langchain" and event.team == w.team_a
    assert event.created_at == record.created_at
    assert (event.end_user_id, event.end_user_email) == ("u1", "u1@example.com")
    assert (event.metadata, event.tags, event.run_id) == ({"k": "v"}, ["x"], record.run_id)
    assert event.cost_usd is not None and event.cost_usd > 0
    assert event.user_id is None


def test_secrets_in_error_messages_are_redacted(api):
    event = event_payload(status="ERROR", error_message="bad key sk-abcdefghijklmnop given")
    post_json(api, EVENTS, event)
    assert Event.objects.get().error_message == "bad key sk-*** given"


# -- list -------------------------------------------------------------------------------


def test_list_is_newest_first_filtered_and_paginated(api, w):
    now = timezone.now()
    for i in range(5):
        make_event(
            w.team_a, feature="chat" if i % 2 else "search", created_at=now - dt.timedelta(hours=i)
        )
    make_event(w.team_b, feature="chat")
    page = api.get(EVENTS, {"page_size": 2}).json()
    assert len(page["results"]) == 2 and page["next"]
    seen = [e["created_at"] for e in page["results"]]
    while page["next"]:
        page = api.get(page["next"]).json()
        seen += [e["created_at"] for e in page["results"]]
    assert len(seen) == 5 and seen == sorted(seen, reverse=True)

    chat = api.get(EVENTS, {"feature": "chat"}).json()["results"]
    assert len(chat) == 2 and {e["team"] for e in chat} == {"a"}
    recent = api.get(EVENTS, {"start": (now - dt.timedelta(hours=2, minutes=30)).isoformat()})
    assert len(recent.json()["results"]) == 3
    day = api.get(EVENTS, {"start": now.date().isoformat(), "end": now.date().isoformat()})
    assert day.status_code == 200, day.json()
    assert all(e["created_at"].startswith(now.date().isoformat()) for e in day.json()["results"])


def test_list_filter_validation(api):
    for params, field in [
        ({"start": "soon"}, "start"),
        ({"status": "DONE"}, "status"),
        ({"team": "b"}, "team"),  # another team's slug is unknown here
        ({"start": "2025-02-01", "end": "2025-01-01"}, "end"),
        ({"feature": "x" * 101}, "feature"),
    ]:
        response = api.get(EVENTS, params)
        assert response.status_code == 400, params
        assert field in response.json()
    assert api.get(EVENTS, {"cursor": "garbage"}).status_code == 404


def test_retrieve_by_tracking_id(api, w):
    mine, theirs = make_event(w.team_a), make_event(w.team_b)
    assert api.get(f"{EVENTS}{mine.tracking_id}/").json()["tracking_id"] == str(mine.tracking_id)
    assert api.get(f"{EVENTS}{theirs.tracking_id}/").status_code == 404
    assert api.get(f"{EVENTS}not-a-uuid/").status_code == 404


def test_list_never_returns_content(api, w):
    make_event(w.team_a, content={"prompt": "secret prompt"})
    (event,) = api.get(EVENTS).json()["results"]
    assert "content" not in event


@pytest.mark.django_db(transaction=True)
def test_ingest_goes_through_the_site_recorder_and_charges_budgets(w):
    """With the thread recorder, ingested events are written by its writer, like every
    other event, and their cost settles on the budgets in the same transaction."""
    import fluxgate_django
    from fluxgate_django.recording import get_recorder
    from fluxgate_django.recording.thread import ThreadRecorder
    from tests.helpers import fluxgate_overrides

    budget = make_budget(w.team_a, period="day", limit_usd=Decimal("1"))
    w.key_a.may_charge_budgets = True  # (its client-supplied costs count too)
    w.key_a.save()
    api = w.client("key_a")
    with fluxgate_overrides(RECORDER="thread", FLUSH_INTERVAL=60, BATCH_SIZE=1000):
        assert isinstance(get_recorder(), ThreadRecorder)
        events = [event_payload(cost_usd="0.01") for _ in range(5)]
        response = post_json(api, EVENTS, {"events": events})
        assert response.status_code == 202
        assert fluxgate_django.flush(timeout=10)
        assert Event.objects.filter(team=w.team_a).count() == 5
        counter = budget.counters.get(window_start=window_start("day"))
        assert (counter.spent, counter.reserved_units) == (Decimal("0.05"), 0)
