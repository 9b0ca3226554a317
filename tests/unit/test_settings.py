"""Settings read from the environment (Settings.from_env)."""

from typing import Any

from tenant_api import cli
from tenant_api.db import migrate
from tenant_api.settings import RetentionSettings, Settings


async def test_retention_settings_from_the_environment():
    from tenant_api.settings import Settings

    s = Settings.from_env({"RETENTION_JOBS_DAYS": "7", "RETENTION_DESKTOP_CONNECTIONS_DAYS": "0",
                           "RETENTION_INVITE_MAILS_DAYS": "14", "RETENTION_SECURITY_EVENTS_DAYS": "30",
                           "RETENTION_WEBHOOK_DELIVERIES_DAYS": "3",
                           "RETENTION_BATCH_SIZE": "50", "RETENTION_INTERVAL_SECONDS": "60"})
    assert s.retention == RetentionSettings(jobs_days=7, desktop_connections_days=0, invite_mails_days=14,
                                            security_events_days=30, webhook_deliveries_days=3, batch_size=50,
                                            interval_seconds=60)


async def test_rate_limit_settings_from_the_environment():
    from tenant_api.settings import Settings

    s = Settings.from_env({"RATE_LIMIT_REQUESTS": "50", "RATE_LIMIT_WINDOW_SECONDS": "10", "REDIS_URL": "redis://r",
                           "TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1", "RATE_LIMIT_ENABLED": "0"})
    assert (s.rate_limit.requests, s.rate_limit.window_seconds, s.rate_limit.redis_url) == (50, 10, "redis://r")
    assert s.server.trusted_proxies == ("10.0.0.0/8", "192.0.2.1") and not s.rate_limit.enabled


def test_the_setting_and_the_cli(monkeypatch):
    assert Settings().database.migration_lock_timeout_seconds == 5.0
    assert Settings.from_env({"MIGRATION_LOCK_TIMEOUT_SECONDS": "2.5"}).database.migration_lock_timeout_seconds == 2.5
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(migrate, "upgrade", lambda url, revision, **kw: calls.append((url, revision, kw)))
    monkeypatch.setenv("OWNER_DATABASE_URL", "postgresql://tenant_owner@db/tenant")
    monkeypatch.setenv("MIGRATION_LOCK_TIMEOUT_SECONDS", "7")
    cli.main(["migrate"])
    assert calls == [("postgresql+asyncpg://tenant_owner@db/tenant", "head", {"lock_timeout_seconds": 7.0})]
