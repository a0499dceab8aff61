"""FluxGate's API throttles count atomically: concurrent requests (threads, and processes
sharing a Redis cache) against a limit of N let exactly N through; failed API-key
authentications are limited per client address (429 with Retry-After), without locking
out other addresses or, after the window, the throttled one."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection, connections
from django.test import Client, override_settings

from fluxgate_django.api.throttling import AuthFailureThrottle, IngestRateThrottle, client_address
from fluxgate_django.models import Event
from tests.api_helpers import API, event_payload, key_client, make_world, post_json

ROOT = Path(__file__).resolve().parent.parent
EVENTS = f"{API}events/"
REDIS_URL = os.environ.get("FLUXGATE_TEST_THROTTLE_REDIS_URL", "redis://127.0.0.1:6379/14")
MOMENT = 6000.0  # the start of a one-minute window


def clock_from(moment: float) -> Callable[..., float]:
    """A throttle clock at ``moment`` now and running from there in real time, far from a
    window's end."""
    started = time.monotonic()
    return lambda *self: moment + (time.monotonic() - started)


INGEST_600 = {"DEFAULT_THROTTLE_RATES": {"fluxgate_ingest": "600/min"}}


def redis_caches(url: str = REDIS_URL) -> dict[str, Any]:
    return {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url}}


def redis_or_skip() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.skip(
            f"needs a Redis server at {REDIS_URL} (FLUXGATE_TEST_THROTTLE_REDIS_URL): {exc}"
        )


def fluxgate(**options: Any) -> Any:
    return override_settings(FLUXGATE={**settings.FLUXGATE, **options})


def concurrently(count: int, threads: int, request: Callable[[Client], int]) -> list[int]:
    """``count`` requests from ``threads`` threads started together; their statuses."""
    barrier = threading.Barrier(threads)
    local = threading.local()

    def start() -> None:
        local.client = Client()
        barrier.wait()

    def one(_: int) -> int:
        try:
            return request(local.client)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(threads, initializer=start) as pool:
        return list(pool.map(one, range(count)))


def ingest(secret: str) -> Callable[[Client], int]:
    def send(client: Client) -> int:
        headers = {"Authorization": f"Bearer {secret}"}
        return post_json(client, EVENTS, event_payload(), headers=headers).status_code

    return send


def wrong_key(address: str) -> Callable[[Client], int]:
    def send(client: Client) -> int:
        headers = {"Authorization": "Bearer fg_live_notakey0000000000000000"}
        return client.get(EVENTS, headers=headers, REMOTE_ADDR=address).status_code

    return send


# ----------------------------------------------------------------------------- ingest


@pytest.mark.django_db(transaction=True)
def test_900_concurrent_ingest_requests_against_600_per_minute_let_exactly_600_through(
    monkeypatch,
):
    clock = clock_from(MOMENT)
    monkeypatch.setattr(IngestRateThrottle, "timer", clock)
    w = make_world()
    with override_settings(REST_FRAMEWORK=INGEST_600):
        statuses = concurrently(900, 48, ingest(w.secret_a))
    assert clock() < MOMENT + 50  # all in one window (else the previous one counts too)
    assert collections.Counter(statuses) == {202: 600, 429: 300}
    assert Event.objects.filter(team=w.team_a).count() == 600


@pytest.mark.django_db(transaction=True)
def test_processes_sharing_a_redis_cache_let_exactly_the_limit_through_in_total():
    redis_or_skip()
    w = make_world()
    with override_settings(CACHES=redis_caches()):
        from django.core.cache import cache

        cache.clear()  # (our own Redis database)
        try:
            outputs = run_children("ingest", w.secret_a, processes=2, requests=450, threads=24)
            shared = cache.get(f"throttle_fluxgate_ingest_key{w.key_a.pk}:{int(MOMENT // 60)}")
        finally:
            cache.clear()
    total = sum((collections.Counter(o) for o in outputs), collections.Counter())
    assert total == {"202": 600, "429": 300}
    assert all(o.get("202", 0) > 0 for o in outputs)  # both processes got some through
    assert shared == 900  # every request counted once, refused ones included
    assert Event.objects.filter(team=w.team_a).count() == 600


