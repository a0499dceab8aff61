#!/usr/bin/env bash
# The demo: install into .venv, migrate the test project's SQLite database, seed a month
# of history and drive a demo LLM workload against a fake provider, print the cost table
# and the budgets, then serve the admin.
#
#   DEMO_NO_SERVE=1    stop after the cost table (no server)
#   DEMO_CALLS=N       number of LLM calls (default 60)
#   DEMO_DAYS=N        days of history to seed (default 30; 0: none)
#   PORT=8000          runserver port;  FAKE_PORT=8765  fake provider port while serving
#                      (either busy: the script says by what and uses a free port instead)
#   DEMO_DATABASE_URL  use this database instead of SQLite (e.g. postgres://...)
#
# Every process it starts runs in a process group of its own, stopped with the script:
# Ctrl-C, or `kill <pid of this script>` (SIGTERM/SIGINT/SIGHUP), stops them all.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv
cd "$REPO_ROOT/testproject"

# The demo writes demo data: never into a database some other project's DATABASE_URL names.
export DATABASE_URL="${DEMO_DATABASE_URL:-}"
unset FLUXGATE_FAKE_URL

# -- child processes: each in its own process group, all stopped when the script ends ---
# (Run as `python -c ... cmd`: the child calls setsid() and execs cmd, so its pid is its
# group's id, and `kill -- -pid` reaches runserver's autoreloader child too.)
# (SIGINT back to its default: a shell without job control starts background commands
# with it ignored, and Python would keep ignoring it.)
OWN_GROUP='import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
try:
    os.setsid()
except OSError:
    pass
os.execvp(sys.argv[1], sys.argv[1:])'
children=()
tmpdir="$(mktemp -d "${TMPDIR:-/tmp}/fluxgate-demo.XXXXXX")"

# Each group gets SIGINT first (as Ctrl-C would: Python exits cleanly, so FluxGate writes
# what its recorder still holds), then SIGTERM, then SIGKILL.
stop_children() {
    local pid signal alive
    for signal in INT TERM KILL; do
        for pid in "${children[@]+"${children[@]}"}"; do
            kill -"$signal" -- "-$pid" 2>/dev/null || kill -"$signal" "$pid" 2>/dev/null || true
        done
        for _ in $(seq 100); do
            alive=0
            for pid in "${children[@]+"${children[@]}"}"; do
                if kill -0 -- "-$pid" 2>/dev/null; then alive=1; fi
            done
            [ "$alive" = 1 ] || break
            sleep 0.1
        done
        [ "$alive" = 1 ] || break
    done
    for pid in "${children[@]+"${children[@]}"}"; do
        wait "$pid" 2>/dev/null || true
    done
    children=()
}
cleanup() {
    stop_children
    rm -rf "$tmpdir"
}
trap cleanup EXIT
trap 'trap - EXIT; cleanup; exit 130' INT
trap 'trap - EXIT; cleanup; exit 143' TERM
trap 'trap - EXIT; cleanup; exit 129' HUP

# Start "$@" in the background in a group of its own; its pid is in $last_child.
start_child() {
    "$PY" -c "$OWN_GROUP" "$@" &
    last_child=$!
    children+=("$last_child")
}
# Run "$@" in a group of its own and wait for it: a signal to the script stops it at once.
run_child() {
    start_child "$@"
    local status=0 pid rest=()
    wait "$last_child" || status=$?
    for pid in "${children[@]}"; do
        [ "$pid" = "$last_child" ] || rest+=("$pid")
    done
    children=("${rest[@]+"${rest[@]}"}")
    return "$status"
}

