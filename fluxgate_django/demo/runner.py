"""One whole demo run: the demo users, a month of history, a fake provider (started here
or a running one), the planned SDK calls, then the routed ``LLMService`` calls and the
calls through the site's LLM gateway, all tagged with one run id; then a budget per team
(one near its limit, one over it) and a call the over-budget team makes, refused."""

from __future__ import annotations

import random
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .. import flush, tracking_context
from ..testing import FakeProvider
from .budgets import BudgetState, create_budgets, try_over_budget_call
from .gateway import GatewayDemo, run_gateway_demo
from .history import History, seed_history
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
    refused: int  # calls among them refused by a budget (a rerun: a demo budget is spent)
    routed: int  # calls made through LLMService routes
    admin_created: bool  # whether the admin superuser was created by this run
    history: History | None = None  # the past days seeded (None: --days 0)
    budgets: list[BudgetState] = field(default_factory=list)
    refusal: str = ""  # what the over-budget team's call did
    gateway: GatewayDemo | None = None  # the calls through the gateway


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
    days: int = 30,
    budgets: bool = True,
    log: Callable[[str], Any] | None = None,
) -> DemoRun:
    """Create the demo users, seed the ``days`` past days not seeded yet, make ``calls``
    planned calls, the routed ones and the gateway's, then the demo budgets and a call
    they refuse.

    ``fake_url``: use a running fake provider (its replies cannot be scripted, so no errors
    are injected). ``log``: called with a line per call when given. Flushes before the
    budgets are made (they count the window's stored spend); not after the refused call.
    """
    users, admin_created = create_teams_and_users()
    run_id = uuid.uuid4().hex[:12]
    history = seed_history(days, seed=seed, log=log) if days > 0 else None
    states: list[BudgetState] = []
    refusal = ""
    with fake_provider(fake_url) as (fake, base_url):
        workload = Workload(base_url, rng=random.Random(seed))
        plan = workload.plan(calls)
        caught, refused = run_calls(plan, users, fake, run_id, log)
        with tracking_context(metadata={"demo_run": run_id}, tags=["demo"]):
            routed = run_service_demo(base_url, fake, users, rounds=max(2, calls // 20))
        gateway = run_gateway_demo(base_url, fake, run_id)
        if budgets:
            flush(timeout=60)
            states = create_budgets()
            # (Not a "demo_run" event: the run's cost table shows the calls it sent.)
            with tracking_context(metadata={"demo_refusal": run_id}):
                refusal = try_over_budget_call(base_url)
    return DemoRun(
        run_id=run_id,
        calls=len(plan),
        caught=caught,
        refused=refused,
        routed=routed,
        admin_created=admin_created,
        history=history,
        budgets=states,
        refusal=refusal,
        gateway=gateway,
    )