def test_a_redis_counter_gets_an_expiry_and_counts_without_lua_too(monkeypatch):
    redis_or_skip()
    import redis

    from fluxgate_django.api import throttling

    raw = redis.Redis.from_url(REDIS_URL)
    with override_settings(CACHES=redis_caches()):
        from django.core.cache import caches

        cache = caches["default"]
        cache.clear()
        try:
            with monkeypatch.context() as patch:  # one script call, not Django's incr/add
                patch.setattr(cache, "incr", None)
                patch.setattr(cache, "add", None)
                counts = [throttling.incr_window(cache, "t:1", 1, 121) for _ in range(3)]
            assert counts == [1, 2, 3]
            assert 115 < raw.ttl(cache.make_key("t:1")) <= 121
            assert cache.get("t:1") == 3  # an ordinary cache value too

            def no_scripts(*args: Any) -> int:
                raise redis.ResponseError("NOSCRIPT scripting is disabled")

            monkeypatch.setattr(throttling, "_incr_by_script", no_scripts)
            monkeypatch.setattr(throttling, "_scripting", [True])
            assert throttling.incr_window(cache, "t:1", 2, 121) == 5
            assert throttling.incr_window(cache, "t:2", 1, 121) == 1  # (cache.add)
            assert throttling._scripting == [False]
            assert 115 < raw.ttl(cache.make_key("t:2")) <= 121
        finally:
            cache.clear()


