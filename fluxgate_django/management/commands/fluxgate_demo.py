"""``manage.py fluxgate_demo``: a realistic LLM workload against a fake provider, then a
cost table by feature computed from the recorded ``Event`` rows.

Real ``openai.OpenAI`` and ``anthropic.Anthropic`` clients, wrapped with
``track_openai`` / ``track_anthropic``, talk HTTP to a loopback :class:`FakeProvider`
(started in-process, or a running one with ``--fake-url``), so nothing is spent. The
workload covers several features, teams and users; streams; prompt-cache reads and
writes; reasoning tokens; embeddings; provider errors (500 and 429) that are caught; and
a self-hosted model FluxGate has no price for (shown as "unpriced", never as $0).

Also creates the teams, a few demo users and an ``admin`` superuser (password ``admin``)
if it does not exist yet, so the admin can be browsed afterwards.
"""

from __future__ import annotations

import random
import statistics
import sys
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Count, Q, Sum

from fluxgate_django import flush, track_anthropic, track_openai, tracking_context
from fluxgate_django.models import Event, Team, TeamMembership
from fluxgate_django.testing import FakeProvider, FakeReply

from ._service_demo import run_service_demo

TEAMS = {"search": "Search", "support": "Support", "growth": "Growth"}
#: username → (team slug, email)
DEMO_USERS = {
    "alice": ("search", "alice@example.com"),
    "bob": ("support", "bob@example.com"),
    "carol": ("growth", "carol@example.com"),
    "dave": ("growth", "dave@example.com"),
}
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin"
#: An OpenAI-compatible model served in-house: genai-prices cannot know its price.
SELF_HOSTED_MODEL = "acme-llama-3.3-70b-instruct"
ERROR_STATUSES = ("ERROR", "MALFORMED_REQUEST")

LONG_DOCUMENT = (
    "Quarterly support review. Ticket volume rose 12% while median first response time "
    "fell to 41 minutes. Most escalations concerned billing exports and SSO setup. "
) * 40


@dataclass
class Call:
    """One planned LLM call of the workload."""

    feature: str
    run: Callable[[], Any]
    context: dict[str, Any] = field(default_factory=dict)
    reply: Any = None  # a FakeReply, applied when the fake provider runs in-process


