# Sourced by scripts/*.sh and .ci/run: `ensure_venv` creates .venv if it is missing and
# installs the project into it (editable, with the [dev] extra). The install is skipped
# while pyproject.toml is unchanged since the last one. Returns non-zero on failure.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO_ROOT/.venv}"
PY="$VENV/bin/python"

ensure_venv() {
    local python="${PYTHON:-python3}"
    if [ ! -x "$PY" ]; then
        if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            echo "error: django-fluxgate needs Python 3.10 or newer as '$python' (set PYTHON=...)" >&2
            return 1
        fi
        echo "==> Creating the virtualenv $VENV"
        if ! "$python" -m venv "$VENV"; then
            echo "error: '$python -m venv' failed (on Debian/Ubuntu: apt install python3-venv);" \
                "remove $VENV before trying again" >&2
            return 1
        fi
    fi
    local stamp="$VENV/.django-fluxgate-installed" want
    want="$("$PY" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$REPO_ROOT/pyproject.toml")" || return 1
    if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
        echo "==> Installing django-fluxgate[dev] into $VENV (a minute the first time)"
        if ! (cd "$REPO_ROOT" && "$PY" -m pip install --quiet -e '.[dev]'); then
            echo "error: pip install -e '.[dev]' failed" >&2
            return 1
        fi
        echo "$want" >"$stamp"
    fi
}
