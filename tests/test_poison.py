"""Poison input never jams anything: the rows of the fault matrix that are about values.

Each test feeds a value that once lost a whole batch (a NUL character, a UUID, a date, a
``Decimal`` in ``metadata``, the Anthropic SDK's ``Omit`` sentinels in stored content, a
cost no counter holds) through the real path — a real SDK client against the fake
provider, the thread recorder writing to the real database, or the ingest API — and then
counts exactly the events that must be stored.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from decimal import Decimal

import pytest

import fluxgate_django
from fluxgate_django import track_anthropic, track_openai, tracking_context
from fluxgate_django.models import Event, SpendCounter
from fluxgate_django.testing import FakeReply
from tests.api_helpers import API, event_payload, make_budget, make_world, post_json
from tests.helpers import MSGS, fluxgate_overrides

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("spool_dir")]

#: The thread recorder, writing only when flushed (one batch for the whole test).
THREAD = {"RECORDER": "thread", "RAISE_ERRORS": True, "FLUSH_INTERVAL": 60, "BATCH_SIZE": 1000}
EVENTS = f"{API}events/"


def spooled_lines(spool_dir) -> int:
    if not spool_dir.exists():
        return 0
    return sum(len(p.read_text().splitlines()) for p in spool_dir.glob("*.jsonl"))


def test_one_nul_in_metadata_among_199_good_events_stores_all_200(openai_client, fake, spool_dir):
    client = track_openai(openai_client)
    with fluxgate_overrides(**THREAD):
        ids = []
        for i in range(200):
            metadata = {"n": i}
            if i == 117:
                metadata = {"note": "a\x00b", "k\x00ey": ["x\x00", {"deep\x00": "\x00"}]}
            with tracking_context(feature="poison", metadata=metadata):
                ids.append(
                    client.chat.completions.create(
                        model="gpt-4o-mini", messages=MSGS
                    ).fluxgate.tracking_id
                )
        assert fluxgate_django.flush(timeout=30) is True
    assert Event.objects.filter(tracking_id__in=ids).count() == 200
    assert Event.objects.count() == 200  # no duplicates either
    poisoned = Event.objects.get(tracking_id=ids[117])
    assert poisoned.metadata == {"note": "ab", "key": ["x", {"deep": ""}]}
    assert spooled_lines(spool_dir) == 0


def test_uuid_date_and_decimal_in_metadata_are_stored_as_json(openai_client, fake, spool_dir):
    client = track_openai(openai_client)
    order = uuid.uuid4()
    day = dt.date(2026, 1, 31)
    moment = dt.datetime(2026, 1, 31, 12, 30, tzinfo=dt.timezone.utc)
    with fluxgate_overrides(**THREAD):
        plain = client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
        metadata = {
            "order": order,
            "day": day,
            "at": moment,
            "amount": Decimal("12.50"),
            "ratio": float("nan"),
            "ids": (1, 2),
            order: "a UUID key",
        }
        with tracking_context(metadata=metadata):
            odd = client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
        # flush() says True only when everything pending was written.
        assert fluxgate_django.flush(timeout=30) is True
    assert Event.objects.count() == 2
    stored = Event.objects.get(tracking_id=odd.fluxgate.tracking_id).metadata
    assert stored == {
        "order": str(order),
        "day": "2026-01-31",
        "at": "2026-01-31T12:30:00+00:00",
        "amount": "12.50",
        "ratio": "nan",
        "ids": [1, 2],
        str(order): "a UUID key",
    }
    assert Event.objects.filter(tracking_id=plain.fluxgate.tracking_id).exists()
    assert spooled_lines(spool_dir) == 0


def test_anthropic_call_with_store_content_is_stored_beside_openai_ones(
    anthropic_client, openai_client, fake, spool_dir
):
    """The Anthropic SDK leaves ``Omit`` sentinels in the request body FluxGate keeps under
    ``STORE_CONTENT``; the batch holding that event (and the OpenAI ones beside it) and the
    team's budget reservations must all go through."""
    w = make_world()
    budget = make_budget(w.team_a, period="day", limit_usd=Decimal("100"))
    anthropic = track_anthropic(anthropic_client)
    openai = track_openai(openai_client)
    with fluxgate_overrides(**THREAD, STORE_CONTENT=True):
        ids = []
        with tracking_context(team="a", feature="content"):
            for _ in range(5):
                ids.append(
                    openai.chat.completions.create(
                        model="gpt-4o", messages=MSGS
                    ).fluxgate.tracking_id
                )
            fake.enqueue(FakeReply(input_tokens=100, output_tokens=20))
            msg = anthropic.messages.create(
                model="claude-sonnet-4-6", max_tokens=100, messages=MSGS
            )
            ids.append(msg.fluxgate.tracking_id)
            for _ in range(5):
                ids.append(
                    openai.chat.completions.create(
                        model="gpt-4o", messages=MSGS
                    ).fluxgate.tracking_id
                )
        assert fluxgate_django.flush(timeout=30) is True
    assert Event.objects.filter(tracking_id__in=ids).count() == 11
    content = Event.objects.get(tracking_id=msg.fluxgate.tracking_id).content
    assert content["request"]["messages"] == MSGS
    assert "Omit" not in str(content) and "NotGiven" not in str(content)
    counter = SpendCounter.objects.get(budget=budget)
    # Every reservation settled: the team is not left blocked by reserved money.
    assert counter.reserved_units == 0
    assert counter.spent == sum(e.cost_usd for e in Event.objects.filter(tracking_id__in=ids))
    assert spooled_lines(spool_dir) == 0


