"""schemathesis' full run against the API, in-process (no server): every check, on cases
from the examples, coverage and fuzzing phases of every operation and from its stateful
phase (sequences of calls following the links it infers: create, then read...), as a team's
API key, plus one check of FluxGate's own (:func:`accepted_events_are_stored`). The schema
and the behaviour agree: any failed check fails the test.

What the schema can't say — which team slugs the key sees, that ``start`` comes before
``end``, that a report spans at most 366 days, that an event is not dated in the future —
is taught to the generator (:class:`RuntimeRules`: valid cases are made to follow them;
invalid ones are left alone). The same configuration and rules serve
``scripts/schemathesis.sh`` (the CLI run against a served test project).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from typing import Any

import hypothesis
import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck
from schemathesis.config import SchemathesisConfig

from fluxgate_django.api.ingest import MIN_CREATED_AT
from fluxgate_django.api.reports import MAX_REPORT_DAYS
from tests.api_helpers import make_budget, make_event, make_world

#: The schemathesis configuration of both runs (schemathesis.toml syntax).
#:
#: 413 counts as a refusal of valid and of invalid data: a body can be valid and still be
#: over the site's ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (20 documents of a million characters).
CONFIG = """
[cache]
# (no crash replays from an earlier run, no .schemathesis directory)
enabled = false

[generation]
max-examples = {max_examples}
deterministic = true
database = "none"
# Every text field refuses NUL characters (no database stores them everywhere): the API's
# description says so, rather than a pattern on each string of the schema.
allow-x00 = false

[checks]
enabled = true

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "429"]

[checks.negative_data_rejection]
expected-statuses = [
    "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429",
]

[phases.stateful]
enabled = true
max-steps = 6
"""

SCHEMA_PATH = "/fluxgate/api/schema/?format=json"
#: The route the servers configure for ``POST complete/`` (and this module's rules use).
ROUTE = "summarize"
#: A model the fake provider answers for.
MODEL = "gpt-4o-mini"


def _positive(case: Any) -> bool:
    return case.meta is None or case.meta.generation.mode.is_positive


def _moment(value: Any, *, end: bool = False) -> dt.datetime | None:
    """An ISO date or date-time as an aware datetime (as ``DateOrDateTimeField`` reads it),
    or None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        day = dt.date.fromisoformat(value) if len(value) == 10 else None
        if day is not None:
            moment = dt.datetime.combine(day, dt.time.min, tzinfo=dt.timezone.utc)
            return moment + dt.timedelta(days=1) if end and day < dt.date.max else moment
        moment = dt.datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


@dataclasses.dataclass(frozen=True)
class RuntimeRules:
    """The rules the API checks beyond its schema, applied to the *valid* generated cases
    (``map_case`` hook) so that a valid case stays valid for this server; invalid cases are
    sent as generated. ``teams``: the slugs of the teams the key sees."""

    teams: tuple[str, ...]

    def map_case(self, context: Any, case: Any) -> Any:
        if not _positive(case):
            return case
        path = case.operation.path
        if isinstance(case.query, dict):
            self._query(path, case.query)
        if isinstance(case.body, dict):
            if path.endswith("/events/") and case.method.upper() == "POST":
                self._ingest(case.body)
            elif path.endswith("/complete/"):
                self._complete(case.body)
        return case

    def _query(self, path: str, query: dict[str, Any]) -> None:
        if "team" in query and query["team"] not in self.teams:
            query["team"] = self.teams[0]  # any other is "Unknown team."
        if "start" in query and "end" in query:
            if "/reports/" in path:
                start, end = _day(query["start"]), _day(query["end"])
                too_long = start and end and (end - start).days + 1 > MAX_REPORT_DAYS
                if start and end and (start > end or too_long):
                    del query["end"]
            else:
                start_at, end_at = _moment(query["start"]), _moment(query["end"], end=True)
                if start_at and end_at and start_at >= end_at:
                    del query["end"]

    def _ingest(self, body: dict[str, Any]) -> None:
        events = body.get("events")
        items = events if isinstance(events, list) else [body]
        seen: set[Any] = set()
        for item in items:
            if not isinstance(item, dict):
                continue
            if item.get("team") not in (None, "", *self.teams):
                del item["team"]  # a key records for its own team only
            created = _moment(item.get("created_at"))
            if created and not MIN_CREATED_AT <= created <= dt.datetime.now(dt.timezone.utc):
                del item["created_at"]  # not before 2000, not in the future
            tracking_id = item.get("tracking_id")
            if tracking_id is not None and tracking_id in seen:
                del item["tracking_id"]  # repeated in a batch: must repeat the same event
            seen.add(tracking_id)

    def _complete(self, body: dict[str, Any]) -> None:
        if body.get("team") not in (None, *self.teams):
            del body["team"]
        if "route" in body and body["route"] != ROUTE:
            body["route"] = ROUTE  # the routes are the site's settings
        if "model" in body and body["model"] != MODEL:
            body["model"] = MODEL  # a model reference FluxGate resolves
        if "route" not in body and "model" not in body:
            body["model"] = MODEL  # one of them is required
        messages = body.get("messages")
        if (
            isinstance(messages, list)
            and messages
            and isinstance(messages[0], dict)
            and not any(isinstance(m, dict) and m.get("role") == "user" for m in messages)
        ):
            messages[0]["role"] = "user"  # a conversation needs a user message

    def register(self, dispatcher: Any) -> None:
        """Install the rules on a schema's hooks (or schemathesis' global ones)."""
        dispatcher.register_hook_with_name(self.map_case, "map_case")


