import pytest, asyncio
from fluxgate_django import track_gemini, tracking_context
from fluxgate_django.models import Event
from fluxgate_django.testing import FakeReply

pytestmark = pytest.mark.django_db

def test_smoke(gemini_client, fake):
    c = track_gemini(gemini_client)
    fake.enqueue(FakeReply(input_tokens=1000, cached_tokens=200, output_tokens=300, reasoning_tokens=200))
    r = c.models.generate_content(model="gemini-2.5-flash", contents="hello")
    print(r.fluxgate)
    e = Event.objects.get()
    print(e.provider, e.model, e.operation, e.input_tokens, e.output_tokens, e.reasoning_tokens, e.cache_read_tokens, e.cost_usd, e.cost_source, e.status, e.finish_reason)
    fake.enqueue(FakeReply(chunks=3))
    s = c.models.generate_content_stream(model="gemini-2.5-flash", contents="hello")
    for ch in s: pass
    print(s.fluxgate, Event.objects.count())
    e = Event.objects.latest("created_at")
    print(e.streamed, e.time_to_first_token_ms, e.cost_usd)