def test_a_provider_reported_cost_no_counter_holds_is_refused_not_zero(
    openai_client, fake, spool_dir, caplog
):
    """A cost the budget counters can't hold (OpenRouter's ``usage.cost`` of ~$922M) is
    refused with a logged reason; the event is stored without a cost, never as 0."""
    client = track_openai(openai_client)
    with fluxgate_overrides(**THREAD), caplog.at_level(logging.WARNING, "fluxgate"):
        fake.enqueue(
            FakeReply(input_tokens=10, output_tokens=5, usage_extra={"cost": 922_337_203.69})
        )
        huge = client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
        fine = client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
        assert fluxgate_django.flush(timeout=30) is True
    event = Event.objects.get(tracking_id=huge.fluxgate.tracking_id)
    assert (event.cost_usd, event.cost_source) == (None, "invalid")
    assert "MAX_EVENT_COST_USD" in event.metadata["fluxgate_refused"]["cost_usd"]
    assert "refused" in caplog.text and "cost_usd" in caplog.text
    assert Event.objects.get(tracking_id=fine.fluxgate.tracking_id).cost_usd > 0
    assert spooled_lines(spool_dir) == 0


@pytest.mark.parametrize("cost", ["922337203.6854775807", "1000000.0000000001", "1e12"])
def test_ingest_of_a_cost_no_counter_holds_is_400_and_nothing_is_spooled(cost, spool_dir):
    w = make_world()
    api = w.client("key_a")
    with fluxgate_overrides(**THREAD):
        good = event_payload(cost_usd="0.01")
        response = post_json(api, EVENTS, {"events": [good, event_payload(cost_usd=cost)]})
        assert response.status_code == 400
        assert "cost_usd" in response.json()["events"]["1"]
        assert fluxgate_django.flush(timeout=10) is True
        # The same good event alone is accepted, and stored.
        assert post_json(api, EVENTS, good).status_code == 202
        assert fluxgate_django.flush(timeout=10) is True
    assert Event.objects.count() == 1
    assert spooled_lines(spool_dir) == 0


def test_a_price_no_counter_holds_is_refused_for_a_tracked_call(openai_client, fake, spool_dir):
    """An absurd ``ModelPrice`` times a large count: the event is stored without a cost
    (never 0, never a jam), the budget charged its estimate, the batch beside it stored."""
    from fluxgate_django.models import ModelPrice

    ModelPrice.objects.create(
        provider="openai", model="gpt-4o", input_per_mtok=Decimal("99999999"), output_per_mtok=0
    )
    client = track_openai(openai_client)
    with fluxgate_overrides(**THREAD):
        fake.enqueue(FakeReply(input_tokens=2_000_000_000, output_tokens=1))
        pricey = client.chat.completions.create(model="gpt-4o", messages=MSGS)
        fine = client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
        assert fluxgate_django.flush(timeout=30) is True
    event = Event.objects.get(tracking_id=pricey.fluxgate.tracking_id)
    assert (event.cost_usd, event.cost_source) == (None, "invalid")
    assert "MAX_EVENT_COST_USD" in event.metadata["fluxgate_refused"]["cost_usd"]
    assert Event.objects.filter(tracking_id=fine.fluxgate.tracking_id).exists()
    assert spooled_lines(spool_dir) == 0
