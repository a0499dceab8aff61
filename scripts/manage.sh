#!/usr/bin/env bash
# Run the test project's manage.py in .venv (created and installed if needed, as
# scripts/demo.sh does). Arguments go to manage.py, e.g.
#
#   bash scripts/manage.sh fluxgate_budgets
#   bash scripts/manage.sh fluxgate_report --by team
#   bash scripts/manage.sh runserver 127.0.0.1:8001
#
# The database is the demo's: SQLite in var/testproject.sqlite3, or DEMO_DATABASE_URL
# (never the DATABASE_URL some other project of yours may have set).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv >&2  # (its progress on stderr: the command's output stays clean)
cd "$REPO_ROOT/testproject"
export DATABASE_URL="${DEMO_DATABASE_URL:-}"
exec "$PY" manage.py "$@"
