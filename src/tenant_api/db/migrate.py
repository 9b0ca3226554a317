"""Run the alembic migrations as the owner (never with the API role's engine)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from tenant_api.db.policies import MIGRATIONS_DIR
from tenant_api.settings import DatabaseSettings

LOCK_TIMEOUT = DatabaseSettings.migration_lock_timeout_seconds


def alembic_config(owner_url: str, lock_timeout_seconds: float = LOCK_TIMEOUT) -> Config:
    # No alembic.ini: an installed wheel has none, and env.py takes nothing from it.
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["owner_url"] = owner_url
    config.attributes["lock_timeout_seconds"] = lock_timeout_seconds
    return config


def upgrade(owner_url: str, revision: str = "head", *, lock_timeout_seconds: float = LOCK_TIMEOUT) -> None:
    """Blocking; call it outside a running event loop (or in a thread). Waiting longer than
    ``lock_timeout_seconds`` for a lock fails the whole migration (nothing is applied)."""
    command.upgrade(alembic_config(owner_url, lock_timeout_seconds), revision)


def downgrade(owner_url: str, revision: str, *, lock_timeout_seconds: float = LOCK_TIMEOUT) -> None:
    command.downgrade(alembic_config(owner_url, lock_timeout_seconds), revision)
