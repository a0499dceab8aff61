"""Issue 15, item 7: a mistyped team slug is no longer silently "no team".

``FLUXGATE["UNKNOWN_TEAM"]``: ``"warn"`` (default) logs once per slug and process,
``"ignore"`` says nothing, ``"error"`` (tests) refuses the tracked call before it is sent.
"""

from __future__ import annotations

import logging
import uuid

import pytest
from django.utils import timezone

from fluxgate_django import CallRefused, LLMService, track_openai, tracking_context
from fluxgate_django.conf import fluxgate_settings
from fluxgate_django.models import Event, Team
from fluxgate_django.recording import write_events
from fluxgate_django.records import EventRecord
from fluxgate_django.teams import UnknownTeam
from fluxgate_django.testing import FakeReply
from tests.helpers import MSGS, fluxgate_overrides

pytestmark = pytest.mark.django_db


def unknown_team_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "fluxgate" and r.levelno == logging.WARNING and "no team has" in r.message
    ]


def call(client, fake, team: str) -> None:
    fake.enqueue(FakeReply(text="ok", input_tokens=10, output_tokens=2))
    with tracking_context(team=team, feature="chat"):
        client.chat.completions.create(model="gpt-4o", messages=MSGS)


def test_the_default_is_warn():
    assert fluxgate_settings.UNKNOWN_TEAM == "warn"


def test_an_unknown_slug_is_warned_about_once_per_slug(openai_client, fake, caplog):
    Team.objects.create(name="Support", slug="support")
    client = track_openai(openai_client)
    with fluxgate_overrides(UNKNOWN_TEAM="warn"), caplog.at_level(logging.WARNING, "fluxgate"):
        for team in ("suport", "suport", "support", "sales-typo", "suport"):
            call(client, fake, team)
    warnings = unknown_team_warnings(caplog)
    assert [w.args[0] for w in warnings] == ["suport", "sales-typo"]
    text = warnings[0].getMessage()
    assert "'suport'" in text and "recorded without a team" in text
    assert "Team.objects.create(name=..., slug='suport')" in text and "UNKNOWN_TEAM" in text
    # The calls went through and were recorded, the mistyped ones without a team.
    events = list(Event.objects.order_by("created_at").values_list("team__slug", flat=True))
    assert events == [None, None, "support", None, None]


def test_once_per_slug_holds_across_the_cache_expiring(openai_client, fake, caplog):
    client = track_openai(openai_client)
    with (
        fluxgate_overrides(UNKNOWN_TEAM="warn", BUDGET_CACHE_SECONDS=0),
        caplog.at_level(logging.WARNING, "fluxgate"),
    ):
        for _ in range(3):  # looked up in the database each time: still one warning
            call(client, fake, "marketing")
    assert [w.args[0] for w in unknown_team_warnings(caplog)] == ["marketing"]


def test_ignore_says_nothing(openai_client, fake, caplog):
    with fluxgate_overrides(UNKNOWN_TEAM="ignore"), caplog.at_level(logging.DEBUG, "fluxgate"):
        call(track_openai(openai_client), fake, "nobody")
    assert unknown_team_warnings(caplog) == []
    assert Event.objects.get().team_id is None


def test_error_refuses_the_call_before_it_is_sent(openai_client, fake):
    Team.objects.create(name="Support", slug="support")
    client = track_openai(openai_client)
    with fluxgate_overrides(UNKNOWN_TEAM="error"):
        for _ in range(2):  # the second time from the cache: refused all the same
            with pytest.raises(UnknownTeam) as refused:
                call(client, fake, "suport")
            assert isinstance(refused.value, CallRefused)
            assert refused.value.slug == "suport" and "create it" in str(refused.value)
        assert fake.requests == []  # nothing was sent to the provider
        fake.reset()
        call(client, fake, "support")  # a real team: fine
        with tracking_context(feature="chat"):  # no team at all: fine
            fake.enqueue(FakeReply(text="ok"))
            client.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert list(Event.objects.values_list("team__slug", flat=True).order_by("created_at")) == [
        "support",
        None,
    ]


def test_error_refuses_a_service_call(fake):
    providers = {"openai": {"api_key": "sk-test", "base_url": fake.openai_base_url}}
    with fluxgate_overrides(UNKNOWN_TEAM="error", PROVIDERS=providers):
        service = LLMService()
        with pytest.raises(UnknownTeam):
            service.complete(MSGS, model="openai/gpt-4o", team="no-such-team", cache_ttl=0)
    assert fake.requests == []


def test_the_writer_stores_the_event_even_in_error_mode():
    """A record already made (e.g. through the ingest API, or before the setting changed)
    is never lost over its slug: stored without a team."""
    record = EventRecord(
        tracking_id=uuid.uuid4(),
        created_at=timezone.now(),
        provider="openai",
        model="gpt-4o",
        operation="chat",
        status="SUCCESS",
        team="gone-team",
    )
    with fluxgate_overrides(UNKNOWN_TEAM="error"):
        write_events([record])
    assert Event.objects.get(tracking_id=record.tracking_id).team_id is None
