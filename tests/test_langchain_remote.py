"""FluxGateHandler outside Django: batches posted to a FluxGate site's ingest API from a
background thread, against a loopback HTTP server that can be told to fail."""

from __future__ import annotations

import http.server
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from langchain_openai import ChatOpenAI

from fluxgate_django.models import Event
from fluxgate_django.testing import FakeReply
from fluxgate_langchain import FluxGateHandler, RemoteSender
from fluxgate_langchain.remote import INGEST_PATH

ROOT = Path(__file__).resolve().parent.parent


class IngestServer:
    """Records the event batches it is sent; fails the first ``fail_first`` requests with
    ``status`` (503: the site is briefly down), or every request while ``down`` is set."""

    def __init__(self, *, fail_first: int = 0, status: int = 503, port: int = 0) -> None:
        self.fail_first = fail_first
        self.status = status
        self.down = False
        self.requests: list[dict] = []
        self.batches: list[list[dict]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with server.lock:
                    server.requests.append(
                        {"path": self.path, "auth": self.headers.get("Authorization")}
                    )
                    failing = server.down or len(server.requests) <= server.fail_first
                    if not failing:
                        server.batches.append(json.loads(body)["events"])
                status = server.status if failing else 202
                payload = b'{"ok": true}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                conn, addr = super().get_request()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return conn, addr

        self.httpd = Server(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def events(self) -> list[dict]:
        with self.lock:
            return [e for batch in self.batches for e in batch]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = IngestServer()
    yield srv
    srv.close()


def fast_sender(url: str, **options) -> RemoteSender:
    options = {"interval": 0.02, "initial_backoff": 0.02, "max_backoff": 0.1, **options}
    return RemoteSender(url, "fg_live_test_secret", **options)


def test_batches_are_delivered_exactly_once_after_a_brief_outage(caplog):
    server = IngestServer(fail_first=3, status=503)
    sender = fast_sender(server.url)
    try:
        with caplog.at_level(logging.WARNING, logger="fluxgate"):
            for i in range(250):
                assert sender.send({"tracking_id": f"t{i}", "n": i})
            assert sender.flush(timeout=10)
        assert [e["tracking_id"] for e in server.events] == [f"t{i}" for i in range(250)]
        assert all(len(batch) <= 100 for batch in server.batches)
        assert len(server.requests) == 3 + len(server.batches)  # three 503s, then success
        assert {r["path"] for r in server.requests} == {INGEST_PATH}
        assert {r["auth"] for r in server.requests} == {"Bearer fg_live_test_secret"}
        assert (sender.sent, sender.dropped, sender.rejected, sender.pending) == (250, 0, 0, 0)
        assert any("retrying" in r.getMessage() for r in caplog.records)
    finally:
        sender.close(timeout=1)
        server.close()


def test_a_full_queue_is_reported_and_counted_not_silently_dropped(server, caplog):
    server.down = True
    sender = fast_sender(server.url, max_queue=10)
    try:
        with caplog.at_level(logging.ERROR, logger="fluxgate"):
            accepted = [sender.send({"tracking_id": f"t{i}"}) for i in range(15)]
        assert accepted == [True] * 10 + [False] * 5
        assert sender.dropped == 5
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert errors and "queue" in errors[0] and "dropped" in errors[0]
        assert not sender.flush(timeout=0.2)  # still down: nothing is lost meanwhile
        assert sender.pending == 10

        server.down = False
        assert sender.flush(timeout=10)
        assert sorted(e["tracking_id"] for e in server.events) == sorted(f"t{i}" for i in range(10))
    finally:
        sender.close(timeout=1)


def test_connection_refused_is_retried_until_the_site_is_up(caplog):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sender = fast_sender(f"http://127.0.0.1:{port}")
    server = None
    try:
        for i in range(5):
            sender.send({"tracking_id": f"t{i}"})
        assert not sender.flush(timeout=0.3)
        server = IngestServer(port=port)
        assert sender.flush(timeout=10)
        assert [e["tracking_id"] for e in server.events] == [f"t{i}" for i in range(5)]
    finally:
        sender.close(timeout=1)
        if server:
            server.close()


def test_a_refused_batch_is_counted_and_logged(caplog):
    server = IngestServer(fail_first=1, status=401)
    sender = fast_sender(server.url)
    try:
        with caplog.at_level(logging.ERROR, logger="fluxgate"):
            sender.send({"tracking_id": "t0"})
            assert sender.flush(timeout=5)
        assert sender.rejected == 1 and sender.sent == 0
        assert any("HTTP 401" in r.getMessage() for r in caplog.records)
    finally:
        sender.close(timeout=1)
        server.close()


@pytest.mark.django_db
def test_handler_with_api_key_sends_events_to_the_site(server, fake):
    fake.enqueue(FakeReply(input_tokens=1000, cached_tokens=200, output_tokens=500))
    llm = ChatOpenAI(
        model="gpt-4o", api_key="sk-test", base_url=fake.openai_base_url, max_retries=0
    )
    handler = FluxGateHandler(
        feature="rag", user={"id": "u1", "email": "u1@example.com"}, team="search",
        api_key="fg_live_handler_test", base_url=server.url,
    )  # fmt: skip
    llm.invoke("hi", config={"callbacks": [handler], "metadata": {"fluxgate_session_id": "s1"}})
    sender = handler._sink.sender
    assert sender.flush(timeout=10)

    assert not Event.objects.exists()  # explicit api_key/base_url: sent, not stored here
    (event,) = server.events
    assert (event["provider"], event["model"], event["operation"], event["status"]) == (
        "openai",
        "gpt-4o",
        "chat",
        "SUCCESS",
    )
    assert (event["input_tokens"], event["cache_read_tokens"], event["output_tokens"]) == (
        1000,
        200,
        500,
    )
    assert event["cost_usd"] is None and event["cost_source"] == ""  # the site prices it
    assert event["usage_reported"] is True and event["cache_write_1h_tokens"] == 0
    assert (event["feature"], event["team"], event["session_id"]) == ("rag", "search", "s1")
    assert (event["end_user_id"], event["end_user_email"]) == ("u1", "u1@example.com")
    assert event["source"] == "langchain" and event["run_id"] and event["tracking_id"]
    assert "budget_reservation" not in event


def test_handler_needs_both_url_and_key(monkeypatch):
    monkeypatch.delenv("FLUXGATE_URL", raising=False)
    monkeypatch.delenv("FLUXGATE_API_KEY", raising=False)
    with pytest.raises(ValueError, match="base_url"):
        FluxGateHandler(api_key="fg_live_x")


def _run_outside_django(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "FLUXGATE"))}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**clean, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