class Command(BaseCommand):
    help = (
        "Drive a demo LLM workload through tracked OpenAI/Anthropic clients against a "
        "fake provider and print the cost by feature."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--calls", type=int, default=60, help="number of LLM calls to make (default 60)"
        )
        parser.add_argument(
            "--fake-url",
            help="use a running fake provider (python -m fluxgate_django.testing.fake_provider) "
            "instead of starting one; its replies cannot be scripted, so no errors are injected",
        )
        parser.add_argument(
            "--no-input",
            "--noinput",
            action="store_true",
            dest="no_input",
            help="do not ask for confirmation",
        )
        parser.add_argument("--seed", type=int, default=7, help="random seed of the workload")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            import anthropic  # noqa: F401
            import openai  # noqa: F401
        except ImportError as exc:
            raise CommandError(
                "The demo needs the SDKs: pip install 'django-fluxgate[openai,anthropic]'"
            ) from exc
        calls = options["calls"]
        self.verbosity = options["verbosity"]
        if calls < 1:
            raise CommandError("--calls must be at least 1")
        self._check_migrated()
        if not options["no_input"] and sys.stdin.isatty() and not self._confirm(calls):
            self.stdout.write("Cancelled.")
            return

        users = self._create_teams_and_users()
        run_id = uuid.uuid4().hex[:12]
        with fake_provider(options["fake_url"]) as (fake, base_url):
            workload = Workload(base_url, rng=random.Random(options["seed"]))
            plan = workload.plan(calls)
            caught = self._run(plan, users, fake, run_id)
            with tracking_context(metadata={"demo_run": run_id}, tags=["demo"]):
                routed = run_service_demo(base_url, fake, users, rounds=max(2, calls // 20))

        if not flush(timeout=30):
            self.stderr.write("FluxGate did not finish writing events within 30 s.")
        self.stdout.write(
            f"\n{len(plan)} LLM calls made ({caught} provider errors caught), plus {routed} "
            f"through LLMService routes (summarize, code-review, chat, translation, with a "
            f"fallback and an A/B test), run {run_id}.\n"
        )
        self.stdout.write(format_cost_table(cost_by_feature(run_id)))
        self._print_admin_hint()

    # -- setup -------------------------------------------------------------------------

    def _check_migrated(self) -> None:
        connection = connections[DEFAULT_DB_ALIAS]
        if Event._meta.db_table not in connection.introspection.table_names():
            raise CommandError("FluxGate's tables are missing: run `manage.py migrate` first.")

    def _confirm(self, calls: int) -> bool:
        name = connections[DEFAULT_DB_ALIAS].settings_dict["NAME"]
        answer = input(
            f"This adds demo teams, users (and an '{ADMIN_USERNAME}' superuser if missing) and "
            f"{calls} demo events to database {name!s}. Continue? [y/N] "
        )
        return answer.strip().lower() in ("y", "yes")

    def _create_teams_and_users(self) -> list[Any]:
        """Teams, demo users in them and the admin superuser; returns the demo users."""
        User = get_user_model()
        teams = {
            slug: Team.objects.get_or_create(slug=slug, defaults={"name": name})[0]
            for slug, name in TEAMS.items()
        }
        users = []
        for username, (slug, email) in DEMO_USERS.items():
            user, created = User._default_manager.get_or_create(
                **{User.USERNAME_FIELD: username}, defaults={"email": email}
            )
            if created:
                user.set_unusable_password()
                user.save()
            TeamMembership.objects.get_or_create(user=user, team=teams[slug])
            users.append(user)

        self.admin_created = False
        if not User._default_manager.filter(**{User.USERNAME_FIELD: ADMIN_USERNAME}).exists():
            User._default_manager.create_superuser(
                ADMIN_USERNAME, "admin@example.com", ADMIN_PASSWORD
            )
            self.admin_created = True
        return users

    # -- workload ----------------------------------------------------------------------

    def _run(self, plan: list[Call], users: list[Any], fake: Any, run_id: str) -> int:
        import anthropic
        import openai

        caught = 0
        with tracking_context(metadata={"demo_run": run_id}, tags=["demo"]):
            for index, call in enumerate(plan):
                if fake is not None and call.reply is not None:
                    fake.enqueue(call.reply)
                context = dict(call.context)
                if "user" not in context:
                    user = users[index % len(users)]
                    context["user"] = user
                    context.setdefault("team", DEMO_USERS[user.get_username()][0])
                with tracking_context(**context):
                    try:
                        call.run()
                    except (openai.APIError, anthropic.APIError) as exc:
                        caught += 1
                        if self.verbosity >= 2:
                            self.stdout.write(f"  {call.feature}: caught {type(exc).__name__}")
                if self.verbosity >= 2:
                    self.stdout.write(f"  {index + 1:>4} {call.feature}")
        return caught

    def _print_admin_hint(self) -> None:
        if self.admin_created:
            login = f"{ADMIN_USERNAME} / {ADMIN_PASSWORD} (just created)"
        else:
            login = f"{ADMIN_USERNAME} (existing user, password unchanged)"
        self.stdout.write(
            f"\nAdmin login: {login}\nEvents: /admin/fluxgate_django/event/\n"
            "Cost report: /admin/fluxgate_django/costreport/ "
            "(A/B: ?compare=ab-test-gpt,ab-test-claude)\n"
        )


@contextmanager
def fake_provider(fake_url: str | None) -> Iterator[tuple[FakeProvider | None, str]]:
    """``(fake, base_url)``: a running fake at ``fake_url``, else one started here."""
    if fake_url:
        base_url = fake_url.rstrip("/")
        try:
            urllib.request.urlopen(f"{base_url}/health", timeout=5).close()
        except OSError as exc:
            raise CommandError(
                f"No fake provider answers at {base_url} ({exc}). Start one with "
                "`python -m fluxgate_django.testing.fake_provider --port 8765`."
            ) from exc
        yield None, base_url
        return
    with FakeProvider() as fake:
        yield fake, fake.url


class Workload:
    """Builds the list of calls: tracked clients per feature, and what the fake answers."""

    def __init__(self, base_url: str, *, rng: random.Random) -> None:
        import anthropic
        import openai

        self.rng = rng
        # Any: with_context() is added to the instance by track_openai(); the SDK's types
        # do not declare it.
        oa: Any = track_openai(
            openai.OpenAI(api_key="sk-fluxgate-demo", base_url=f"{base_url}/v1", max_retries=0)
        )
        an = track_anthropic(
            anthropic.Anthropic(api_key="sk-ant-fluxgate-demo", base_url=base_url, max_retries=0)
        )
        # Feature bound on the client; user and team come from tracking_context per call.
        self.chat = oa.with_context(feature="chat")
        self.code_review = oa.with_context(feature="code-review")
        self.embeddings = oa.with_context(feature="embeddings-search")
        self.triage = oa.with_context(feature="ticket-triage")
        self.anthropic = an
        self._summaries = 0

    def plan(self, n: int) -> list[Call]:
        makers = [
            self._chat,
            self._summarize,
            self._embeddings_search,
            self._chat,
            self._code_review,
            self._translation,
            self._embeddings_search,
            self._ticket_triage,
        ]
        calls = [makers[i % len(makers)](i) for i in range(n)]
        # Provider failures, spread over the features: alternately a 500 and a 429.
        for i in range(5, n, 7):
            if (i // 7) % 2 == 0:
                calls[i].reply = FakeReply(status=500, error_message="The server had an error.")
            else:
                calls[i].reply = FakeReply(
                    status=429, error_message="Rate limit reached.", headers={"retry-after": "1"}
                )
        return calls

    def _delay(self, low_ms: int, high_ms: int) -> float:
        return self.rng.uniform(low_ms, high_ms) / 1000

    def _end_user(self) -> dict[str, str]:
        n = self.rng.randint(1, 40)
        return {"id": f"cust_{n:03d}", "email": f"customer{n}@example.org"}

    # -- features ----------------------------------------------------------------------

    def _chat(self, i: int) -> Call:
        """Customer chat on gpt-4o-mini; every third turn streamed; OpenAI prompt caching."""
        turns = self.rng.randint(1, 8)
        reply = FakeReply(
            text="Sure! Here is how to export your invoices as CSV.",
            input_tokens=300 + 150 * turns,
            cached_tokens=1024 if turns > 4 else 0,
            output_tokens=self.rng.randint(40, 220),
            delay=self._delay(20, 60),
        )
        context = {
            "user": self._end_user(),
            "team": "growth",
            "session_id": f"sess-{self.rng.randint(1, 9)}",
            "conversation_id": f"conv-{self.rng.randint(1, 15)}",
        }
        messages = [{"role": "user", "content": "How do I export my invoices?"}]

        def run() -> None:
            if i % 3 == 0:
                stream = self.chat.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=messages,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                for _chunk in stream:
                    pass
            else:
                self.chat.chat.completions.create(model="gpt-4o-mini", messages=messages)

        return Call("chat", run, context, reply)

    def _summarize(self, i: int) -> Call:
        """Document summaries on Claude Sonnet with a cached system prompt."""
        first = self._summaries == 0
        self._summaries += 1
        reply = FakeReply(
            text="Support volume rose 12%; response times improved; billing exports dominate.",
            input_tokens=self.rng.randint(150, 600),
            cache_write_tokens=4200 if first else 0,
            cached_tokens=0 if first else 4200,
            output_tokens=self.rng.randint(120, 400),
            delay=self._delay(60, 140),
        )

        def run() -> None:
            with tracking_context(feature="summarize", step="summarize-report"):
                self.anthropic.messages.create(
                    model="claude-sonnet-4-6",
                    max_tokens=512,
                    system=[
                        {
                            "type": "text",
                            "text": LONG_DOCUMENT,
                            "cache_control": {"type": "ephemeral"},
                        }
                    ],
                    messages=[{"role": "user", "content": "Summarise the review in 3 bullets."}],
                )

        return Call("summarize", run, {"team": "support"} if i % 2 else {}, reply)

    def _embeddings_search(self, i: int) -> Call:
        """Query embeddings for search."""
        reply = FakeReply(input_tokens=self.rng.randint(8, 60), delay=self._delay(5, 15))
        query = self.rng.choice(["refund policy", "sso setup okta", "export invoices csv"])

        def run() -> None:
            self.embeddings.embeddings.create(model="text-embedding-3-small", input=query)

        return Call("embeddings-search", run, {"team": "search"}, reply)

    def _code_review(self, i: int) -> Call:
        """Pull-request review with a reasoning model through the Responses API."""
        reasoning = self.rng.randint(300, 1500)
        reply = FakeReply(
            text="Looks good; consider handling the empty-list case in parse_rows().",
            input_tokens=self.rng.randint(2000, 6000),
            reasoning_tokens=reasoning,
            output_tokens=reasoning + self.rng.randint(80, 300),
            delay=self._delay(80, 160),
        )

        def run() -> None:
            self.code_review.responses.create(
                model="o4-mini",
                input="Review this diff:\n- rows = parse(x)\n+ rows = parse(x) or []",
            )

        return Call("code-review", run, {"user": self._staff("alice"), "team": "search"}, reply)

    def _translation(self, i: int) -> Call:
        """Help-centre translation on Claude Haiku, streamed with ``messages.stream()``."""
        reply = FakeReply(
            text="Pour exporter vos factures, ouvrez Facturation puis Exporter.",
            input_tokens=self.rng.randint(200, 900),
            output_tokens=self.rng.randint(200, 900),
            delay=self._delay(30, 90),
        )

        def run() -> None:
            with (
                tracking_context(feature="translation", metadata={"target_language": "fr"}),
                self.anthropic.messages.stream(
                    model="claude-haiku-4-5",
                    max_tokens=1024,
                    messages=[{"role": "user", "content": "Translate to French: ..."}],
                ) as stream,
            ):
                for _text in stream.text_stream:
                    pass

        return Call("translation", run, {}, reply)

    def _ticket_triage(self, i: int) -> Call:
        """Ticket triage on a self-hosted, OpenAI-compatible model: no known price."""
        reply = FakeReply(
            text='{"queue": "billing", "priority": "p2"}',
            input_tokens=self.rng.randint(300, 800),
            output_tokens=self.rng.randint(10, 30),
            delay=self._delay(15, 40),
        )

        def run() -> None:
            self.triage.chat.completions.create(
                model=SELF_HOSTED_MODEL,
                messages=[{"role": "user", "content": "Triage: 'I was charged twice'"}],
            )

        return Call("ticket-triage", run, {"team": "support"}, reply)

    @staticmethod
    def _staff(username: str) -> Any:
        User = get_user_model()
        return User._default_manager.get(**{User.USERNAME_FIELD: username})


# -- report ----------------------------------------------------------------------------


@dataclass
class FeatureCost:
    """One row of the demo's cost table."""

    feature: str
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal | None  # None: nothing in this feature could be priced
    unpriced: int  # calls made but not priced (unknown model)
    p50_latency_ms: float | None


def cost_by_feature(run_id: str) -> list[FeatureCost]:
    """Aggregate the events of one demo run by feature."""
    events = Event.objects.filter(metadata__demo_run=run_id)
    unpriced = (
        Q(cost_usd__isnull=True) & ~Q(cost_source="not-billed") & ~Q(status__in=ERROR_STATUSES)
    )
    rows = (
        events.values("feature")
        .order_by("feature")
        .annotate(
            requests=Count("id"),
            errors=Count("id", filter=Q(status__in=ERROR_STATUSES)),
            tokens_in=Sum("input_tokens"),
            tokens_out=Sum("output_tokens"),
            cost=Sum("cost_usd"),
            n_unpriced=Count("id", filter=unpriced),
        )
    )
    latencies: dict[str, list[float]] = defaultdict(list)
    for feature, latency in events.exclude(latency_ms=None).values_list("feature", "latency_ms"):
        if latency is not None:  # excluded above; this narrows the type
            latencies[feature].append(latency)
    return [
        FeatureCost(
            feature=row["feature"] or "(none)",
            requests=row["requests"],
            errors=row["errors"],
            input_tokens=row["tokens_in"] or 0,
            output_tokens=row["tokens_out"] or 0,
            cost_usd=row["cost"],
            unpriced=row["n_unpriced"],
            p50_latency_ms=(
                statistics.median(latencies[row["feature"]]) if latencies[row["feature"]] else None
            ),
        )
        for row in rows
    ]


def format_cost_table(rows: list[FeatureCost]) -> str:
    """A plain-text table; unpriced calls are counted apart, never shown as $0."""
    header = ("feature", "requests", "errors", "tokens in", "tokens out", "cost (USD)", "p50 ms")
    body = [
        (
            r.feature,
            str(r.requests),
            str(r.errors),
            f"{r.input_tokens:,}",
            f"{r.output_tokens:,}",
            _cost_cell(r.cost_usd, r.unpriced),
            "-" if r.p50_latency_ms is None else f"{r.p50_latency_ms:.0f}",
        )
        for r in rows
    ]
    priced = [r.cost_usd for r in rows if r.cost_usd is not None]
    total = sum(priced, Decimal(0)) if priced else None
    footer = (
        "total",
        str(sum(r.requests for r in rows)),
        str(sum(r.errors for r in rows)),
        f"{sum(r.input_tokens for r in rows):,}",
        f"{sum(r.output_tokens for r in rows):,}",
        _cost_cell(total, sum(r.unpriced for r in rows)),
        "",
    )
    widths = [max(len(line[c]) for line in [header, *body, footer]) for c in range(len(header))]

    def fmt(line: tuple[str, ...]) -> str:
        cells = [line[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join(["Cost by feature", fmt(header), rule, *map(fmt, body), rule, fmt(footer)])


def _cost_cell(cost: Decimal | None, unpriced: int) -> str:
    if cost is None:
        return "unpriced" if unpriced else "-"
    rounded = cost.quantize(Decimal("0.000001"))
    text = "<$0.000001" if rounded == 0 and cost > 0 else f"${rounded}"
    return f"{text} + {unpriced} unpriced" if unpriced else text
