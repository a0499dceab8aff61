"""One whole demo run: the demo users, a fake provider (started here or a running one), the
planned SDK calls, then the routed ``LLMService`` calls, all tagged with one run id."""

from __future__ import annotations

import random
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .. import tracking_context
from ..testing import FakeProvider
from .service import run_service_demo
from .users import create_teams_and_users
from .workload import Workload, run_calls


class DemoError(Exception):
    """The demo cannot run (e.g. no fake provider answers at the given URL)."""


@dataclass
class DemoRun:
    """What one demo run did."""

    run_id: str
    calls: int  # planned SDK calls made
    caught: int  # provider errors caught among them
    routed: int  # calls made through LLMService routes
    admin_created: bool  # whether the admin superuser was created by this run


@contextmanager
def fake_provider(fake_url: str | None) -> Iterator[tuple[FakeProvider | None, str]]:
    """``(fake, base_url)``: a running fake at ``fake_url``, else one started here."""
    if fake_url:
        base_url = fake_url.rstrip("/")
        try:
            urllib.request.urlopen(f"{base_url}/health", timeout=5).close()
        except OSError as exc:
            raise DemoError(
                f"No fake provider answers at {base_url} ({exc}). Start one with "
                "`python -m fluxgate_django.testing.fake_provider --port 8765`."
            ) from exc
        yield None, base_url
        return
    with FakeProvider() as fake:
        yield fake, fake.url


def run_demo(
    calls: int,
    *,
    seed: int,
    fake_url: str | None = None,
    log: Callable[[str], Any] | None = None,
) -> DemoRun:
    """Create the demo users, then make ``calls`` planned calls and the routed ones.

    ``fake_url``: use a running fake provider (its replies cannot be scripted, so no errors
    are injected). ``log``: called with a line per call when given. Does not flush.
    """
    users, admin_created = create_teams_and_users()
    run_id = uuid.uuid4().hex[:12]
    with fake_provider(fake_url) as (fake, base_url):
        workload = Workload(base_url, rng=random.Random(seed))
        plan = workload.plan(calls)
        caught = run_calls(plan, users, fake, run_id, log)
        with tracking_context(metadata={"demo_run": run_id}, tags=["demo"]):
            routed = run_service_demo(base_url, fake, users, rounds=max(2, calls // 20))
    return DemoRun(
        run_id=run_id,
        calls=len(plan),
        caught=caught,
        routed=routed,
        admin_created=admin_created,
    )