def run_children(mode: str, secret: str, *, processes: int, requests: int, threads: int) -> list:
    db = connection.settings_dict
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    if db["ENGINE"].endswith("postgresql"):
        env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    code = "import django; django.setup(); from tests.test_api_throttles import child; child()"
    args = [sys.executable, "-c", code, mode, secret, str(requests), str(threads), REDIS_URL]
    procs = [
        subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(processes)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
        outputs.append(json.loads(out))
    return outputs


def child() -> None:
    """A worker process (run by :func:`run_children`): ``mode secret requests threads
    redis_url``; prints ``{status: count}``."""
    mode, secret, requests, threads, redis_url = sys.argv[1:]
    clock = clock_from(MOMENT)
    IngestRateThrottle.timer = clock  # type: ignore[method-assign,assignment]
    AuthFailureThrottle.timer = staticmethod(clock)  # type: ignore[assignment]
    send = ingest(secret) if mode == "ingest" else wrong_key("198.51.100.9")
    with override_settings(CACHES=redis_caches(redis_url), REST_FRAMEWORK=INGEST_600):
        statuses = concurrently(int(requests), int(threads), send)
    assert clock() < MOMENT + 50, "took longer than a window"
    print(json.dumps(collections.Counter(str(s) for s in statuses)))


# ----------------------------------------------------------------------------- failed keys


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [MOMENT + 10]
    monkeypatch.setattr(AuthFailureThrottle, "timer", staticmethod(lambda: now[0]))
    return now


@pytest.mark.django_db
def test_4000_wrong_keys_from_one_address_are_throttled_after_the_configured_failures(clock):
    w = make_world()
    attacker, other = "203.0.113.7", "203.0.113.8"
    wrong = {"Authorization": "Bearer fg_live_wrongwrongwrongwrong"}
    with fluxgate(AUTH_FAILURE_RATE="25/min"):
        client = Client()
        responses = [client.get(EVENTS, headers=wrong, REMOTE_ADDR=attacker) for _ in range(4000)]
        statuses = [r.status_code for r in responses]
        assert statuses[:25] == [401] * 25
        assert statuses[25:] == [429] * 3975
        # Told how long to wait: until the window (a minute from MOMENT) ends.
        assert {r.headers["Retry-After"] for r in responses[25:]} == {"50"}
        assert "failed API-key authentications" in responses[-1].json()["detail"]

        # Another address is not throttled (its own failures are counted on their own).
        assert client.get(EVENTS, headers=wrong, REMOTE_ADDR=other).status_code == 401
        # A correct key from elsewhere works; from the throttled address it waits too
        # (a guess that happens to be right must not be told apart).
        good = key_client(w.secret_a)
        assert good.get(EVENTS, REMOTE_ADDR=other).status_code == 200
        assert post_json(good, EVENTS, event_payload(), REMOTE_ADDR=other).status_code == 202
        assert good.get(EVENTS, REMOTE_ADDR=attacker).status_code == 429
        assert good.get(EVENTS).status_code == 200  # (the test client's own 127.0.0.1)

        clock[0] = MOMENT + 60  # the next window
        assert good.get(EVENTS, REMOTE_ADDR=attacker).status_code == 200
        assert client.get(EVENTS, headers=wrong, REMOTE_ADDR=attacker).status_code == 401


@pytest.mark.django_db
def test_the_default_limit_is_20_failures_a_minute(clock):
    client = Client()
    statuses = [client.get(EVENTS, **bearer("x" * 40), REMOTE_ADDR="192.0.2.1") for _ in range(22)]
    assert [s.status_code for s in statuses] == [401] * 20 + [429, 429]


def bearer(secret: str) -> dict[str, Any]:
    return {"headers": {"Authorization": f"Bearer {secret}"}}


@pytest.mark.django_db
def test_malformed_bearer_headers_count_as_failures(clock):
    client = Client()
    with fluxgate(AUTH_FAILURE_RATE="3/min"):
        for secret in ("a b", "\x00nul", "é" * 5):
            response = client.get(EVENTS, HTTP_AUTHORIZATION=f"Bearer {secret}")
            assert response.status_code == 401
        assert client.get(EVENTS, **bearer("fg_live_x")).status_code == 429


@pytest.mark.django_db(transaction=True)
def test_concurrent_wrong_keys_get_exactly_the_configured_number_of_401s(clock):
    with fluxgate(AUTH_FAILURE_RATE="20/min"):
        statuses = concurrently(400, 32, wrong_key("203.0.113.50"))
    assert collections.Counter(statuses) == {401: 20, 429: 380}


@pytest.mark.django_db(transaction=True)
def test_failed_keys_are_counted_across_processes_sharing_redis():
    redis_or_skip()
    with override_settings(CACHES=redis_caches()):
        from django.core.cache import cache

        cache.clear()
        try:
            outputs = run_children("auth", "-", processes=2, requests=150, threads=12)
        finally:
            cache.clear()
    total = sum((collections.Counter(o) for o in outputs), collections.Counter())
    assert total == {"401": 20, "429": 280}


@pytest.mark.django_db
def test_ipv6_clients_are_counted_per_64_and_forwarded_for_is_only_trusted_with_num_proxies(
    clock,
):
    client = Client()
    with fluxgate(AUTH_FAILURE_RATE="2/min"):
        for address in ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9"):  # one /64
            assert client.get(EVENTS, **bearer("k"), REMOTE_ADDR=address).status_code == 401
        assert client.get(EVENTS, **bearer("k"), REMOTE_ADDR="2001:db8:1:2::77").status_code == 429
        assert client.get(EVENTS, **bearer("k"), REMOTE_ADDR="2001:db8:1:3::1").status_code == 401

        # Without NUM_PROXIES a client's X-Forwarded-For is ignored: no way around the limit.
        spoofed = [
            client.get(
                EVENTS, **bearer("k"), REMOTE_ADDR="192.0.2.9", HTTP_X_FORWARDED_FOR=f"10.0.0.{i}"
            )
            for i in range(3)
        ]
        assert [r.status_code for r in spoofed] == [401, 401, 429]
        # Behind one proxy, the address it reports is the client's.
        with override_settings(REST_FRAMEWORK={"NUM_PROXIES": 1}):
            proxied = [
                client.get(EVENTS, **bearer("k"), REMOTE_ADDR="10.9.9.9", HTTP_X_FORWARDED_FOR=xff)
                for xff in ("198.51.100.1", "1.1.1.1, 198.51.100.1", "198.51.100.2")
            ]
            assert [r.status_code for r in proxied] == [401, 401, 401]
            again = client.get(
                EVENTS, **bearer("k"), REMOTE_ADDR="10.9.9.9", HTTP_X_FORWARDED_FOR="198.51.100.1"
            )
            assert again.status_code == 429


def test_client_addresses():
    class Request:
        def __init__(self, **meta: str) -> None:
            self.META = meta

    assert client_address(Request(REMOTE_ADDR="203.0.113.1")) == "203.0.113.1"
    assert client_address(Request(REMOTE_ADDR="::ffff:203.0.113.1")) == "203.0.113.1"
    assert client_address(Request(REMOTE_ADDR="2001:db8::1:2:3:4")) == "2001:db8::/64"
    assert client_address(Request()) == "unknown"


@pytest.mark.django_db
def test_an_unreachable_cache_never_locks_clients_out(clock, monkeypatch):
    from django.core.cache import cache

    w = make_world()

    def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("cache down")

    for name in ("get", "incr", "add"):
        monkeypatch.setattr(cache, name, down)
    with fluxgate(AUTH_FAILURE_RATE="1/min"):
        client = Client()
        assert client.get(EVENTS, **bearer("fg_live_wrong")).status_code == 401
        assert client.get(EVENTS, **bearer("fg_live_wrong")).status_code == 401
        assert key_client(w.secret_a).get(EVENTS).status_code == 200


@pytest.mark.django_db
def test_the_failure_throttle_can_be_turned_off(clock):
    client = Client()
    with fluxgate(AUTH_FAILURE_RATE=None):
        statuses = {client.get(EVENTS, **bearer("fg_live_nope")).status_code for _ in range(60)}
    assert statuses == {401}
