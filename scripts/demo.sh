#!/usr/bin/env bash
# The demo: install into .venv, migrate the test project's SQLite database, drive a demo
# LLM workload against a fake provider, print the cost table, then serve the admin.
#
#   DEMO_NO_SERVE=1    stop after the cost table (no server)
#   DEMO_CALLS=N       number of LLM calls (default 60)
#   PORT=8000          runserver port;  FAKE_PORT=8765  fake provider port while serving
#   DEMO_DATABASE_URL  use this database instead of SQLite (e.g. postgres://...)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv
cd "$REPO_ROOT/testproject"

# The demo writes demo data: never into a database some other project's DATABASE_URL names.
export DATABASE_URL="${DEMO_DATABASE_URL:-}"
unset FLUXGATE_FAKE_URL

echo "==> Migrating the database (${DATABASE_URL:-SQLite: var/testproject.sqlite3})"
"$PY" manage.py migrate --noinput -v 0

echo "==> Running the demo workload"
"$PY" manage.py fluxgate_demo --no-input --calls "${DEMO_CALLS:-60}"

if [ "${DEMO_NO_SERVE:-0}" = "1" ]; then
    echo
    echo "DEMO_NO_SERVE=1: not starting the server. To browse the admin later:"
    echo "  bash scripts/demo.sh   (or: cd testproject && ../.venv/bin/python manage.py runserver)"
    exit 0
fi

PORT="${PORT:-8000}"
FAKE_PORT="${FAKE_PORT:-8765}"
# The demo views call LLMs too: while serving, send them to a fake provider.
"$PY" -m fluxgate_django.testing.fake_provider --port "$FAKE_PORT" >/dev/null &
fake_pid=$!
trap 'kill "$fake_pid" 2>/dev/null || true' EXIT
export FLUXGATE_FAKE_URL="http://127.0.0.1:$FAKE_PORT"
fake_up() { "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$FLUXGATE_FAKE_URL/health" 2>/dev/null; }
for _ in $(seq 50); do fake_up && break; sleep 0.1; done
if ! fake_up; then
    echo "error: the fake provider did not start on port $FAKE_PORT (in use? set FAKE_PORT=...)" >&2
    exit 1
fi

cat <<BANNER

==> Serving the test project at http://127.0.0.1:$PORT/ (Ctrl-C to stop)
    Admin:      http://127.0.0.1:$PORT/admin/   login: admin / admin
    Demo views: http://127.0.0.1:$PORT/chat/?q=Hello
                http://127.0.0.1:$PORT/summarize/?text=Some+long+text
    (LLM calls go to a fake provider at $FLUXGATE_FAKE_URL)

BANNER
"$PY" manage.py runserver "127.0.0.1:$PORT"
