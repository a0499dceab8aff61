import datetime as dt, uuid
from decimal import Decimal
import pytest
from django.utils import timezone
from django.urls import reverse
from fluxgate_django.recording import write_events
from fluxgate_django.records import EventRecord
from fluxgate_django.models import Team

@pytest.mark.django_db
def test_smoke(admin_client):
    Team.objects.create(name="Search", slug="search")
    now = timezone.now()
    recs = [EventRecord(tracking_id=uuid.uuid4(), created_at=now - dt.timedelta(days=i % 20), provider="openai", model="gpt-4o", operation="chat", status="SUCCESS", feature=f"f{i%5}", team="search", cost_usd=Decimal("0.01")*(i%7), latency_ms=100.0*(i%9+1)) for i in range(200)]
    write_events(recs)
    r = admin_client.get(reverse("admin:fluxgate_report"))
    assert r.status_code == 200, r.content[:3000]
    open("/tmp/fgsmoke/page.html", "wb").write(r.content)
    r = admin_client.get(reverse("admin:fluxgate_report") + "?format=csv")
    print(r.content.decode()[:600])
    r = admin_client.get(reverse("admin:index"))
    assert reverse("admin:fluxgate_report") in r.content.decode()
