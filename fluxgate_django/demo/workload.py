"""The demo workload: the planned LLM calls of each feature (tracked SDK clients, and what
the fake provider answers each), and running them under the demo's tracking context.

The features cover several teams and users; streams; prompt-cache reads and writes;
reasoning tokens; embeddings; provider errors (500 and 429) that are caught; and a
self-hosted model FluxGate has no price for (shown as "unpriced", never as $0).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import BudgetExceeded, track_anthropic, track_openai, tracking_context
from ..testing import FakeReply
from .users import demo_user, team_of

#: An OpenAI-compatible model served in-house: genai-prices cannot know its price.
SELF_HOSTED_MODEL = "acme-llama-3.3-70b-instruct"

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

        return Call("code-review", run, {"user": demo_user("alice"), "team": "search"}, reply)

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


def run_calls(
    plan: list[Call],
    users: list[Any],
    fake: Any,
    run_id: str,
    log: Callable[[str], Any] | None = None,
) -> tuple[int, int]:
    """Make the planned calls, tagged with ``run_id``; returns how many provider errors were
    caught and how many calls a budget refused. ``fake``: the in-process fake provider
    (its replies are queued), or None. ``log``: called with a line per call (and per
    caught error) when given."""
    import anthropic
    import openai

    caught = refused = 0
    with tracking_context(metadata={"demo_run": run_id}, tags=["demo"]):
        for index, call in enumerate(plan):
            if fake is not None and call.reply is not None:
                fake.enqueue(call.reply)
            context = dict(call.context)
            if "user" not in context:
                user = users[index % len(users)]
                context["user"] = user
                context.setdefault("team", team_of(user))
            with tracking_context(**context):
                try:
                    call.run()
                except (openai.APIError, anthropic.APIError) as exc:
                    caught += 1
                    if log is not None:
                        log(f"  {call.feature}: caught {type(exc).__name__}")
                except BudgetExceeded:
                    # (A rerun: a demo budget is exhausted. Not sent, so the reply queued
                    # for it is not used: drop it, or the next call would get it.)
                    refused += 1
                    if fake is not None:
                        fake.reset()
                    if log is not None:
                        log(f"  {call.feature}: refused by a budget")
            if log is not None:
                log(f"  {index + 1:>4} {call.feature}")
    return caught, refused
