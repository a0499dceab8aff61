"""The spool is the site's own: a private directory, and lines only this site can have written.

* the default directory is per site (not a shared ``/tmp`` name), created ``0700``, its
  files ``0600``; system check ``fluxgate.E009`` refuses one another user owns or can write;
* every line carries a MAC keyed by ``SECRET_KEY``: a planted line (another local user
  re-opening a used-up budget with an event of cost -$100) or another site's line is
  kept aside in ``rejected.jsonl`` and logged, never stored — and the good lines beside it
  are written anyway;
* a replay reports honest counts (written / rejected / still pending), and blames the
  database only when the database failed.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import types
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings

from fluxgate_django import BudgetExceeded
from fluxgate_django.budgets import check_budget
from fluxgate_django.checks_spool import check_spool_dir
from fluxgate_django.context import TrackingContext
from fluxgate_django.models import Budget, Event, SpendCounter, Team, to_units
from fluxgate_django.recording import spool, write_events
from tests.helpers import fluxgate_overrides
from tests.services import database_refused, make_record

pytestmark = pytest.mark.usefixtures("spool_dir")  # (tests/conftest.py)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def replay_command() -> tuple[str, CommandError | None]:
    out: list[str] = []
    try:
        call_command("fluxgate_replay_spool", stdout=types.SimpleNamespace(write=out.append))
    except CommandError as exc:
        return "".join(out), exc
    return "".join(out), None


def reserved_record(team: str, **fields):
    """A record carrying a budget reservation, as a tracked call makes it."""
    guard = check_budget(
        TrackingContext(team=team), "openai", "gpt-4o", input_tokens=14, max_output_tokens=500
    )
    assert guard is not None
    return make_record(team=team, budget_reservation=guard.as_record_field(), **fields)


def forged_line(**fields) -> str:
    """A line as another local user would plant it: well-formed, with a made-up MAC."""
    record = make_record(**fields)
    body = json.dumps({**record.to_json(compact=True), "mac": "0" * 32}, separators=(",", ":"))
    return body + "\n"


# -- the directory ------------------------------------------------------------------------------


def test_the_default_directory_is_the_sites_own_and_private(tmp_path, settings):
    settings.BASE_DIR = tmp_path / "site"
    settings.BASE_DIR.mkdir()
    with fluxgate_overrides(SPOOL_DIR=None):
        directory = spool.spool_dir()
        assert directory == tmp_path / "site" / "var" / "fluxgate"
        assert spool.append([make_record()]) == 1
        (spool_file,) = directory.glob("events-*.jsonl")
    assert mode(directory) == mode(directory.parent) == 0o700
    assert mode(spool_file) == 0o600


def test_without_a_writable_project_directory_each_site_has_its_own_temp_directory(settings):
    del settings.BASE_DIR
    made = []
    try:
        with fluxgate_overrides(SPOOL_DIR=None):
            made.append(spool.spool_dir())
        with override_settings(SECRET_KEY="another site's key"), fluxgate_overrides(SPOOL_DIR=None):
            made.append(spool.spool_dir())
        first, second = made
        assert first != second  # two sites on one host never share a spool ...
        assert first.name.startswith("fluxgate-") and first.name != "fluxgate-spool"
        assert len(first.name) > len("fluxgate-") + 16  # ... nor can a user guess its name
        assert mode(first) == 0o700
    finally:
        for path in made:
            for f in path.rglob("*"):
                f.unlink() if f.is_file() else None
            for d in sorted(path.rglob("*"), reverse=True):
                d.rmdir()
            path.rmdir()


def test_the_system_check_refuses_a_directory_others_can_write_or_own(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with fluxgate_overrides(SPOOL_DIR=str(shared)):
        errors = check_spool_dir()
    assert [e.id for e in errors] == ["fluxgate.E009"]
    assert "can be written by other users (mode 0777)" in errors[0].msg

    if os.geteuid() != 0:
        pytest.skip("handing a directory to another user needs root")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with fluxgate_overrides(SPOOL_DIR=str(theirs)):
        errors = check_spool_dir()
    assert [e.id for e in errors] == ["fluxgate.E009"]
    assert "is owned by another user" in errors[0].msg

    ours = tmp_path / "ours"
    with fluxgate_overrides(SPOOL_DIR=str(ours)):
        assert check_spool_dir() == []  # (missing: FluxGate creates it, 0700)
        spool.spool_dir()
        assert check_spool_dir() == []


# -- lines only this site wrote -----------------------------------------------------------------


@pytest.mark.django_db
def test_a_planted_line_is_never_stored_and_the_used_up_budget_stays_used_up(spool_dir, caplog):
    team = Team.objects.create(name="Search", slug="search")
    Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.011"))
    # The day's budget is used up by real calls.
    calls = [reserved_record("search") for _ in range(2)]
    assert write_events(calls) == 2
    counter = SpendCounter.objects.get(budget__team=team)
    spent = counter.spent_units
    assert spent > to_units(Decimal("0.011"))
    with pytest.raises(BudgetExceeded):
        reserved_record("search")

    good = [make_record(feature="spooled") for _ in range(3)]
    spool.append(good[:2])
    (spool_file,) = spool_dir.glob("events-*.jsonl")
    planted = forged_line(team="search", feature="planted")
    planted = planted.replace('"cost_usd":"0.00750000"', '"cost_usd":"-100"')
    assert '"cost_usd":"-100"' in planted
    with open(spool_file, "a") as fh:  # between good lines: it must not jam them
        fh.write(planted)
    spool.append(good[2:])

    out, failed = replay_command()

    assert failed is None
    assert "3 events written, 1 lines rejected, 0 events still pending" in out
    assert set(Event.objects.filter(feature="spooled").values_list("tracking_id", flat=True)) == {
        r.tracking_id for r in good
    }
    assert not Event.objects.filter(feature="planted").exists()
    counter.refresh_from_db()
    assert counter.spent_units == spent  # not re-opened by -$100
    with pytest.raises(BudgetExceeded):
        reserved_record("search")
    (kept,) = [json.loads(line) for line in (spool_dir / "rejected.jsonl").read_text().splitlines()]
    assert kept["line"] == planted.rstrip("\n")
    assert kept["reason"].startswith("no valid MAC (wrong MAC)")
    assert any(
        "refused spool line" in r.getMessage() and r.levelno == logging.ERROR
        for r in caplog.records
    )
    assert "-100" not in caplog.text  # (logged by position and reason, never by content)
    assert not list(spool_dir.glob("events-*.jsonl"))


@pytest.mark.django_db
def test_another_sites_line_is_never_stored_and_a_rotated_key_still_reads(spool_dir):
    with override_settings(SECRET_KEY="site B's secret"):
        site_b = make_record(feature="site-b")
        spool.append([site_b])
    with override_settings(SECRET_KEY="our old secret"):
        before_rotation = make_record(feature="rotated")
        spool.append([before_rotation])
    ours = make_record(feature="ours")
    spool.append([ours])

    with override_settings(SECRET_KEY_FALLBACKS=["our old secret"]):
        result = spool.replay_all(write_events)

    assert (result.written, result.rejected, result.error) == (2, 1, "")
    assert set(Event.objects.values_list("feature", flat=True)) == {"rotated", "ours"}
    assert not Event.objects.filter(tracking_id=site_b.tracking_id).exists()


@pytest.mark.parametrize(
    "bad",
    [
        "not json at all\n",
        '{"tracking_id":"x"}\n',  # no MAC
        '["a","journal","row","without","its","header","AAAAAAAAAAAAAAAAAAAAAA"]\n',
        "\xff\xfe garbage\n",
    ],
)
@pytest.mark.django_db
def test_a_bad_line_never_jams_the_good_ones(spool_dir, bad):
    records = [make_record(feature="good") for _ in range(4)]
    spool.append(records[:2])
    (spool_file,) = spool_dir.glob("events-*.jsonl")
    with open(spool_file, "a", encoding="latin-1") as fh:
        fh.write(bad)
    spool.append(records[2:])

    result = spool.replay_all(write_events)

    assert (result.written, result.rejected) == (4, 1)
    assert Event.objects.filter(feature="good").count() == 4
    assert len((spool_dir / "rejected.jsonl").read_text().splitlines()) == 1
    assert not spool.has_pending()


@pytest.mark.django_db(transaction=True)
def test_a_replay_stopped_by_the_database_keeps_the_rest_and_says_so(spool_dir, monkeypatch):
    records = [make_record(feature="spooled") for _ in range(10)]
    spool.append(records)
    calls = []

    def database_goes_away(batch, **kwargs):
        calls.append(len(batch))
        if len(calls) == 2:
            with database_refused(monkeypatch):
                return write_events(batch, **kwargs)
        return write_events(batch, **kwargs)

    with fluxgate_overrides(SPOOL_DIR=str(spool_dir), BATCH_SIZE=4):
        result = spool.replay_all(database_goes_away)
        assert (result.written, result.rejected) == (4, 0)
        assert result.error.startswith("OperationalError: could not connect")
        assert spool.pending_events() == 6
        assert spool.has_pending()

        out, failed = replay_command()  # the database is back

    assert failed is None, failed
    assert "6 events written, 0 lines rejected, 0 events still pending" in out
    stored = list(Event.objects.filter(feature="spooled").values_list("tracking_id", flat=True))
    assert sorted(stored) == sorted(r.tracking_id for r in records)  # exactly 10, no duplicate
    assert connection.vendor in ("sqlite", "postgresql")


@pytest.mark.django_db
def test_the_command_does_not_blame_a_database_that_is_fine(spool_dir):
    (spool.spool_dir() / "events-1.jsonl").write_text(forged_line())

    out, failed = replay_command()

    assert failed is None  # nothing is pending: the database is fine
    assert "0 events written, 1 lines rejected, 0 events still pending" in out
    assert "unreachable" not in out