# -- ports --------------------------------------------------------------------------------
port_free() { "$PY" -c '
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()' "$1"; }
free_port() { "$PY" -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'; }
# Who listens on a TCP port (as far as this user may see), for the messages below.
port_holder() {
    local who=""
    if command -v lsof >/dev/null 2>&1; then
        who="$(lsof -nP -iTCP:"$1" -sTCP:LISTEN 2>/dev/null | awk 'NR > 1 {print $1 " (pid " $2 ", user " $3 ")"}' | sort -u | paste -sd, - || true)"
    fi
    if [ -z "$who" ] && command -v ss >/dev/null 2>&1; then
        who="$(ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'users:(([^)]*))' | head -n1 || true)"
    fi
    echo "${who:-another process (not one of yours, or lsof/ss cannot tell which)}"
}
# A free port: $1 if free, else (saying by what it is taken) one the system picks.
pick_port() {
    local wanted="$1" what="$2" port
    if [ "$wanted" = 0 ]; then
        free_port
        return
    fi
    if port_free "$wanted"; then
        echo "$wanted"
        return
    fi
    port="$(free_port)"
    echo "note: port $wanted ($what) is in use by $(port_holder "$wanted"); using port $port instead" >&2
    echo "$port"
}

echo "==> Migrating the database (${DATABASE_URL:-SQLite: var/testproject.sqlite3})"
run_child "$PY" manage.py migrate --noinput -v 0

echo "==> Seeding ${DEMO_DAYS:-30} days of history and running the demo workload"
run_child "$PY" manage.py fluxgate_demo --no-input --calls "${DEMO_CALLS:-60}" --days "${DEMO_DAYS:-30}"

if [ "${DEMO_NO_SERVE:-0}" = "1" ]; then
    echo
    echo "DEMO_NO_SERVE=1: not starting the server. To browse the admin later:"
    echo "  bash scripts/demo.sh   (or: bash scripts/manage.sh runserver)"
    exit 0
fi

# The demo views call LLMs too: while serving, send them to a fake provider of our own. It
# answers with a token of this run, so that the one we talk to is known to be ours.
token="fluxgate-demo-$$-$RANDOM$RANDOM"
fake_port="$(pick_port "${FAKE_PORT:-8765}" "the fake provider, FAKE_PORT")"
fake_log="$tmpdir/fake-provider.log"
start_child "$PY" -m fluxgate_django.testing.fake_provider --port "$fake_port" \
    --text "Hello from the demo's fake LLM provider ($token)." >"$fake_log" 2>&1
fake_pid=$last_child
export FLUXGATE_FAKE_URL="http://127.0.0.1:$fake_port"
# Ours if it is alive and its chat completion carries our token.
fake_is_ours() {
    kill -0 "$fake_pid" 2>/dev/null && "$PY" -c '
import json, sys, urllib.request
request = urllib.request.Request(
    sys.argv[1] + "/v1/chat/completions",
    data=json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode(),
    headers={"Content-Type": "application/json", "Authorization": "Bearer sk-fake"},
)
with urllib.request.urlopen(request, timeout=2) as response:
    sys.exit(sys.argv[2] not in response.read().decode())' "$FLUXGATE_FAKE_URL" "$token" 2>/dev/null
}
for _ in $(seq 100); do
    fake_is_ours && break
    kill -0 "$fake_pid" 2>/dev/null || break
    sleep 0.1
done
if ! fake_is_ours; then
    echo "error: the demo's fake provider did not start on port $fake_port:" >&2
    sed 's/^/    /' "$fake_log" >&2
    if ! port_free "$fake_port"; then
        echo "  port $fake_port is in use by $(port_holder "$fake_port"); set FAKE_PORT=... to another port" >&2
    fi
    exit 1
fi

port="$(pick_port "${PORT:-8000}" "the admin, PORT")"
url="http://127.0.0.1:$port"
start_child "$PY" manage.py runserver "127.0.0.1:$port"
server_pid=$last_child
# Up when our runserver (still running: it exits if it cannot bind) answers.
server_up() {
    kill -0 "$server_pid" 2>/dev/null && "$PY" -c '
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1] + "/admin/login/", timeout=2).close()
except urllib.error.HTTPError:
    pass' "$url" 2>/dev/null
}
for _ in $(seq 300); do
    server_up && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if ! server_up; then
    echo "error: the demo's server did not start on port $port (set PORT=... to another port)" >&2
    exit 1
fi

cat <<BANNER

==> Serving the test project at $url/ (Ctrl-C to stop)
    Admin:       $url/admin/   login: admin / admin
    Cost report: $url/admin/fluxgate_django/costreport/
    Budgets:     $url/admin/fluxgate_django/budget/
    Demo views:  $url/chat/?q=Hello
                 $url/summarize/?text=Some+long+text
    LLM gateway: $url/fluxgate/v1 (OpenAI SDK), $url/fluxgate/anthropic (Anthropic SDK),
                 with a key made at $url/admin/fluxgate_django/apikey/add/
    (LLM calls go to the demo's fake provider at $FLUXGATE_FAKE_URL)

BANNER
status=0
wait "$server_pid" || status=$?
exit "$status"
