"""The demo's history: the past days' LLM calls of the demo features, so that the report's
daily chart, date ranges and budgets have a month to show.

Each past call is built by the one record builder (``make_record``, with the call's past
``created_at``) and handed to the site's recorder (``pipeline.submit``), exactly as a
tracked call is: priced at the prices of its day, stored as an event, counted in the
rollups. Days already seeded (``metadata.demo_history``) are not seeded again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.utils import timezone

from .. import flush, tracking_context
from ..context import current_context
from ..models import Event
from ..periods import local_date
from ..pipeline import make_record, submit
from ..records import CallInfo, Status, Usage
from .users import demo_user
from .workload import SELF_HOSTED_MODEL

HISTORY_KEY = "demo_history"


@dataclasses.dataclass(frozen=True)
class Profile:
    """One demo feature's typical call."""

    feature: str
    team: str
    provider: str
    operation: str
    model: str
    per_day: int  # calls on an ordinary weekday
    input_tokens: tuple[int, int]
    output_tokens: tuple[int, int]
    latency_ms: tuple[int, int]
    reasoning: bool = False
    cache_read: int = 0
    staff: str = ""  # a demo user's name; else an end user of the site
    error_rate: float = 0.03
    streamed: bool = False


PROFILES = (
    Profile("chat", "growth", "openai", "chat", "gpt-4o-mini", 9, (450, 1500), (40, 220),
            (300, 900), cache_read=1024, streamed=True),
    Profile("summarize", "support", "anthropic", "messages", "claude-sonnet-4-6", 4,
            (150, 600), (120, 400), (1200, 3000), cache_read=4200),
    Profile("embeddings-search", "search", "openai", "embeddings", "text-embedding-3-small",
            8, (8, 60), (0, 0), (40, 120), error_rate=0.0),
    Profile("code-review", "search", "openai", "responses", "o4-mini", 2, (2000, 6000),
            (500, 1800), (4000, 9000), reasoning=True, staff="alice"),
    Profile("translation", "support", "anthropic", "messages", "claude-haiku-4-5", 3,
            (200, 900), (200, 900), (900, 2500), staff="bob", streamed=True),
    Profile("ticket-triage", "support", "openai", "chat", SELF_HOSTED_MODEL, 3, (300, 800),
            (10, 30), (150, 400), staff="bob"),
)  # fmt: skip

#: The day (days ago) a code-review loop ran away: a spike in the daily chart.
SPIKE_DAYS_AGO = 9


@dataclasses.dataclass
class History:
    """What seeding did."""

    days: int  # days seeded now
    events: int  # events submitted now
    skipped: int  # days already seeded before


def seeded_days() -> set[str]:
    """The dates (ISO) already seeded."""
    return {
        str(day)
        for day in Event.objects.filter(metadata__has_key=HISTORY_KEY)
        .values_list(f"metadata__{HISTORY_KEY}", flat=True)
        .distinct()
    }


def _moment(day: dt.date, rng: random.Random) -> dt.datetime:
    """A time during ``day`` (site-local), mostly in working hours."""
    hour = min(23, max(0, int(rng.gauss(14, 3.5))))
    local = dt.datetime.combine(day, dt.time(hour, rng.randint(0, 59), rng.randint(0, 59)))
    if not settings.USE_TZ:
        return local
    return timezone.make_aware(local, timezone.get_default_timezone())


def _calls_on(profile: Profile, days_ago: int, day: dt.date, rng: random.Random) -> int:
    """How many calls ``profile`` makes on ``day``: fewer at weekends, growing over the
    month, and a runaway code-review loop on one day."""
    weekday = 0.35 if day.weekday() >= 5 else 1.0
    growth = 1.0 + 0.6 * (30 - min(days_ago, 30)) / 30
    n = profile.per_day * weekday * growth * rng.uniform(0.7, 1.3)
    if profile.feature == "code-review" and days_ago == SPIKE_DAYS_AGO:
        n *= 12
    return max(0, round(n))


def _submit_call(profile: Profile, at: dt.datetime, rng: random.Random) -> None:
    failed = rng.random() < profile.error_rate
    if failed:
        info = CallInfo(
            provider=profile.provider,
            operation=profile.operation,
            requested_model=profile.model,
            model=profile.model,
            status=Status.ERROR,
        )
        error_type = rng.choice(["InternalServerError", "RateLimitError"])
        record = make_record(
            info,
            Usage(),
            current_context(),
            created_at=at,
            latency_ms=float(rng.randint(80, 400)),
            error_type=error_type,
            error_message="The server had an error."
            if error_type == "InternalServerError"
            else "Rate limit reached.",
            failed=True,
        )
        submit(record)
        return
    input_tokens = rng.randint(*profile.input_tokens)
    output_tokens = rng.randint(*profile.output_tokens)
    reasoning = rng.randint(output_tokens // 3, output_tokens * 2 // 3) if profile.reasoning else 0
    cache_read = profile.cache_read if profile.cache_read and rng.random() < 0.6 else 0
    streamed = profile.streamed and rng.random() < 0.4
    usage = Usage(
        input_tokens=input_tokens + cache_read,
        output_tokens=output_tokens,
        reasoning_tokens=reasoning,
        cache_read_tokens=cache_read,
    )
    info = CallInfo(
        provider=profile.provider,
        operation=profile.operation,
        requested_model=profile.model,
        model=profile.model,
        finish_reason="stop" if profile.operation != "embeddings" else "",
        streamed=streamed,
    )
    latency = float(rng.randint(*profile.latency_ms))
    record = make_record(
        info,
        usage,
        current_context(),
        created_at=at,
        latency_ms=latency,
        time_to_first_token_ms=latency * rng.uniform(0.15, 0.4) if streamed else None,
        stream_duration_ms=latency * rng.uniform(0.6, 0.85) if streamed else None,
    )
    submit(record)


def seed_history(
    days: int,
    *,
    seed: int = 7,
    today: dt.date | None = None,
    log: Callable[[str], Any] | None = None,
) -> History:
    """Seed the ``days`` days before ``today`` (site-local) that are not seeded yet, and
    wait until their events are written.

    (Runaway detection counts none of it: past events are not this minute's spend.)
    """
    today = today or local_date()
    done = seeded_days()
    staff = {p.staff: demo_user(p.staff) for p in PROFILES if p.staff}
    history = History(days=0, events=0, skipped=0)
    for days_ago in range(days, 0, -1):
        day = today - dt.timedelta(days=days_ago)
        if day.isoformat() in done:
            history.skipped += 1
            continue
        rng = random.Random(f"{seed}:{day.isoformat()}")
        made = 0
        with tracking_context(metadata={HISTORY_KEY: day.isoformat()}, tags=["demo"]):
            for profile in PROFILES:
                for _ in range(_calls_on(profile, days_ago, day, rng)):
                    if profile.staff:
                        user: Any = staff[profile.staff]
                    else:
                        n = rng.randint(1, 40)
                        user = {"id": f"cust_{n:03d}", "email": f"customer{n}@example.org"}
                    with tracking_context(
                        feature=profile.feature, team=profile.team, user=user
                    ):
                        _submit_call(profile, _moment(day, rng), rng)
                    made += 1
        history.days += 1
        history.events += made
        if log is not None:
            log(f"  {day}: {made} calls")
    flush(timeout=60)
    return history
