"""A new user's first day with the demo (issue 15): ``scripts/demo.sh`` with busy ports
and stopped by its pid, a month of history and budgets (an alert, a refusal), the
``scripts/manage.sh`` wrapper, ``/`` of the test project, and ``fluxgate_demo`` on a
site whose user model has no e-mail field."""

from __future__ import annotations

import csv
import datetime as dt
import http.client
import http.server
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.urls import reverse

from fluxgate_django.models import Budget, BudgetAlert, Event, SpendCounter
from fluxgate_django.models.rollups import UsageRollup
from fluxgate_django.periods import local_date, window_start

REPO = Path(__file__).resolve().parent.parent
TESTPROJECT = REPO / "testproject"
THREAD_RECORDER = {"RECORDER": "thread", "RAISE_ERRORS": True}


def _script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a script run: the demo's database a fresh SQLite file here."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "FLUXGATE_FAKE_URL", "DJANGO_SETTINGS_MODULE")
        and not k.startswith(("DEMO_", "FLUXGATE_TEST"))
        and k not in ("PORT", "FAKE_PORT", "TEST_DATABASE_NAME")
    }
    env["DEMO_DATABASE_URL"] = f"sqlite:///{tmp_path / 'demo.sqlite3'}"
    env.update(extra)
    return env


# -- scripts/demo.sh with busy ports, stopped by its pid ---------------------------------


