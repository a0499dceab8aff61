"""The demo's gateway part: the site's own LLM gateway (``fluxgate/v1/``,
``fluxgate/anthropic/``) served in-process by uvicorn on a free loopback port, in front
of the fake provider, called with the stock ``openai`` and ``anthropic`` SDKs and a
FluxGate key of the ``search`` team (made for the run, revoked after it).

Three calls: an OpenAI chat call passed through, an Anthropic stream passed through, and
a streamed OpenAI call of ``route:faq`` whose OpenAI model is down (a 503, when the fake
runs in-process) and whose Claude model serves it, translated back to OpenAI chunks.
(Its own models: the failure counts against no circuit the rest of the demo uses.)
Each is the team's event (``source="gateway"``, feature ``gateway``); what each cost is
read from the events.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

from django.test.utils import override_settings
from django.urls import NoReverseMatch, reverse

from .. import flush
from ..models import ApiKey, Event, Team
from ..testing import FakeReply
from .service import service_settings

KEY_NAME = "demo gateway"
TEAM = "search"
FEATURE = "gateway"
ROUTE = {"faq": {"models": ["openai/gpt-4.1-mini", "anthropic/claude-haiku-4-5"]}}


@dataclasses.dataclass
class GatewayCall:
    """One call through the gateway, as the demo prints it."""

    client: str  # "openai" / "anthropic": the SDK that made it
    model: str  # what it asked for
    streamed: bool
    served_by: str = "-"  # provider/model of the attempt that answered
    cost: Decimal | None = None
    failed: list[str] = dataclasses.field(default_factory=list)  # the attempts before it
    error: str = ""  # the SDK's exception, if the call failed


@dataclasses.dataclass
class GatewayDemo:
    url: str = ""
    key_prefix: str = ""
    calls: list[GatewayCall] = dataclasses.field(default_factory=list)
    skipped: str = ""  # why the gateway was not demonstrated


@contextlib.contextmanager
def serving() -> Iterator[str]:
    """The site served by uvicorn in a thread of this process, on a free loopback port:
    its base URL (stopped, and its thread joined, on leaving)."""
    import uvicorn
    from django.core.asgi import get_asgi_application

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        get_asgi_application(),
        lifespan="off",
        log_level="warning",
        access_log=False,
        loop="asyncio",
        http="h11",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="fluxgate-demo-gateway", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _mounted() -> tuple[str, str] | None:
    """The paths of the gateway's two APIs in the site's URLconf (None: not mounted)."""
    try:
        openai_path = reverse("fluxgate:openai:models").removesuffix("models")
        anthropic_path = reverse("fluxgate:anthropic:messages").removesuffix("v1/messages")
    except NoReverseMatch:
        return None
    return openai_path.rstrip("/"), anthropic_path.rstrip("/")


def run_gateway_demo(base_url: str, fake: Any, run_id: str) -> GatewayDemo:
    """The gateway's calls (see the module doc), tagged with ``run_id``."""
    import anthropic
    import openai

    if importlib.util.find_spec("uvicorn") is None:
        return GatewayDemo(
            skipped="uvicorn is not installed (pip install 'django-fluxgate[gateway]')"
        )
    paths = _mounted()
    if paths is None:
        return GatewayDemo(skipped="the site's URLconf does not include fluxgate_django.urls")
    team = Team.objects.get(slug=TEAM)
    ApiKey.objects.filter(team=team, name=KEY_NAME).delete()  # (an earlier run's)
    key, secret = ApiKey.objects.create_key(team=team, name=KEY_NAME)
    demo = GatewayDemo(key_prefix=key.prefix)
    try:
        options = service_settings(base_url)
        options["ROUTES"] = {**options["ROUTES"], **ROUTE}
        with override_settings(FLUXGATE=options), serving() as url:
            demo.url = f"{url}{paths[0].removesuffix('v1').rstrip('/')}/"
            calls = _calls(url + paths[0], url + paths[1], secret, fake)
            for index, (call, make) in enumerate(calls):
                headers = {
                    "X-FluxGate-Feature": FEATURE,
                    "X-FluxGate-Metadata": json.dumps({"demo_run": run_id, "demo_call": index}),
                }
                try:
                    make(headers)
                except (openai.APIError, anthropic.APIError) as exc:  # (shown, not raised)
                    call.error = type(exc).__name__
                demo.calls.append(call)
        flush(timeout=30)
        for index, call in enumerate(demo.calls):
            _read_events(call, run_id, index)
    finally:
        key.revoke()  # (its secret was never shown: no key is left behind that works)
    return demo