@schemathesis.check
def accepted_events_are_stored(ctx: Any, response: Any, case: Any) -> bool | None:
    """Accepted means stored: after a 202 from ``POST events/``, each event it lists is
    there to read, with the cost the answer gave."""
    if case.method.upper() != "POST" or not case.path.endswith("/events/"):
        return None
    if response.status_code != 202:
        return None
    detail = case.operation.schema[f"{case.path}{{tracking_id}}/"]["GET"]
    headers = {"Authorization": response.request.headers.get("Authorization", "")}
    for event in response.json()["events"]:
        stored = detail.Case(
            path_parameters={"tracking_id": event["tracking_id"]}, headers=headers
        ).call()
        assert stored.status_code == 200, f"accepted event {event['tracking_id']} is not stored"
        if not event["duplicate"]:
            assert stored.json()["cost_usd"] == event["cost_usd"], event
    return True


def _day(value: Any) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


# -- the in-process run -----------------------------------------------------------------

#: Cases per operation and phase, and steps of the stateful run: the file runs in well
#: under a minute on SQLite. derandomize: the same cases on every CI run.
EXAMPLES = 20
HYPOTHESIS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

#: The app, and its schema (read from it: no server). Loading it needs no database.
APP = get_wsgi_application()
schema = schemathesis.openapi.from_wsgi(
    SCHEMA_PATH,
    APP,
    config=SchemathesisConfig.from_str(CONFIG.format(max_examples=EXAMPLES)),
)
RuntimeRules(teams=("a",)).register(schema.hooks)  # make_world()'s team A


@schema.auth(refresh_interval=None)
class TeamKey:
    """``Authorization: Bearer <team A's key>``: the key of the current test's world (an
    auth provider, so that ignored_auth knows what to take away or spoil)."""

    secret = ""

    def get(self, case: Any, context: Any) -> str:
        return TeamKey.secret

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@pytest.fixture
def server(db, settings, fake):
    """Team A's key (:class:`TeamKey`) over a seeded database: the team's admin
    and member, an event, a budget with a webhook (hidden from the key), LLM providers
    answered by the fake provider; requests keep the test's database connection."""
    settings.FLUXGATE = {
        **settings.FLUXGATE,
        # ignored_auth sends wrong keys on purpose: past the real limit every request
        # would be the (documented) 429.
        "AUTH_FAILURE_RATE": "1000000/min",
        "PROVIDERS": {
            "openai": {"api_key": "sk-fake", "base_url": fake.openai_base_url, "timeout": 5},
            "anthropic": {"api_key": "sk-fake", "base_url": fake.anthropic_base_url},
        },
        "ROUTES": {ROUTE: {"strategy": "ordered", "models": [MODEL]}},
    }
    # (and past 600 ingest requests a minute, every one would be)
    settings.REST_FRAMEWORK = {"DEFAULT_THROTTLE_RATES": {"fluxgate_ingest": "1000000/min"}}
    world = make_world()
    assert world.team_a.slug == "a"
    make_event(world.team_a)
    # An alert budget: ingested costs never turn complete/ into a 402 midway.
    make_budget(
        world.team_a,
        limit_usd=Decimal("100"),
        action="alert",
        webhook_url="https://hooks.example.com/services/T0/B0/secret",
    )
    TeamKey.secret = world.secret_a
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        TeamKey.secret = ""
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@schema.parametrize()
@HYPOTHESIS
def test_every_operation_conforms(case, server):
    """Examples, coverage and fuzzing cases of each operation: every check passes."""
    case.call_and_validate()


def test_stateful_sequences_conform(server):
    """Sequences of calls along the inferred links (an ingested event, then read by its
    tracking_id...): every check passes on every step."""
    schema.as_state_machine().run(settings=hypothesis.settings(HYPOTHESIS, stateful_step_count=6))
