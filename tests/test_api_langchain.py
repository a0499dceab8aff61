"""End to end: a LangChain run outside the site's process (``FluxGateHandler`` with an API
key) is posted to the ingest API of a live server, priced there and stored for the key's
team, once, whatever the retries."""

from __future__ import annotations

from decimal import Decimal

import pytest
from langchain_openai import ChatOpenAI

from fluxgate_django.models import Event
from fluxgate_django.testing import FakeReply
from fluxgate_langchain import FluxGateHandler, RemoteSender
from tests.api_helpers import make_world

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_remote_langchain_run_is_priced_and_stored_by_the_site(live_server, fake):
    w = make_world()
    fake.enqueue(FakeReply(input_tokens=1000, cached_tokens=200, output_tokens=500))
    llm = ChatOpenAI(
        model="gpt-4o", api_key="sk-test", base_url=fake.openai_base_url, max_retries=0
    )
    handler = FluxGateHandler(feature="rag", team="a", api_key=w.secret_a, base_url=live_server.url)
    llm.invoke("hi", config={"callbacks": [handler]})
    sender = handler._sink.sender
    assert sender.flush(timeout=20)
    assert (sender.sent, sender.rejected) == (1, 0)

    event = Event.objects.get()
    assert (event.team, event.source, event.feature) == (w.team_a, "langchain", "rag")
    assert (event.input_tokens, event.cache_read_tokens, event.output_tokens) == (1000, 200, 500)
    assert event.cost_usd == Decimal("0.00725")
    assert event.run_id


def test_a_resent_batch_is_stored_once_and_another_team_is_refused(live_server):
    w = make_world()
    event = {"tracking_id": "8f0c2b1e-4f7a-4d55-9a52-0d6f3f1f2a11", "provider": "openai",
             "model": "gpt-4o", "input_tokens": 10, "source": "langchain"}  # fmt: skip
    sender = RemoteSender(live_server.url, w.secret_a, interval=0.01)
    try:
        for _ in range(3):
            sender.send(dict(event))
            assert sender.flush(timeout=20)
        assert (sender.sent, sender.rejected) == (3, 0)
        assert Event.objects.filter(team=w.team_a).count() == 1

        sender.send({**event, "tracking_id": "0e9b9a7c-2f55-4c1b-8a3e-9d2b7e4c6f10", "team": "b"})
        assert sender.flush(timeout=20)
        assert (sender.sent, sender.rejected) == (3, 1)  # a 400: refused for good, not retried
    finally:
        sender.close(timeout=1)
    assert Event.objects.count() == 1 and not Event.objects.filter(team=w.team_b).exists()
