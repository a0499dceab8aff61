#!/usr/bin/env bash
# Run the test suite in .venv (created and installed if needed). Arguments go to pytest.
# SQLite by default; DATABASE_URL=postgres://... runs it on PostgreSQL.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv
cd "$REPO_ROOT"
echo "==> python -m pytest $* (database: ${DATABASE_URL:-SQLite})"
exec "$PY" -m pytest "$@"
