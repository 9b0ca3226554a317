"""Apply policies/*.sql (idempotent) on a migration connection, as the owner."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import Connection
from sqlalchemy.util import await_only

PROJECT_ROOT = Path(os.environ.get("TENANT_API_ROOT", Path(__file__).resolve().parents[3]))
"""The source checkout (make run keeps .data/ there). An installed wheel has none."""


def packaged_dir(name: str) -> Path:
    """migrations/ or policies/: the copy inside an installed wheel (pyproject.toml's
    force-include), else the source checkout's (editable installs, tests)."""
    inside = Path(__file__).resolve().parents[1] / name
    if inside.is_dir() and "TENANT_API_ROOT" not in os.environ:
        return inside
    return PROJECT_ROOT / name


POLICIES_DIR = packaged_dir("policies")
MIGRATIONS_DIR = packaged_dir("migrations")

# Shared pieces first, in dependency order; then one file per table, alphabetically.
# roles.sql is cluster-level bootstrap (superuser) and is not applied here.
BASE_FILES = ("context.sql", "audit.sql", "tenancy.sql", "lifecycle.sql", "auth.sql")
# Last: copies the API role's grants and policies to its restricted twin.
FINAL_FILES = ("restricted_credentials.sql",)
NOT_APPLIED = {"roles.sql"}


def policy_files(directory: Path = POLICIES_DIR) -> list[Path]:
    tables = sorted(
        p for p in directory.glob("*.sql")
        if p.name not in NOT_APPLIED and p.name not in BASE_FILES and p.name not in FINAL_FILES
    )
    return [directory / name for name in BASE_FILES] + tables + [directory / name for name in FINAL_FILES]


def exec_script(connection: Connection, sql: str) -> None:
    """Run a multi-statement SQL script in the connection's current transaction.

    asyncpg runs a parameterless execute() through the simple query protocol, which
    accepts several statements and $$-quoted bodies; SQLAlchemy's own execute prepares
    each statement and would refuse them. We are inside run_sync's greenlet, hence
    await_only.
    """
    driver = connection.connection.driver_connection
    assert driver is not None
    await_only(driver.execute(sql))


def apply_policies(connection: Connection, directory: Path = POLICIES_DIR) -> None:
    for path in policy_files(directory):
        exec_script(connection, path.read_text())
