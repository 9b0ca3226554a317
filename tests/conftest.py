"""The suite runs against a real PostgreSQL, migrated by the real alembic revisions, with
the API connected as tenant_api (never the owner, never a superuser).

Fixtures live in tests/fixtures/ (one module per concern, registered here); helpers
that tests import live in tests/support/. tests/unit uses neither the database nor a
server: `make test-unit` runs it in seconds.
"""

pytest_plugins = [
    "tests.fixtures.database",
    "tests.fixtures.app",
    "tests.fixtures.tenants",
    "tests.fixtures.servers",
]
