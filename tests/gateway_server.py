"""The gateway served by a real ASGI server, for the gateway tests.

``gateway_server`` (one per session): uvicorn, in a thread of the test process, serving
the test site (``tests.settings``, ``tests.urls``: ``fluxgate/`` mounted) on a loopback
port. ``gateway`` (per test): that server with ``FLUXGATE["PROVIDERS"]`` pointing at the
bundled fake provider (its keys ``sk-upstream-...``: never the caller's), a team and its
FluxGate key, and real ``openai`` / ``anthropic`` SDK clients made on the gateway's URLs.

The server runs in this process, so the site's settings (``override_settings``) and its
caches are the test's; its views use database connections of their own, so the tests are
transactional (what the test writes is committed, and so seen by the server). Events are
written by the test settings' ``sync`` recorder, off the server's loop:
:func:`fluxgate_django.flush` waits for them.

A pytest plugin: test modules load it with ``pytest_plugins = ["tests.gateway_server"]``
(and import nothing from it, so that pytest can rewrite its asserts).
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fluxgate_django import flush
from fluxgate_django.models import ApiKey, Event, Team
from fluxgate_django.testing import FakeProvider

from .helpers import fluxgate_overrides

UPSTREAM_OPENAI_KEY = "sk-upstream-openai-key"
UPSTREAM_ANTHROPIC_KEY = "sk-ant-upstream-anthropic-key"


class GatewayServer:
    """uvicorn serving Django's ASGI application on ``127.0.0.1`` (a free port)."""

    def __init__(self) -> None:
        import uvicorn
        from django.core.asgi import get_asgi_application

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(
            get_asgi_application(),
            lifespan="off",
            log_level="warning",
            access_log=False,
            loop="asyncio",
            http="h11",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [self.socket]},
            name="gateway-uvicorn",
            daemon=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()


@pytest.fixture(scope="session")
def gateway_server() -> Iterator[GatewayServer]:
    pytest.importorskip("uvicorn", reason="the gateway tests serve it with uvicorn")
    server = GatewayServer().start()
    yield server
    server.stop()


def provider_settings(fake: FakeProvider) -> dict[str, Any]:
    return {
        "openai": {"api_key": UPSTREAM_OPENAI_KEY, "base_url": fake.openai_base_url, "timeout": 10},
        "anthropic": {
            "api_key": UPSTREAM_ANTHROPIC_KEY,
            "base_url": fake.anthropic_base_url,
            "timeout": 10,
        },
    }


@dataclasses.dataclass
class Gateway:
    """One test's view of the gateway: its URLs, a team and key, SDK clients, events."""

    server: GatewayServer
    fake: FakeProvider
    team: Team
    key: ApiKey
    secret: str
    #: The provider keys the gateway sends upstream (from its PROVIDERS settings).
    upstream_openai_key = UPSTREAM_OPENAI_KEY
    upstream_anthropic_key = UPSTREAM_ANTHROPIC_KEY

    @property
    def openai_url(self) -> str:
        return f"{self.server.url}/fluxgate/v1"

    @property
    def anthropic_url(self) -> str:
        return f"{self.server.url}/fluxgate/anthropic"

    def openai(self, *, asynchronous: bool = False, **options: Any) -> Any:
        import openai

        cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
        options = {"api_key": self.secret, "max_retries": 0, **options}
        return cls(base_url=self.openai_url, **options)

    def anthropic(self, *, asynchronous: bool = False, **options: Any) -> Any:
        import anthropic

        cls = anthropic.AsyncAnthropic if asynchronous else anthropic.Anthropic
        options = {"api_key": self.secret, "max_retries": 0, **options}
        return cls(base_url=self.anthropic_url, **options)

    def events(self) -> list[Event]:
        """The team's events, oldest first (once every pending write is done)."""
        assert flush(timeout=10)
        return list(Event.objects.filter(team=self.team).order_by("created_at", "pk"))

    def new_key(self, **fields: Any) -> str:
        return ApiKey.objects.create_key(team=self.team, name="another", **fields)[1]


@pytest.fixture
def gateway(
    gateway_server: GatewayServer, fake: FakeProvider, transactional_db: None
) -> Iterator[Gateway]:
    with fluxgate_overrides(
        PROVIDERS=provider_settings(fake),
        MODELS={"fast": "openai/gpt-4o-mini", "claude-sonnet": "anthropic/claude-sonnet-4-6"},
        ROUTES={
            "summarize": {"strategy": "ordered", "models": ["fast", "claude-sonnet"]},
            "claude-first": {"strategy": "ordered", "models": ["claude-sonnet", "fast"]},
        },
        RESPONSE_CACHE={"alias": "default", "ttl": 0},
    ):
        team = Team.objects.create(name="Platform", slug="platform")
        key, secret = ApiKey.objects.create_key(team=team, name="gateway")
        yield Gateway(gateway_server, fake, team, key, secret)
        flush(timeout=10)
