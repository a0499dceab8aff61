# Convenience targets; each one is a small script you can also run with bash.
.PHONY: demo test lint ci clean

demo:  ## install into .venv, migrate SQLite, run the demo workload, serve the admin
	bash scripts/demo.sh

test:  ## run the test suite (DATABASE_URL=postgres://... for PostgreSQL)
	bash scripts/test.sh

lint:  ## ruff check
	bash -c '. scripts/_venv.sh && ensure_venv && "$$VENV/bin/ruff" check .'

ci:  ## what CI runs: ruff, tests on SQLite, tests on PostgreSQL
	bash .ci/run

clean:  ## remove the demo database, build and cache files (keeps .venv)
	rm -rf var build dist .tox .pytest_cache .ruff_cache .mypy_cache *.egg-info
