"""Run the alembic migrations as the owner (never with the API role's engine)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from tenant_api.db.policies import MIGRATIONS_DIR


def alembic_config(owner_url: str) -> Config:
    # No alembic.ini: an installed wheel has none, and env.py takes nothing from it.
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["owner_url"] = owner_url
    return config


def upgrade(owner_url: str, revision: str = "head") -> None:
    """Blocking; call it outside a running event loop (or in a thread)."""
    command.upgrade(alembic_config(owner_url), revision)


def downgrade(owner_url: str, revision: str) -> None:
    command.downgrade(alembic_config(owner_url), revision)