class _Decoy(http.server.ThreadingHTTPServer):
    """Another program on a port the demo wants: answers 200 to everything (so a health
    check that does not check whom it talks to passes), and counts what it is sent."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        decoy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                decoy.hits.append(f"{self.command} {self.path}")
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                body = b'{"status": "ok", "choices": []}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_HEAD = _answer

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.port = int(self.server_address[1])
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def _descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (children, their children...)."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True)
    return bool(state.stdout.strip()) and not state.stdout.strip().startswith("Z")


def _get(url: str) -> tuple[int, dict[str, str], str]:
    """GET without following redirects."""
    parts = urllib.request.urlparse(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        conn.close()


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_demo_script_with_busy_ports_serves_against_its_own_fake_and_stops_whole(tmp_path):
    fake_decoy, server_decoy = _Decoy(), _Decoy()
    log = tmp_path / "demo.log"
    env = _script_env(
        tmp_path,
        DEMO_CALLS="3",
        DEMO_DAYS="1",
        FAKE_PORT=str(fake_decoy.port),
        PORT=str(server_decoy.port),
    )
    with log.open("w") as out:
        script = subprocess.Popen(
            ["bash", str(REPO / "scripts" / "demo.sh")],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 280
        while "==> Serving" not in log.read_text():
            assert script.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        output = log.read_text()
        started = _descendants(script.pid)

        # Both ports were taken: the script says so, by what, and serves elsewhere.
        for port, what in ((fake_decoy.port, "fake provider"), (server_decoy.port, "admin")):
            note = re.search(rf"note: port {port} \(the {what}[^)]*\) is in use by (.+?); "
                             r"using port (\d+) instead", output)  # fmt: skip
            assert note, output
            assert "python" in note.group(1).lower(), note.group(1)  # this test's process
        url = re.search(r"Serving the test project at (http://127\.0\.0\.1:(\d+))/", output)
        assert url and int(url.group(2)) != server_decoy.port, output
        base = url.group(1)
        assert f"Admin:       {base}/admin/" in output

        # "/" goes to the admin; the views' LLM calls reach the demo's own fake.
        status, headers, _ = _get(f"{base}/")
        assert status == 302 and headers["Location"] == "/admin/"
        status, _, body = _get(f"{base}/chat/?q=Hello")
        assert status == 200, body
        reply = json.loads(body)
        assert "demo's fake LLM provider (fluxgate-demo-" in reply["reply"]
        assert reply["fluxgate"]["status"] == "SUCCESS"
        assert not [hit for hit in fake_decoy.hits if hit.startswith("POST")], fake_decoy.hits
        assert not server_decoy.hits

        # Stopping the script by its pid stops everything it started (runserver's
        # autoreloader child included), and frees the ports.
        assert len(started) >= 3, started  # the fake, runserver and its reloaded child
        os.kill(script.pid, signal.SIGTERM)
        script.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in started if _alive(pid)], started
        # Stopped cleanly (SIGINT first): the server's recorder wrote what it held, so no
        # journal segment of its is left for the next demo to recover (into its database).
        journal = TESTPROJECT / "var" / "fluxgate" / "journal"
        left = [p.name for p in journal.glob("*") if p.name.split("-")[0] in map(str, started)]
        assert not left, left
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{base}/", timeout=2)
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
        for pid in started:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        fake_decoy.close()
        server_decoy.close()


def test_manage_sh_runs_the_test_projects_manage_py_in_the_venv(tmp_path):
    env = _script_env(tmp_path)
    env["PATH"] = "/usr/bin:/bin"  # no venv on the PATH: the script finds .venv itself
    migrate = subprocess.run(
        ["bash", str(REPO / "scripts" / "manage.sh"), "migrate", "--noinput", "-v", "0"],
        cwd=tmp_path.anchor,  # from anywhere
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    assert (tmp_path / "demo.sqlite3").exists()  # the demo's database, as DEMO_DATABASE_URL says
    budgets = subprocess.run(
        ["bash", str(REPO / "scripts" / "manage.sh"), "fluxgate_budgets"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert budgets.returncode == 0, budgets.stdout + budgets.stderr
    assert budgets.stdout.splitlines()[-1] == "No budgets."
    assert "==>" not in budgets.stdout  # the venv's progress, if any, is on stderr


# -- "/" of the test project -----------------------------------------------------------


@pytest.mark.django_db
def test_the_test_projects_root_url_goes_to_the_admin(client, monkeypatch, admin_user):
    monkeypatch.syspath_prepend(str(TESTPROJECT))
    with override_settings(ROOT_URLCONF="testproject.urls"):
        response = client.get("/")
        assert response.status_code == 302 and response["Location"] == "/admin/"
        client.force_login(admin_user)
        assert client.get("/", follow=True).status_code == 200


# -- a month of history, budgets, an alert and a refusal ---------------------------------


def _run_demo(**options) -> str:
    out = StringIO()
    call_command("fluxgate_demo", no_input=True, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
@override_settings(FLUXGATE=THREAD_RECORDER)
def test_demo_seeds_a_month_of_history_and_budgets_with_an_alert_and_a_refusal(client, admin_user):
    output = _run_demo(calls=16)
    today = local_date()
    past_days = [today - dt.timedelta(days=n) for n in range(30, 0, -1)]

    # 30 past days, each with events of several features, teams and models, stored
    # through the recorder: priced as tracked calls are, and in the rollups.
    history = Event.objects.filter(metadata__has_key="demo_history")
    days = {local_date(e.created_at) for e in history.only("created_at")}
    assert days == set(past_days)
    assert set(history.values_list("metadata__demo_history", flat=True)) == {
        str(d) for d in past_days
    }
    assert {"search", "support", "growth"} == set(history.values_list("team__slug", flat=True))
    assert len(set(history.values_list("feature", flat=True))) >= 5
    priced = history.filter(status="SUCCESS").exclude(feature="ticket-triage")
    assert priced.exists() and not priced.filter(cost_usd__isnull=True).exists()
    assert set(priced.values_list("cost_source", flat=True)) == {"genai-prices"}
    assert history.filter(feature="ticket-triage", cost_source="unknown").exists()
    assert history.filter(status="ERROR").exists()
    assert history.filter(user__username="alice").exists()
    rollup_days = set(UsageRollup.objects.values_list("day", flat=True))
    assert set(past_days) | {today} <= rollup_days
    assert "History: " in output and "over 30 days" in output

    # The admin report (read from the rollups) has a cost for each of those days.
    client.force_login(admin_user)
    start, end = past_days[0], today
    response = client.get(
        reverse("admin:fluxgate_report"),
        {"by": "day", "start": str(start), "end": str(end), "format": "csv"},
    )
    assert response.status_code == 200
    costs = {
        row["key"]: row["cost_usd"]
        for row in csv.DictReader(io.StringIO(response.content.decode()))
    }
    for day in past_days:
        assert costs.get(str(day)) and Decimal(costs[str(day)]) > 0, (day, costs)

    # A budget per team, made after the spend and counting it: one comfortable, one near
    # its limit (its alert raised), one over it (both alerts, and a call refused).
    budgets = {b.team.slug: b for b in Budget.objects.select_related("team")}
    assert set(budgets) == {"search", "support", "growth"}

    def percent(budget: Budget) -> Decimal:
        start = window_start(budget.period)
        counter = SpendCounter.objects.filter(budget=budget, window_start=start).first()
        return counter.percent_used if counter else Decimal(0)

    def alerts(budget: Budget) -> set[int]:
        return set(
            BudgetAlert.objects.filter(budget=budget).values_list("threshold_percent", flat=True)
        )

    assert percent(budgets["search"]) < 80 and not alerts(budgets["search"])
    assert 80 <= percent(budgets["support"]) < 100 and alerts(budgets["support"]) == {80}
    assert percent(budgets["growth"]) >= 100 and alerts(budgets["growth"]) == {80, 100}
    refused = Event.objects.get(status="BUDGET_EXCEEDED", team__slug="growth")
    assert refused.cost_usd == 0
    assert "Budgets (current window)" in output
    assert "A growth chat call was refused before it was sent" in output

    # A second run seeds no day twice, keeps the budgets, and still runs.
    count = history.count()
    again = _run_demo(calls=4)
    assert Event.objects.filter(metadata__has_key="demo_history").count() == count
    assert "30 days were seeded by an earlier run" in again
    assert Budget.objects.count() == 3


# -- a user model without an e-mail field ------------------------------------------------


def test_demo_works_with_a_user_model_without_email(tmp_path):
    """``tests/noemail_users/check_demo.py`` in a pytest process of its own, with
    ``tests.settings_noemail_user`` (its own test database, on SQLite or PostgreSQL as
    this run)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TEST_DATABASE_NAME", "DJANGO_SETTINGS_MODULE")
        and not k.startswith("FLUXGATE_TEST")  # its own database file and spool
    }
    env["FLUXGATE_TEST_SQLITE"] = str(tmp_path / "noemail.sqlite3")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/noemail_users/check_demo.py",
            "--ds",
            "tests.settings_noemail_user",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    assert "1 passed" in result.stdout