IMPORT_CHECK = """
    import sys
    import fluxgate_langchain
    from fluxgate_langchain import FluxGateHandler
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("django", "fluxgate_django"))
    assert not loaded, loaded
    """


def test_import_needs_neither_django_nor_the_app():
    result = _run_outside_django(IMPORT_CHECK + "print('ok')\n", {})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_outside_django_events_go_to_the_site_from_env_and_are_flushed_at_exit(server, fake):
    fake.enqueue(FakeReply(input_tokens=1000, cache_write_tokens=1000, cached_tokens=2000))
    code = (
        IMPORT_CHECK
        + f"""
    from langchain_anthropic import ChatAnthropic
    llm = ChatAnthropic(model="claude-sonnet-4-6", api_key="sk-ant-test",
                        base_url={fake.anthropic_base_url!r}, max_retries=0)
    llm.invoke("hi", config={{"callbacks": [FluxGateHandler(feature="offline-job")]}})
    # no explicit flush: the atexit hook delivers the queued event
    """
    )
    result = _run_outside_django(
        code, {"FLUXGATE_URL": server.url, "FLUXGATE_API_KEY": "fg_live_env_key"}
    )
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 5
    while not server.events and time.monotonic() < deadline:
        time.sleep(0.01)
    (event,) = server.events
    assert (event["provider"], event["operation"], event["feature"]) == (
        "anthropic",
        "messages",
        "offline-job",
    )
    assert (event["input_tokens"], event["cache_write_tokens"], event["cache_read_tokens"]) == (
        4000,
        1000,
        2000,
    )
    assert server.requests[0]["auth"] == "Bearer fg_live_env_key"


def test_outside_django_without_a_site_warns_that_events_cannot_be_sent(fake):
    fake.enqueue(FakeReply())
    code = (
        IMPORT_CHECK
        + f"""
    import logging
    logging.basicConfig(level=logging.WARNING)
    from langchain_openai import ChatOpenAI
    llm = ChatOpenAI(model="gpt-4o", api_key="sk-test", base_url={fake.openai_base_url!r},
                     max_retries=0)
    handler = FluxGateHandler()
    print(llm.invoke("hi", config={{"callbacks": [handler]}}).content)
    """
    )
    result = _run_outside_django(code, {})
    assert result.returncode == 0, result.stderr
    assert "Hello from the fake provider." in result.stdout
    assert result.stderr.count("LangChain events cannot be recorded") == 1
    assert "FLUXGATE_URL" in result.stderr


def test_remote_events_are_made_by_the_core_record_builder():
    """The remote sink builds through ``make_record``: the same length limits, secret
    masking and cost decisions as an event recorded in-process."""
    import uuid as uuid_module

    from fluxgate_django.builder import TEXT_LIMITS
    from fluxgate_django.context import EMPTY_CONTEXT
    from fluxgate_django.records import CallInfo, Status, Usage
    from fluxgate_langchain.runs import LLMRun
    from fluxgate_langchain.sinks import remote_event

    ctx = EMPTY_CONTEXT.merge(feature="f" * 300, user={"id": "u1", "email": "u1@example.com"})
    parent = uuid_module.uuid4()
    run = LLMRun(uuid_module.uuid4(), parent, ctx, "openai", "gpt-4o", "chat")
    info = CallInfo(provider="openai", operation="chat", requested_model="gpt-4o")
    info.status = Status.ERROR
    error = RuntimeError("Incorrect API key provided: sk-abcdefghijklmnop")
    event = remote_event(run, info, Usage(), latency_ms=12.0, error=error, error_type="AuthError")

    assert len(event["feature"]) == TEXT_LIMITS["feature"]
    assert (
        "sk-abcdefghijklmnop" not in event["error_message"] and "sk-***" in event["error_message"]
    )
    assert (event["cost_usd"], event["cost_source"]) == (None, "not-billed")
    assert (event["run_id"], event["parent_run_id"]) == (str(run.run_id), str(parent))
    assert event["tracking_id"] == str(run.tracking_id)
    assert event["created_at"].endswith("+00:00")  # aware UTC, whatever the local site says
    assert (event["end_user_id"], event["end_user_email"]) == ("u1", "u1@example.com")
    assert not {"budget_reservation", "user_pk", "content"} & set(event)
    assert event["usage_reported"] is True
