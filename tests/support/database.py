"""The test database: its URLs, and raw connections to it."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class Database:
    admin_url: str  # superuser, on the test database
    owner_url: str
    api_url: str
    name: str
    worker_url: str = ""  # tenant_worker: the scheduler process's login
    jobs_url: str = ""  # tenant_api_jobs: the API process's background threads
    login_url: str = ""  # tenant_login: the public auth routes


ADMIN_URL: list[str] = []
"""The test database's superuser URL, for helpers outside fixtures (signup's verification);
set by the ``database`` fixture."""


async def connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
