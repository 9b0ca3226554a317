"""Run the alembic migrations as the owner (never with the API role's engine)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from tenant_api.db.policies import PROJECT_ROOT


def alembic_config(owner_url: str) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    config.attributes["owner_url"] = owner_url
    return config


def upgrade(owner_url: str, revision: str = "head") -> None:
    """Blocking; call it outside a running event loop (or in a thread)."""
    command.upgrade(alembic_config(owner_url), revision)


def downgrade(owner_url: str, revision: str) -> None:
    command.downgrade(alembic_config(owner_url), revision)
