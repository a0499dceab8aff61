#!/usr/bin/env bash
# schemathesis' full run against FluxGate's API over HTTP: every check (--checks all) and
# every phase (examples, coverage, fuzzing, stateful), authenticated with a team's API key.
# CI runs the same checks in-process (tests/test_schemathesis.py); this is the run against
# a real server, with more cases.
#
#   bash scripts/schemathesis.sh                 # 50 cases per operation and phase
#   bash scripts/schemathesis.sh -n 200          # more arguments go to `schemathesis run`
#
# Serves the test suite's settings (tests/settings.py: sync recorder, RAISE_ERRORS on) with
# gunicorn on a free loopback port, a fresh SQLite database seeded with a team ("a"), its
# admin and member, an event, an alert budget with a webhook and an API key, and the LLM
# providers answered by FluxGate's fake provider (in the server's process). The
# configuration and the generator's rules (what the schema can't say) are those of
# tests/test_schemathesis.py. Everything lives in a temporary directory, removed at the
# end; the server is stopped however the run ends. Exit code: schemathesis' (non-zero when
# a check failed).
#
# The failed-authentication limit (AUTH_FAILURE_RATE) and the key's ingest rate are lifted
# for the run: the ignored_auth check sends wrong keys on purpose, and past the real limit
# (20/min) every request of the run would be a (documented) 429; past 600 events a minute,
# every ingest would. gunicorn takes request lines of any
# length: the reports take 4 filters of 50 values of 255 characters each.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv >&2
cd "$REPO_ROOT"

work="$(mktemp -d "${TMPDIR:-/tmp}/fluxgate-schemathesis.XXXXXX")"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# The server's settings (ROUTE and MODEL: tests/test_schemathesis.py's).
cat >"$work/schemathesis_settings.py" <<'PY'
from tests.settings import *  # noqa: F403

from fluxgate_django.testing import FakeProvider

ROUTE, MODEL = "summarize", "gpt-4o-mini"
_fake = FakeProvider().start()
FLUXGATE = {
    **FLUXGATE,  # noqa: F405
    "AUTH_FAILURE_RATE": "1000000/min",
    "PROVIDERS": {
        "openai": {"api_key": "sk-fake", "base_url": _fake.openai_base_url, "timeout": 5},
        "anthropic": {"api_key": "sk-fake", "base_url": _fake.anthropic_base_url},
    },
    "ROUTES": {ROUTE: {"strategy": "ordered", "models": [MODEL]}},
}
REST_FRAMEWORK = {"DEFAULT_THROTTLE_RATES": {"fluxgate_ingest": "1000000/min"}}
PY

# schemathesis' own process: the rules of tests/test_schemathesis.py as global hooks.
cat >"$work/schemathesis_hooks.py" <<'PY'
import django

django.setup()

import schemathesis  # noqa: E402

from tests.test_schemathesis import RuntimeRules  # noqa: E402

RuntimeRules(teams=("a",)).register(schemathesis.hooks.GLOBAL_HOOK_DISPATCHER)
PY

export PYTHONPATH="$work:$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export FLUXGATE_TEST_SQLITE="$work/db.sqlite3" FLUXGATE_TEST_SPOOL="$work/spool"
unset DATABASE_URL
mkdir -p "$work/spool"

DJANGO_SETTINGS_MODULE=schemathesis_settings "$PY" -m django migrate --verbosity 0
secret="$(DJANGO_SETTINGS_MODULE=schemathesis_settings "$PY" - <<'PY'
import django

django.setup()
from decimal import Decimal

from django.contrib.auth import get_user_model

from fluxgate_django.models import ApiKey, Budget, Event, Team, TeamMembership

team = Team.objects.create(name="Alpha", slug="a")
users = get_user_model().objects
admin = users.create_user("admin_a", "admin_a@example.com", "pw")
member = users.create_user("member_a", "member_a@example.com", "pw")
TeamMembership.objects.create(user=admin, team=team, role="admin")
TeamMembership.objects.create(user=member, team=team, role="member")
Event.objects.create(team=team, provider="openai", model="gpt-4o", feature="chat",
                     input_tokens=100, output_tokens=10, cost_usd=Decimal("0.001"))
# (an alert budget: ingested costs never turn complete/ into a 402 midway)
Budget.objects.create(team=team, period="month", limit_usd=Decimal("100"), action="alert",
                      webhook_url="https://hooks.example.com/services/T0/B0/secret")
_, secret = ApiKey.objects.create_key(team=team, name="schemathesis")
print(secret)
PY
)"

# The in-process test's configuration, with more cases.
DJANGO_SETTINGS_MODULE=tests.settings "$PY" -c 'import django; django.setup()
from tests.test_schemathesis import CONFIG
print(CONFIG.format(max_examples=50))' >"$work/schemathesis.toml"

port="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
DJANGO_SETTINGS_MODULE=schemathesis_settings "$PY" -m gunicorn --bind "127.0.0.1:$port" \
    --workers 1 --threads 2 --log-level warning --limit-request-line 0 'django.core.wsgi:get_wsgi_application()' &
server_pid=$!

status=0
DJANGO_SETTINGS_MODULE=tests.settings SCHEMATHESIS_HOOKS=schemathesis_hooks \
    "$VENV/bin/schemathesis" --config-file "$work/schemathesis.toml" \
    run "http://127.0.0.1:$port/fluxgate/api/schema/?format=json" \
    --wait-for-schema 30 \
    --checks all \
    --phases examples,coverage,fuzzing,stateful \
    --header "Authorization: Bearer $secret" \
    --workers 1 \
    "$@" || status=$?
exit "$status"