def _calls(
    openai_url: str, anthropic_url: str, secret: str, fake: Any
) -> list[tuple[GatewayCall, Callable[[dict[str, str]], Any]]]:
    import anthropic
    import openai

    oa = openai.OpenAI(base_url=openai_url, api_key=secret, max_retries=0)
    an = anthropic.Anthropic(base_url=anthropic_url, api_key=secret, max_retries=0)
    question: Any = [{"role": "user", "content": "Which plan includes SSO?"}]

    def chat(headers: dict[str, str]) -> None:
        oa.chat.completions.create(
            model="gpt-4o-mini", messages=question, max_tokens=100, extra_headers=headers
        )

    def stream(headers: dict[str, str]) -> None:
        with an.messages.stream(
            model="claude-haiku-4-5", max_tokens=100, messages=question, extra_headers=headers
        ) as events:
            events.until_done()

    def routed(headers: dict[str, str]) -> None:
        if fake is not None:
            fake.enqueue(FakeReply(status=503))  # OpenAI is down: Claude serves
        chunks = oa.chat.completions.create(
            model="route:faq",
            messages=[{"role": "user", "content": "Is SSO in the Team plan?"}],
            max_tokens=100,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=headers,
        )
        for _ in chunks:
            pass

    return [
        (GatewayCall("openai", "gpt-4o-mini", streamed=False), chat),
        (GatewayCall("anthropic", "claude-haiku-4-5", streamed=True), stream),
        (GatewayCall("openai", "route:faq", streamed=True), routed),
    ]


def _read_events(call: GatewayCall, run_id: str, index: int) -> None:
    events = list(
        Event.objects.filter(
            source="gateway", metadata__demo_run=run_id, metadata__demo_call=index
        ).order_by("fallback_attempt", "created_at")
    )
    if not events:
        return
    *failed, served = events
    call.served_by = f"{served.provider}/{served.model}"
    call.cost = served.cost_usd
    call.failed = [f"{e.provider}/{e.model}: {_why(e)}" for e in failed]


def _why(event: Event) -> str:
    """What an attempt that did not answer got: its upstream's status, else its own."""
    answered = re.match(r"upstream answered (\d{3})", event.error_message or "")
    return answered.group(1) if answered else event.status.lower()


def _cost(call: GatewayCall) -> str:
    if call.error:
        return "-"
    return "unpriced" if call.cost is None else f"${call.cost.quantize(Decimal('0.000001'))}"


def format_gateway(demo: GatewayDemo) -> str:
    """The gateway's calls as a plain-text table: what each asked for, what served it,
    and what it cost (from its event)."""
    if demo.skipped:
        return f"Gateway: not demonstrated ({demo.skipped})."
    header = ("SDK", "model", "stream", "served by", "cost (USD)", "")
    rows = [
        (
            c.client,
            c.model,
            "yes" if c.streamed else "no",
            f"failed ({c.error})" if c.error else c.served_by,
            _cost(c),
            f"(fell back from {', '.join(c.failed)})" if c.failed else "",
        )
        for c in demo.calls
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    rule = "  ".join("-" * w for w in widths[:-1])
    title = f"Through the gateway at {demo.url} (stock SDKs, team {TEAM}'s key {demo.key_prefix}…)"
    return "\n".join([title, lines[0], rule, *lines[1:]])
