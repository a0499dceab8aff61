"""The admin cost report in a real browser: headless Chromium renders the page served by
``live_server`` and the chart is checked in the screenshot's pixels and in the DOM.

Needs Debian's ``chromium`` package (``apt-get install -y chromium``); skipped otherwise.
The screenshot is kept at ``var/report-screenshot.png`` (or ``$FLUXGATE_SCREENSHOT``).

This module is also the test's URLconf: the admin, the admin's static files, and a view
that sets a session cookie made by ``Client.force_login`` (Chromium's command line cannot
set cookies) and redirects to the report.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import struct
import subprocess
import uuid
import zlib
from decimal import Decimal
from pathlib import Path

import django
import pytest
from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponseRedirect
from django.test import Client, override_settings
from django.urls import path, re_path, reverse
from django.utils import timezone
from django.views.static import serve

from fluxgate_django.models import Budget, Team
from fluxgate_django.recording import write_events
from fluxgate_django.records import EventRecord
from fluxgate_django.reports.chart import PALETTE
from tests.helpers import fluxgate_overrides
from tests.test_reports import clear_report_tables

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
ADMIN_STATIC = Path(django.__file__).parent / "contrib" / "admin" / "static"


def set_session(request: HttpRequest, key: str) -> HttpResponseRedirect:
    response = HttpResponseRedirect(request.GET.get("next", "/admin/"))
    response.set_cookie(settings.SESSION_COOKIE_NAME, key)
    return response


urlpatterns = [
    path("admin/", admin.site.urls),
    path("_session/<str:key>/", set_session),
    re_path(r"^static/(?P<path>.*)$", serve, {"document_root": str(ADMIN_STATIC)}),
]

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="headless Chromium not installed (Debian: apt-get install -y chromium)",
    ),
    pytest.mark.django_db(transaction=True),
]

FEATURES = ["ab-test-gpt", "ab-test-claude", "summarize", "chat"]


def make_events() -> None:
    clear_report_tables()
    team = Team.objects.create(name="Search", slug="search")
    Budget.objects.create(team=team, period="month", limit_usd=Decimal("5"))
    noon = timezone.now().replace(hour=12, minute=0, second=0, microsecond=0)
    records = []
    for day in range(14):
        for f, feature in enumerate(FEATURES):
            for n in range(2 + (day + f) % 3):
                records.append(
                    EventRecord(
                        tracking_id=uuid.uuid4(),
                        created_at=noon - dt.timedelta(days=day, minutes=n),
                        provider="anthropic" if "claude" in feature else "openai",
                        model="claude-sonnet-4-6" if "claude" in feature else "gpt-4o",
                        operation="chat",
                        status="ERROR" if (day + n) % 11 == 0 else "SUCCESS",
                        team="search",
                        feature=feature,
                        input_tokens=1000,
                        output_tokens=300,
                        cost_usd=Decimal("0.01") * (f + 1) + Decimal("0.001") * day,
                        latency_ms=400.0 + 150 * f + 10 * n,
                    )
                )
    # Two weeks of spend written at once is a "runaway" from a zero baseline: keep the
    # detection (its anomaly rows, and the notification thread reading them while this
    # thread writes the next one, on SQLite's shared in-memory test database) out of it.
    with fluxgate_overrides(RUNAWAY_DETECTION={"enabled": False}):
        write_events(records)


def read_png(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, bytes per pixel, raw pixel rows) of an 8-bit RGB(A) PNG, with zlib."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, header = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * bpp
    out = bytearray()
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        out += line
        prev = line
    return width, height, bpp, bytes(out)


def chromium(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            CHROMIUM or "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--window-size=1400,1000",
            *args,
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )


@override_settings(ROOT_URLCONF=__name__, STATIC_URL="/static/", STATIC_ROOT=str(ADMIN_STATIC))
def test_report_page_renders_the_chart_in_chromium(live_server, tmp_path, django_user_model):
    make_events()
    admin_user = django_user_model.objects.create_superuser("admin", "a@example.com", "pw")
    client = Client()
    client.force_login(admin_user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    report = reverse("admin:fluxgate_report") + "?range=30d"
    url = f"{live_server.url}/_session/{session}/?next={report.replace('?', '%3F')}"

    dom = chromium("--virtual-time-budget=5000", "--dump-dom", url, tmp_path=tmp_path)
    html = dom.stdout.decode()
    assert "Cost Breakdown by Feature" in html
    svg = re.search(r'<svg class="fg-chart".*?</svg>', html, re.S)
    assert svg, "no chart in the page"
    assert svg.group(0).count('class="fg-series"') == len(FEATURES)
    # Every feature has calls on each of the 14 days: one bar per feature and day.
    assert svg.group(0).count('class="fg-bar"') == 14 * len(FEATURES)
    assert 'data-days="30"' in svg.group(0)

    shot = Path(os.environ.get("FLUXGATE_SCREENSHOT") or ROOT / "var" / "report-screenshot.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    chromium("--virtual-time-budget=5000", f"--screenshot={shot}", url, tmp_path=tmp_path)
    assert shot.exists() and shot.stat().st_size > 10_000
    width, height, bpp, pixels = read_png(shot.read_bytes())
    assert (width, height) == (1400, 1000)
    counts = {colour: 0 for colour in PALETTE[: len(FEATURES)]}
    wanted = {bytes.fromhex(c[1:]): c for c in counts}
    for i in range(0, len(pixels), bpp):
        colour = wanted.get(pixels[i : i + 3])
        if colour:
            counts[colour] += 1
    # Each series' bars cover many pixels of its own colour (the page uses none elsewhere).
    assert all(n > 300 for n in counts.values()), counts


@override_settings(ROOT_URLCONF=__name__, STATIC_URL="/static/", STATIC_ROOT=str(ADMIN_STATIC))
def test_trace_page_renders_the_timeline_in_chromium(live_server, tmp_path, django_user_model):
    """One request's calls: an ok call, a fallback attempt, a cache hit and a failure, each
    drawn as a bar of its own colour where it ran."""
    clear_report_tables()
    Team.objects.create(name="Search", slug="search")
    end = timezone.now()
    calls = [  # (ends ms after the first start, latency ms, status, fallback, cache hit)
        (1200, 1200, "ERROR", 0, False),
        (3000, 1700, "SUCCESS", 1, False),
        (3100, 20, "SUCCESS", 0, True),
        (5200, 2000, "SUCCESS", 0, False),
    ]
    write_events(
        [
            EventRecord(
                tracking_id=uuid.uuid4(),
                created_at=end - dt.timedelta(milliseconds=5200 - ends),
                provider="openai",
                model="gpt-4o",
                operation="chat",
                status=status,
                team="search",
                feature="agent",
                request_id="req-screenshot",
                input_tokens=1000,
                output_tokens=200,
                cost_usd=Decimal(0) if cached else Decimal("0.0045"),
                latency_ms=float(latency),
                fallback_attempt=fallback,
                cache_hit=cached,
            )
            for ends, latency, status, fallback, cached in calls
        ]
    )
    admin_user = django_user_model.objects.create_superuser("admin", "a@example.com", "pw")
    client = Client()
    client.force_login(admin_user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    page = reverse("admin:fluxgate_trace") + "?request_id=req-screenshot"
    url = f"{live_server.url}/_session/{session}/?next={page.replace('?', '%3F')}"
    html = chromium("--virtual-time-budget=5000", "--dump-dom", url, tmp_path=tmp_path)
    assert html.stdout.decode().count('class="fg-span') == 4
    shot = ROOT / "var" / "trace-screenshot.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    chromium("--virtual-time-budget=5000", f"--screenshot={shot}", url, tmp_path=tmp_path)
    _, _, bpp, pixels = read_png(shot.read_bytes())
    colours = {"4e79a7": 0, "e6a117": 0, "59a14f": 0, "ba2121": 0}
    wanted = {bytes.fromhex(c): c for c in colours}
    for i in range(0, len(pixels), bpp):
        colour = wanted.get(pixels[i : i + 3])
        if colour:
            colours[colour] += 1
    # Each bar (and its legend swatch) is on screen in its colour; the long calls are wide.
    assert all(n > 100 for n in colours.values()), colours
    assert colours["4e79a7"] > colours["59a14f"]
